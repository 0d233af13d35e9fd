"""Writing outputs so that a crash never leaves a half-written file behind.

Every output goes to a temporary name in the same directory, is flushed to disk (fsync), and
only then takes the final name; `os.replace` is atomic on one filesystem. A directory replaces
its previous version in one atomic exchange (Linux `renameat2(RENAME_EXCHANGE)`), so a kill at
any instant leaves either the old or the new directory under the final name, never neither.
Temporaries carry the writer's process id; those of dead writers are removed by the next write
to the same name, so killed runs do not leave copies of large outputs behind.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

if TYPE_CHECKING:  # pandas where it is used: a stage switched off never loads it (0.3 s)
    import pandas as pd

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


# where other checkouts of a project live inside it: DVC's temporary experiment copies and
# foldwise-search's worker checkouts
CHECKOUTS = ((".dvc", "tmp", "exps"), (".foldwise", "workers"))


def project_root(cwd: str | Path | None = None) -> Path:
    """The project directory, also from inside a DVC experiment's temporary copy or a search
    worker's checkout."""
    path = Path(cwd or os.getcwd()).resolve()
    parts = path.parts
    for i in range(len(parts)):
        if any(parts[i:i + len(m)] == m for m in CHECKOUTS):
            return Path(*parts[:i])
    return path


def source_digest(package: str | Path) -> str:
    """A digest of every .py file under `package` (names and contents): which code ran."""
    import hashlib
    package = Path(package)
    h = hashlib.sha1()
    for path in sorted(package.rglob("*.py")):
        h.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def alive(pid: int) -> bool:
    """Whether process `pid` is running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete `.NAME.<pid>.*.tmp` (and a left-over `.NAME.old`) beside `path` whose writer is
    no longer running; returns what was removed."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(\d+)\..*\.tmp$")
    removed: list[Path] = []
    if not path.parent.is_dir():
        return removed
    for entry in path.parent.iterdir():
        m = pattern.match(entry.name)
        if m and not alive(int(m.group(1))):
            _remove(entry)
            removed.append(entry)
    old = path.with_name(f".{path.name}.old")
    if old.exists() or old.is_symlink():
        if path.exists():
            _remove(old)
            removed.append(old)
        else:  # killed between the two renames of the fallback swap: put the old output back
            os.replace(old, path)
    return removed


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def fsync_path(path: Path) -> None:
    """Flush a file, or every file under a directory and the directory itself, to disk."""
    if path.is_dir():
        for root, _, files in os.walk(path):
            for name in files:
                _fsync_fd(Path(root) / name, os.O_RDONLY)
            _fsync_fd(Path(root), os.O_RDONLY | os.O_DIRECTORY)
    else:
        _fsync_fd(path, os.O_RDONLY)


def _fsync_fd(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically; False where the system cannot (then the caller falls back)."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    if not hasattr(libc, "renameat2"):
        return False
    rc = libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, name = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
        _fsync_fd(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside `path`; it replaces `path` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        fsync_path(tmp)
        if not path.exists():
            os.replace(tmp, path)
        elif not _exchange(tmp, path):  # old kernel or filesystem: two renames, recoverable
            old = path.with_name(f".{path.name}.old")
            _remove(old)
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        _fsync_fd(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    finally:
        _remove(tmp)  # after an exchange, the previous output


OFF_FILE = "off.json"


def write_off(path: str | Path, switch: str) -> None:
    """The output folder of a stage that `switch` (e.g. "stack.model: ''") turns off: one file
    saying so, replacing what was there (an empty folder makes DVC warn once for every stage
    that reads it)."""
    with atomic_dir(path) as tmp:
        (tmp / OFF_FILE).write_text(json.dumps({"off": switch}) + "\n")


def write_csv(df: pd.DataFrame, path: str | Path, **kwargs) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, **kwargs)


def write_json(obj, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_npy(array: np.ndarray, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)
