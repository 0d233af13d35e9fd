"""`python -m foldwise.scale.parallel --jobs N` (`make folds J=N`): the folds trained N at a time in
this workspace, each pinned to its own GPU, then the rest of the DAG; DVC does every step.

DVC runs the stages of one `dvc repro` one after another, but releases its repository lock
while a stage's command runs and guards each stage's dependencies and outputs with read/write
locks, so several `dvc repro` processes may run independent stages of one workspace at once
(DVC's documented "parallel stage execution"). This drives exactly that:

1. `dvc repro` of everything upstream of the folds (sample, split, preprocess), once;
2. `dvc --wait-for-lock repro --single-item train@k`, then the same for `pseudo@k` (its further
   pseudo-label rounds, a marker when there are none), for every fold, N processes at a time; slot
   j gets `CUDA_VISIBLE_DEVICES=j mod <GPUs>` (nothing pinned without GPUs). `--single-item` keeps
   each process off the shared upstream stages (a second process would ask for a write lock on
   their outputs while the first reads them: DVC issue #5795); `--wait-for-lock` makes a process
   wait while another holds the repository lock to record its stage, instead of failing (DVC
   issue #10465);
3. `dvc repro` of the rest (bag, evaluate, neighbours, export), which finds the folds done.

Each fold's output goes to `.foldwise/logs/train@k.log`; a fold that fails stops the launch of
further folds, lets the running ones finish, and is named with the end of its log.
"""
from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from foldwise import params as P
from foldwise.errors import InputError

UPSTREAM = ("sample", "split", "preprocess")


def gpu_count() -> int:
    """GPUs nvidia-smi lists (0 without a driver); CUDA_VISIBLE_DEVICES, if set, wins."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip()])
    if not shutil.which("nvidia-smi"):
        return 0
    res = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return len([line for line in res.stdout.splitlines() if line.startswith("GPU")]) if res.returncode == 0 else 0


def devices(jobs: int, gpus: int) -> list[str | None]:
    """The CUDA_VISIBLE_DEVICES value of each of `jobs` slots (None: leave it alone)."""
    if gpus == 0:
        return [None] * jobs
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [d.strip() for d in visible.split(",") if d.strip()] if visible else [str(i) for i in range(gpus)]
    return [ids[j % len(ids)] for j in range(jobs)]


def dvc(*args: str) -> list[str]:
    return [sys.executable, "-m", "dvc", *args]


def train_folds(folds, jobs: int, logs: Path, env=None) -> list[tuple[int, float, float]]:
    """Every fold's train stage through its own `dvc repro`, `jobs` at a time; returns (fold,
    start, end) of each, in the order they finished. Raises naming the first fold that failed."""
    logs.mkdir(parents=True, exist_ok=True)
    slots: queue.Queue = queue.Queue()
    for device in devices(jobs, gpu_count()):
        slots.put(device)
    failed: list[tuple[int, Path]] = []
    done: list[tuple[int, float, float]] = []

    def one(fold: int) -> None:
        if failed:
            return  # a fold failed: launch no more
        device = slots.get()
        try:
            child = dict(env or os.environ)
            if device is not None:
                child["CUDA_VISIBLE_DEVICES"] = device
            log = logs / f"train@{fold}.log"
            start = time.time()
            print(f"train@{fold}: started{f' on GPU {device}' if device is not None else ''}, log {log}",
                  flush=True)
            with open(log, "w") as out:
                for stage in (f"train@{fold}", f"pseudo@{fold}"):
                    rc = subprocess.run(dvc("--wait-for-lock", "repro", "--single-item", stage),
                                        stdout=out, stderr=subprocess.STDOUT, env=child).returncode
                    if rc != 0:
                        break
            if rc != 0:
                failed.append((fold, log))
                return
            done.append((fold, start, time.time()))
            print(f"train@{fold}: done in {time.time() - start:.0f} s", flush=True)
        finally:
            slots.put(device)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(one, folds))
    if failed:
        fold, log = failed[0]
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise InputError(f"train@{fold} failed (whole log: {log}):\n{tail}")
    return done


def repro(*args: str) -> None:
    if subprocess.run(dvc("--wait-for-lock", "repro", *args)).returncode != 0:
        raise InputError(f"dvc repro {' '.join(args)} failed (its output is above)")


def run(jobs: int) -> None:
    if jobs < 1:
        raise InputError(f"--jobs {jobs}: at least 1")
    folds = P.load().folds
    repro(*UPSTREAM)
    train_folds(folds, min(jobs, len(folds)), Path(".foldwise") / "logs")
    repro()


def main() -> None:
    from foldwise import stage
    parser = stage.parser(__doc__)
    parser.add_argument("--jobs", "-j", type=int, default=2, help="folds trained at once (default 2)")
    args = parser.parse_args()
    stage.run(lambda: run(args.jobs))


if __name__ == "__main__":
    main()
