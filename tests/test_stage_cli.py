"""Every entrypoint helps itself: `--help` says what it takes, what it reads from params.yaml
and what it writes; a wrong command line is a usage line, never a traceback."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = sorted(p for p in (ROOT / "stages").glob("*.py") if not p.name.startswith("_"))
COMMANDS = [[str(p)] for p in STAGES] + [["-m", "foldwise.predict"], ["-m", "foldwise.presets"], ["-m", "foldwise.blend"],
                                         ["-m", "foldwise.parallel"], ["-m", "foldwise.workers"],
                                         ["-m", "foldwise.server"],
                                         [str(ROOT / "benchmarks/bench.py")]]


def run(args):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: Path(c[-1]).stem)
def test_help_describes_the_arguments(command):
    res = run(command + ["--help"])
    assert res.returncode == 0 and res.stdout.startswith("usage:"), res.stderr[-2000:]
    if command[0].endswith(".py") and "stages" in command[0]:
        assert "params:" in res.stdout and "positional arguments" in res.stdout


@pytest.mark.parametrize("stage", STAGES, ids=lambda p: p.stem)
def test_missing_arguments_print_usage_not_a_traceback(stage):
    res = run([str(stage)])
    assert res.returncode == 2 and "usage:" in res.stderr and "Traceback" not in res.stderr
