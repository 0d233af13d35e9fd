"""An experiment's files as they were when it ran.

The workspace is read from disk. A DVC experiment (or any git revision) is read through DVC's
own file system at its commit: git holds params.yaml and dvc.lock, DVC's cache the outputs
(metrics, tables, figures), as `dvc exp show` and `dvc plots diff` read them. Its baseline is
the commit it was run on (the experiment commit's parent); the workspace's is HEAD.
"""
from __future__ import annotations

import io
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from foldwise.errors import InputError

WORKSPACE = "workspace"


@dataclass(frozen=True)
class Revision:
    name: str  # as given ("workspace" for none)
    commit: str | None  # None: the workspace
    baseline: str | None  # the commit its params are compared with (None: no commit yet)
    experiment: bool = False  # a DVC experiment (not a branch or commit of git's own)


def resolve(root: Path, name: str | None) -> Revision:
    """The experiment, branch or commit `name` (None: the workspace) and its baseline."""
    if not name or name == WORKSPACE:
        return Revision(WORKSPACE, None, _git(root, "rev-parse", "--verify", "-q", "HEAD"))
    from dvc.repo import Repo
    from dvc.scm import RevError, resolve_rev

    with Repo(str(root)) as repo:
        try:
            commit = resolve_rev(repo.scm, name)
        except RevError as err:
            raise InputError(f"{root}: no experiment, branch or commit named {name!r} ({err}); "
                             "`dvc exp list` names the experiments") from None
        parents = repo.scm.resolve_commit(commit).parents
        experiment = _git(root, "rev-parse", "--verify", "-q", f"{name}^{{commit}}") is None
    return Revision(name, commit, parents[0] if parents else None, experiment)


def _git(root: Path, *args: str) -> str | None:
    done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    return done.stdout.strip() or None if done.returncode == 0 else None


class Files:
    """The files of `revision` under `root`: `data(path)` gives bytes, or None where the
    revision has no such file (a stage that was off, an older pipeline)."""

    def __init__(self, root: Path, revision: Revision):
        self.root, self.revision, self._repo = Path(root), revision, None

    def __enter__(self) -> "Files":
        if self.revision.commit is not None:
            from dvc.repo import Repo
            self._repo = Repo.open(str(self.root), rev=self.revision.commit)
        return self

    def __exit__(self, *exc) -> None:
        if self._repo is not None:
            self._repo.close()

    def data(self, path: str) -> bytes | None:
        if self._repo is None:
            file = self.root / path
            return file.read_bytes() if file.is_file() else None
        try:
            with self._repo.dvcfs.open(path, mode="rb") as f:
                return f.read()
        except (FileNotFoundError, IsADirectoryError):
            return None

    def json(self, path: str) -> dict | None:
        raw = self.data(path)
        return None if raw is None else json.loads(raw)

    def table(self, path: str):
        import pandas as pd
        raw = self.data(path)
        return None if raw is None else pd.read_csv(io.BytesIO(raw), dtype={"id": str})

    def params(self) -> dict:
        raw = self.data("params.yaml")
        if raw is None:
            raise InputError(f"{self.root}: no params.yaml at {self.revision.name}")
        return yaml.safe_load(raw)


def baseline_params(root: Path, revision: Revision) -> dict | None:
    """params.yaml at the baseline commit (None where there is none)."""
    if revision.baseline is None:
        return None
    text = _git(root, "show", f"{revision.baseline}:params.yaml")
    return None if text is None else yaml.safe_load(text)
