"""Twin experiments and DVC's shared cache: the cause, measured with DVC's own code, and the
twin case run through `dvc queue` with foldwise's turn-taking (`foldwise.scale.twins`).

    python benchmarks/twin_race.py --rounds 2000 --queue-rounds 20 --out benchmarks/twin-race.json

1. The cause. Two processes add the same object to one DVC cache at once, as two experiments'
   commits of identical files do (`dvc_objects.db.ObjectDB.add`), and each then hard-links the
   cache object as DVC's relink does. Counted: links shorter than the object, once with
   dvc-objects as installed and once with its clone attempt (`dvc_objects.fs.system.reflink`,
   which opens the final cache path with O_TRUNC) failing at once as on ext4, without
   touching the path.
2. The twin case. In one tiny State Farm project, each round queues two experiments with the
   same params (a new lr each round, so nothing comes from an earlier round's run-cache), runs
   them two at a time (`dvc queue start -j 2`, its workers at DVC's debug level; the runs
   themselves, `dvc exp exec-run`, take no -v from the queue), and counts failed experiments,
   empty cache objects and the stages that waited for their twin.
"""
from __future__ import annotations

import argparse
import errno
import hashlib
import json
import multiprocessing as mp
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from project import copy, run  # noqa: E402

EMPTY_MD5 = hashlib.md5(b"").hexdigest()


def _adder(k: int, root: str, rounds: int, clone: bool, barrier, out) -> None:
    from dvc_objects.db import ObjectDB
    from dvc_objects.fs import system
    from dvc_objects.fs.local import LocalFileSystem
    if not clone:
        def no_clone(src, dst):
            raise OSError(errno.ENOTSUP, "no clone attempt")
        system.reflink = no_clone
    fs = LocalFileSystem()
    odb = ObjectDB(fs, f"{root}/cache")
    work = Path(root) / f"ws{k}"
    work.mkdir(parents=True, exist_ok=True)
    short = 0
    for r in range(rounds):
        data = f"round {r} ".encode() * 50000
        oid = hashlib.md5(data).hexdigest()
        (work / "model.pt").write_bytes(data)
        barrier.wait()
        odb.add(str(work / "model.pt"), fs, oid)
        link = work / "linked.pt"
        link.unlink(missing_ok=True)
        try:
            os.link(odb.oid_to_path(oid), link)
        except FileNotFoundError:  # the other process had just removed its failed clone
            link = None
        barrier.wait()
        short += link is not None and link.stat().st_size != len(data)
    out.put(short)


def cache_race(rounds: int, clone: bool) -> int:
    """Links shorter than their object, over both processes and `rounds` simultaneous adds."""
    root = tempfile.mkdtemp(prefix="twin-race-")
    barrier, out = mp.Barrier(2), mp.Queue()
    procs = [mp.Process(target=_adder, args=(k, root, rounds, clone, barrier, out)) for k in (0, 1)]
    [p.start() for p in procs]
    counts = [out.get() for _ in procs]
    [p.join() for p in procs]
    shutil.rmtree(root, ignore_errors=True)
    return sum(counts)


def tiny(params) -> None:
    params["folds"] = [0, 1]
    params["train"].update(model="resnet10t", epochs=2, batch_size=8, patience=2)
    params["sample"]["statefarm"].update(drivers=4, per_class=2, test_drivers=1, test_per_class=1)
    params["preprocess"].update(height=32, width=48)


def settled(dst: Path) -> str:
    """`dvc queue status` once nothing is queued or running and every worker has exited (a
    `dvc queue start` while the last round's workers shut down leaves the new round stranded)."""
    while True:
        status = run("dvc queue status", dst).stdout
        if "Queued" not in status and "Running" not in status and "0 active, 0 idle" in status:
            return status
        time.sleep(2)


def queue_round(dst: Path, i: int) -> dict:
    lr = f"{0.001 + 1e-5 * i:.5f}"
    names = [f"twin{i}a", f"twin{i}b"]
    settled(dst)
    for name in names:
        run(f"dvc exp run --queue -n {name} -S lr={lr}", dst)
    t0 = time.time()
    run("dvc queue start -v -j 2", dst)  # debug log for the workers
    time.sleep(5)
    status = settled(dst)
    logs = {n: run(f"dvc queue logs {n}", dst).stdout for n in names}
    return {"round": i, "lr": lr, "seconds": round(time.time() - t0, 1),
            "succeeded": sum(line.split()[1:2] == [n] and "Success" in line
                             for line in status.splitlines() for n in names),
            "waited": sum(log.count("an identical run is in progress") for log in logs.values())}


def empty_objects(dst: Path) -> list[str]:
    files = (dst / ".dvc/cache/files/md5").rglob("*")
    return [str(f) for f in files if f.is_file() and f.stat().st_size == 0
            and f.parent.name + f.name != EMPTY_MD5]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2000, help="simultaneous adds to the cache")
    ap.add_argument("--queue-rounds", type=int, default=20, help="twin pairs through dvc queue")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    from importlib.metadata import version
    result = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.node()} {os.cpu_count()} cores",
              "dvc": version("dvc"), "dvc_objects": version("dvc-objects")}
    result["cache_race"] = {"rounds": args.rounds,
                            "short_links_as_installed": cache_race(args.rounds, clone=True),
                            "short_links_without_clone_attempt": cache_race(args.rounds, clone=False)}
    print(json.dumps(result["cache_race"]), flush=True)
    rounds = []
    if args.queue_rounds:
        dst = copy(Path(tempfile.mkdtemp(prefix="twin-queue-")), tiny)
        run("dvc repro", dst)
        for i in range(args.queue_rounds):
            rounds.append(queue_round(dst, i))
            print(json.dumps(rounds[-1]), flush=True)
        result["queue"] = {"rounds": rounds,
                           "experiments": 2 * len(rounds),
                           "succeeded": sum(r["succeeded"] for r in rounds),
                           "rounds_where_a_stage_waited": sum(r["waited"] > 0 for r in rounds),
                           "empty_cache_objects": empty_objects(dst)}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.get("queue", {}).items() if k != "rounds"}))


if __name__ == "__main__":
    main()
