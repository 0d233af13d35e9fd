"""Identical runs of a stage in concurrent experiments take turns.

Two queued experiments whose run of a stage has the same name, command line, params, code and
inputs ("twins" for that stage) write the same files, and their DVC processes commit them to
the shared cache at the same moment. DVC's cache cannot take that on a filesystem without
copy-on-write clones (ext4): dvc-objects (5.2.0) first tries to clone each file to its final
cache path, opening that path with O_TRUNC; the clone fails and the path is removed again, but
for that instant the object is empty or, if the twin has just put it there, truncated, and a
twin that hard-links it then keeps a 0-byte file. `benchmarks/twin_race.py` reproduces it with
DVC's own code and runs the twin case through `dvc queue` (docs/scaling.md).

So every stage run takes an exclusive lock named by its identity in the project's own
`.foldwise/locks/`, which every experiment's temporary copy shares, and removes it when done. A twin that finds it taken
waits for the run that holds it, and then for that run's DVC to commit its outputs (DVC
rewrites the run's dvc.lock after the commit); its own commit then finds every file in the
cache already and writes none. Runs that differ in anything still run at once.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterator

import yaml

import foldwise
from foldwise.files import alive, project_root, source_digest

log = logging.getLogger(__name__)

SMALL = 1 << 20        # a file input up to this size counts by its content, a larger one by size
COMMIT_WAIT_S = 600.0  # longest wait for the other run's commit before going ahead anyway
SHELLS = {"sh", "bash", "dash", "zsh", "fish"}
HELD = "FOLDWISE_TURN_HELD"  # the lock this process's stage run holds, for the processes it starts


def identity(root: Path, stage: str, argv: list[str]) -> str:
    """What makes two runs of `stage` write the same files: its name and command line, the
    values of the params dvc.yaml lists for it, foldwise's code, and its inputs (the paths on
    its command line that exist when it starts; DVC has removed its outputs by then)."""
    h = hashlib.sha256(json.dumps([stage, argv, stage_params(root, stage)], sort_keys=True,
                                  default=str).encode())
    h.update(source_digest(Path(foldwise.__file__).parent).encode())
    for arg in argv:
        path = root / arg
        if path.exists():
            _fingerprint(h, path)
    return h.hexdigest()[:24]


def stage_params(root: Path, stage: str) -> dict:
    """The params listed for `stage` (`train@0` is `train`'s foreach) and their values."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text()).get("stages", {})
    spec = stages.get(stage.split("@")[0], {})
    listed = spec.get("do", spec).get("params", [])
    files: dict[str, dict] = {}
    values = {}
    for entry in listed:
        for name, keys in (entry.items() if isinstance(entry, dict) else [("params.yaml", [entry])]):
            if name not in files:
                files[name] = yaml.safe_load((root / name).read_text()) or {}
            if keys is None:  # `- params.yaml:` lists every key of the file
                values[name] = files[name]
                continue
            for key in keys:
                values[f"{name}:{key}"] = _lookup(files[name], key)
    return values


def _lookup(tree: Any, dotted: str):
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def _fingerprint(h, path: Path) -> None:
    """A file on the command line by its content (by its size above SMALL); a folder by its
    files' names and sizes, read in no time even for 100,000 images. Runs that differ only
    inside a folder's files of equal sizes would be taken for twins: they then wait for each
    other, which costs time, never a result."""
    if path.is_file():
        size = path.stat().st_size
        h.update(f"{path.name}\0{size}\0".encode())
        if size <= SMALL:
            h.update(path.read_bytes())
        return
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(path)}\0{f.stat().st_size}\0".encode())


@contextlib.contextmanager
def turn(argv: list[str], env=os.environ) -> Iterator[None]:
    """Run the block when no twin of this stage run is running or committing elsewhere."""
    stage = env.get("DVC_STAGE")
    if not stage:  # not run by DVC: nothing of ours to commit
        yield
        return
    root = Path(env.get("DVC_ROOT") or os.getcwd())
    path = project_root(root) / ".foldwise" / "locks" / f"{identity(root, stage, argv)}.lock"
    if env.get(HELD) == path.name:  # a process this run started (a torchrun rank): its turn
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path, stage) as f, _holding(path.name):
        _write(f, {"stage": stage, "experiment": env.get("DVC_EXP_NAME", ""), "pid": os.getpid()})
        try:
            yield
            _write(f, {"stage": stage, "experiment": env.get("DVC_EXP_NAME", ""),
                       "pid": os.getpid(), "finished": time.time(),
                       "dvc_lock": str(root / "dvc.lock"), "dvc_pid": dvc_pid()})
        finally:  # done: the file goes (a twin waiting on it still reads it), the lock after
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(path: Path, stage: str) -> Iterator:
    """The lock file at `path`, opened and held exclusively. A holder removes the file when its
    run is done, so a twin that waited on it takes, after that run's commit, the file that is
    at `path` now (a third twin may have made it)."""
    while True:
        f = open(path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = _read(f)
            log.info("%s: an identical run is in progress in experiment '%s' (pid %s); waiting for "
                     "it and for DVC to commit its outputs, since DVC's cache cannot take the same "
                     "files from two runs at once (docs/scaling.md)", stage,
                     other.get("experiment", "?"), other.get("pid", "?"))
            fcntl.flock(f, fcntl.LOCK_EX)
            wait_for_commit(_read(f))
        if _same_file(f, path):
            break
        f.close()
    try:
        yield f
    finally:
        f.close()


def _same_file(f, path: Path) -> bool:
    try:
        return os.fstat(f.fileno()).st_ino == path.stat().st_ino
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def _holding(name: str) -> Iterator[None]:
    """Tell the processes this stage starts (torchrun's ranks run the same stage again) that
    the turn is theirs already: waiting for it would wait for their own parent."""
    os.environ[HELD] = name
    try:
        yield
    finally:
        if os.environ.get(HELD) == name:
            del os.environ[HELD]


def wait_for_commit(last: dict, limit_s: float = COMMIT_WAIT_S, poll_s: float = 0.2) -> None:
    """Wait until the previous holder's DVC has committed (its dvc.lock rewritten since the run
    finished), has exited, or `limit_s` has passed. A holder that failed left no `finished`."""
    if "finished" not in last:
        return
    lock, pid, start = Path(last["dvc_lock"]), int(last["dvc_pid"]), time.monotonic()
    while lock.exists() and lock.stat().st_mtime <= last["finished"] and alive(pid):
        if time.monotonic() - start > limit_s:
            log.warning("%s: DVC has not committed the identical run's outputs after %.0f s; "
                        "going ahead", last.get("stage"), limit_s)
            return
        time.sleep(poll_s)


def dvc_pid() -> int:
    """The DVC process that runs this stage: the nearest ancestor that is not a shell."""
    pid = os.getppid()
    for _ in range(8):
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return pid
        if comm not in SHELLS:
            return pid
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return pid


def _read(f) -> dict:
    f.seek(0)
    try:
        return json.loads(f.read() or "{}")
    except json.JSONDecodeError:
        return {}


def _write(f, info: dict) -> None:
    f.seek(0)
    f.truncate()
    f.write(json.dumps(info))
    f.flush()
