"""The search's workers' checkouts: `.foldwise/workers/K`, clones of the project at its HEAD
(`git clone --shared`: no copy of its objects) sharing its DVC cache, and so its run-cache, one
per worker, each pinned to its own GPU.

A worker runs its trials in its own checkout, so the user's workspace (params.yaml, outputs) is
never touched, and N workers never write one workspace. Each finished experiment is pushed to
the project (`dvc exp push --no-cache`: its outputs are in the shared cache already), where
`dvc exp show` lists it and `dvc exp apply NAME` brings it into the workspace. Clones, not git
worktrees: worktrees share every ref, DVC's own refs of the experiment running
(`refs/exps/exec/`) too, and two `dvc exp run` at once then break each other.
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import foldwise
from foldwise import presets
from foldwise.errors import InputError
from foldwise.files import source_digest
from foldwise.params import nested
from foldwise.scale.parallel import dvc


@dataclass(frozen=True)
class Checkout:
    path: Path
    device: str | None  # CUDA_VISIBLE_DEVICES for its trials; None leaves it alone

    def set_params(self, changes: dict) -> None:
        """params.yaml as committed, with the trial's `changes` (dotted keys) set."""
        committed = git(self.path, "show", "HEAD:params.yaml").stdout
        (self.path / "params.yaml").write_text(committed)
        presets.rewrite(self.path / "params.yaml", nested(changes))

    def env(self, extra: dict) -> dict:
        env = {**os.environ, **extra}
        if self.device is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.device
        return env


def experiments(root: Path) -> set[str]:
    """The names of the project's DVC experiments."""
    res = subprocess.run(dvc("exp", "list", "--all-commits", "--name-only"), cwd=root,
                         capture_output=True, text=True)
    return set(res.stdout.split()) if res.returncode == 0 else set()


def git(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    res = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if res.returncode:
        raise InputError(f"git {' '.join(args)} in {cwd}: {res.stderr.strip()}")
    return res


def prepare(root: Path, k: int, device: str | None) -> Checkout:
    """Worker `k`'s checkout at the project's HEAD (made the first time, moved to HEAD after),
    its DVC cache the project's."""
    path = root / ".foldwise" / "workers" / str(k)
    head = git(root, "rev-parse", "HEAD").stdout.strip()
    if not (path / ".git").is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
        git(root, "clone", "--quiet", "--shared", "--no-checkout", str(root), str(path))
    git(path, "fetch", "--quiet", "origin")
    git(path, "checkout", "--quiet", "--force", "--detach", head)
    own = root / ".dvc" / "config.local"  # remotes' credentials and such, then the shared cache
    (path / ".dvc" / "config.local").write_text(own.read_text() if own.is_file() else "")
    res = subprocess.run(dvc("cache", "dir", "--local", str(root / ".dvc" / "cache")), cwd=path,
                         capture_output=True, text=True)
    if res.returncode:
        raise InputError(f"dvc cache dir in {path}: {res.stderr.strip()}")
    check_code(path)
    return Checkout(path, device)


def check_code(path: Path) -> None:
    """The trials run the committed code through the installed foldwise: the two must agree."""
    installed = Path(foldwise.__file__).resolve().parent
    if source_digest(path / "src" / "foldwise") != source_digest(installed):
        raise InputError(f"the committed code (HEAD) differs from the foldwise installed in this "
                         f"Python ({installed}): commit the change before searching, or check "
                         "out the commit the install was made from")
