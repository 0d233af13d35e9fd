"""Every entrypoint helps itself: `--help` says what it takes, what it reads from params.yaml
and what it writes; a wrong command line is a usage line, never a traceback. Run in this
process (as `python stages/x.py` / `python -m ...` would run them), so the suite does not start
an interpreter that imports torch, timm and MLflow for each."""
import runpy
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = sorted(p for p in (ROOT / "stages").glob("*.py"))
MODULES = ["foldwise.deploy.predict", "foldwise.presets", "foldwise.ensemble.blend",
           "foldwise.scale.parallel", "foldwise.scale.workers", "foldwise.scale.server"]
COMMANDS = [str(p) for p in STAGES] + MODULES + [str(ROOT / "benchmarks/bench.py")]


def run(command: str, args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """`command` (a script path or a module name) with `args`, as its own `__main__`."""
    monkeypatch.setattr(sys, "argv", [command, *args])
    monkeypatch.chdir(ROOT)
    if command.endswith(".py"):  # as `python script.py`: the script's folder first on the path
        monkeypatch.syspath_prepend(str(Path(command).parent))
    code = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the module was imported before
        try:
            if command.endswith(".py"):
                runpy.run_path(command, run_name="__main__")
            else:
                runpy.run_module(command, run_name="__main__", alter_sys=True)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: Path(c).stem if c.endswith(".py") else c)
def test_help_describes_the_arguments(command, monkeypatch, capsys):
    code, out, err = run(command, ["--help"], monkeypatch, capsys)
    assert code == 0 and out.startswith("usage:"), err[-2000:]
    if command in map(str, STAGES):
        assert "params:" in out and "positional arguments" in out


@pytest.mark.parametrize("stage", [str(p) for p in STAGES], ids=lambda p: Path(p).stem)
def test_missing_arguments_print_usage_not_a_traceback(stage, monkeypatch, capsys):
    code, _, err = run(stage, [], monkeypatch, capsys)
    assert code == 2 and "usage:" in err and "Traceback" not in err


OFF = {  # stage: its arguments, for a project whose params.yaml switches it off (the default)
    "pseudo": ["0", "folds.csv", "processed", "models", "models/pseudo_0"],
    "neighbours": ["models", "processed", "bagged", "metrics.json", "near", "neighbours.json"],
    "stack": ["models", "processed", "bagged", "metrics.json", "near", "stack", "stack.json"],
    "distill": ["root", "models", "processed", "bagged", "metrics.json", "near", "stack",
                "stack.json", "distilled", "distill.json", "history.csv"],
    "speed": ["bag", "distilled", "processed", "speed.json"],
}


@pytest.mark.parametrize("stage", sorted(OFF))
def test_a_stage_switched_off_writes_its_outputs_without_torch_timm_or_mlflow(stage, tmp_path):
    """Off stages run in every pipeline (pseudo@k once per fold): each is a process of its own,
    and importing torch, timm and MLflow would cost it seconds for nothing."""
    import json
    import subprocess

    import numpy as np
    (tmp_path / "processed").mkdir()
    np.save(tmp_path / "processed/test.npy", np.zeros((3, 1, 4, 4), dtype=np.uint8))
    (tmp_path / "processed/meta.json").write_text(json.dumps({"task": "classification"}))
    (tmp_path / "params.yaml").write_bytes((ROOT / "params.yaml").read_bytes())
    probe = ("import runpy, sys; sys.argv = sys.argv[1:]; code = 0\n"
             "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
             "except SystemExit as e:\n    code = e.code\n"
             "heavy = sorted(m for m in ('torch', 'timm', 'mlflow') if m in sys.modules)\n"
             "print('exit', code, 'heavy', heavy)")
    res = subprocess.run([sys.executable, "-c", probe, str(ROOT / "stages" / f"{stage}.py"),
                          *OFF[stage]], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.stdout.strip().splitlines()[-1] == "exit 0 heavy []", res.stdout + res.stderr
    written = {"pseudo": "models/pseudo_0/rounds.json", "neighbours": "near/graph.npz",
               "stack": "stack.json", "distill": "history.csv", "speed": "speed.json"}[stage]
    assert (tmp_path / written).is_file()
