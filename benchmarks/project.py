"""A throwaway copy of this project (code and configuration, no outputs) for the benchmarks to
run `dvc` in, and a runner for commands inside it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from foldwise import params as P

ROOT = Path(__file__).resolve().parents[1]


def copy(dst: Path, change_params=None) -> Path:
    """This checkout's tracked files into `dst`, `change_params(params)` applied, committed.

    Into an existing copy too: it then gets this checkout's code again, so that DVC sees a
    changed dependency and retrains rather than restoring results of older code from its
    run-cache (the stages import this checkout's `src/` through PYTHONPATH either way)."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file() and not f.startswith(("data/", "models/", "metrics/", "export/")):
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dst / f)
    if change_params:  # params.yaml's keys, and the sample's sizes from sample.yaml under "sample"
        P.change_files(dst, change_params)
    run("git init -q && git add -A && (git diff --cached --quiet || git commit -qm bench)", dst)
    return dst


def run(cmd: str, cwd: Path) -> subprocess.CompletedProcess:
    """`cmd` in `cwd` with this interpreter's tools first on PATH; its output on failure."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@b",
               GIT_COMMITTER_NAME="b", GIT_COMMITTER_EMAIL="b@b",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("MLFLOW_TRACKING_URI", None)
    res = subprocess.run(cmd, cwd=cwd, shell=True, env=env, capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"{cmd} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res
