"""Every entrypoint helps itself: `--help` says what it takes, what it reads from params.yaml
and what it writes; a wrong command line is a usage line, never a traceback. Run in this
process (as `python stages/x.py` / `python -m ...` would run them), so the suite does not start
an interpreter that imports torch, timm and MLflow for each."""
import runpy
import sys
import warnings
from pathlib import Path

import pytest
from helpers import copy_params

ROOT = Path(__file__).resolve().parents[1]
STAGES = sorted(p for p in (ROOT / "stages").glob("*.py"))
MODULES = ["foldwise.deploy.predict", "foldwise.presets", "foldwise.ensemble.blend",
           "foldwise.scale.parallel", "foldwise.scale.workers", "foldwise.scale.server",
           "foldwise.search.cli"]
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
    """Its docstring's first paragraph whole (foldwise-search's was cut mid-sentence), and a
    line of help for every option."""
    import importlib
    import re
    code, out, err = run(command, ["--help"], monkeypatch, capsys)
    assert code == 0 and out.startswith("usage:"), err[-2000:]
    if command in map(str, STAGES):
        assert "params:" in out and "positional arguments" in out
    doc = (Path(command).read_text().split('"""')[1] if command.endswith(".py")
           else importlib.import_module(command).__doc__)
    first = " ".join(doc.strip().split("\n\n")[0].split())
    assert first.split(":", 1)[-1].strip() in " ".join(out.split()), out
    lines = out.split("options:", 1)[1].splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^  (-[^ ].*?)(?:\s{2,}(\S.*))?$", line)
        if m and not m.group(2):
            assert i + 1 < len(lines) and re.match(r"^\s{6,}\S", lines[i + 1]), f"{m.group(1)}: no help"


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
    "refit": ["root", "models", "processed", "bagged", "metrics.json", "refit", "refit.json",
              "history.csv"],
    "speed": ["bag", "distilled", "refit", "processed", "speed.json"],
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
    copy_params(tmp_path)
    probe = ("import runpy, sys; sys.argv = sys.argv[1:]; code = 0\n"
             "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
             "except SystemExit as e:\n    code = e.code\n"
             "heavy = sorted(m for m in ('torch', 'timm', 'mlflow') if m in sys.modules)\n"
             "print('exit', code, 'heavy', heavy)")
    res = subprocess.run([sys.executable, "-c", probe, str(ROOT / "stages" / f"{stage}.py"),
                          *OFF[stage]], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.stdout.strip().splitlines()[-1] == "exit 0 heavy []", res.stdout + res.stderr
    written = {"pseudo": "models/pseudo_0/rounds.json", "neighbours": "near/graph.npz",
               "stack": "stack.json", "distill": "history.csv", "refit": "refit.json",
               "speed": "speed.json"}[stage]
    assert (tmp_path / written).is_file()


def test_ctrl_c_in_the_middle_of_training_is_one_line_not_a_traceback(tmp_path):
    """Ctrl-C (SIGINT) during torch's backward pass printed a 30-line KeyboardInterrupt
    traceback; a stage now says in one line what stopped, what was kept and how to go on, and
    exits 130 as an interrupted command does."""
    import signal
    import subprocess
    import time
    script = tmp_path / "stages" / "train.py"  # named as the train stage: its line names the fold
    script.parent.mkdir()
    script.write_text(
        "import torch\n"
        "from foldwise import stage\n"
        "def main():\n"
        "    net = torch.nn.Sequential(*[torch.nn.Linear(256, 256) for _ in range(8)])\n"
        "    print('training', flush=True)\n"
        "    while True:\n"
        "        net(torch.randn(512, 256)).square().mean().backward()\n"
        "stage.run(main)\n")
    # SIGINT as a terminal delivers it: a suite started in the background (`make test &`)
    # inherits SIGINT ignored, and Python then never raises KeyboardInterrupt in the child
    proc = subprocess.Popen([sys.executable, str(script), "3", "folds.csv"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout.readline() == "training\n"
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()  # never left training for the rest of the suite
        proc.wait()
    assert proc.returncode == 130
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.strip() == ("interrupted: the train stage (fold 3); its finished epochs are kept "
                           "(.foldwise/resume/); `dvc repro` goes on from there, and finished "
                           "stages are not run again")
