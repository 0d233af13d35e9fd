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
