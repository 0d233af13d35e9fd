"""Identical stage runs in concurrent experiments take turns (`foldwise.scale.twins`): what makes
two runs twins, and that the second waits for the first and for its DVC commit."""
import os
import threading
import time
from pathlib import Path

import yaml

from foldwise.scale import twins

DVC_YAML = {"stages": {
    "train": {"foreach": [0, 1], "do": {"cmd": "python stages/train.py ${item}",
                                        "params": ["seed", "train"]}},
    "bag": {"cmd": "python stages/bag.py", "params": ["bag", {"other.yaml": ["x.y"]}]},
}}


def project(tmp_path: Path) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(
        {"seed": 0, "lr": 0.1, "train": {"epochs": 2}, "bag": {"mean": "arithmetic"}}))
    (tmp_path / "other.yaml").write_text(yaml.safe_dump({"x": {"y": 1, "z": 2}}))
    (tmp_path / "data").mkdir()
    (tmp_path / "data/folds.csv").write_text("img,fold\na.jpg,0\n")
    (tmp_path / "data/big.bin").write_bytes(b"\0" * (twins.SMALL + 10))
    (tmp_path / "data/images").mkdir()
    (tmp_path / "data/images/a.png").write_bytes(b"\1" * 100)
    return tmp_path


def change(root: Path, name: str, key: str, value) -> None:
    data = yaml.safe_load((root / name).read_text())
    *head, last = key.split(".")
    node = data
    for part in head:
        node = node[part]
    node[last] = value
    (root / name).write_text(yaml.safe_dump(data))


def test_the_listed_params_their_values_and_the_foreach_item_are_read(tmp_path):
    root = project(tmp_path)
    assert twins.stage_params(root, "train@1") == {"params.yaml:seed": 0,
                                                   "params.yaml:train": {"epochs": 2}}
    assert twins.stage_params(root, "bag") == {"params.yaml:bag": {"mean": "arithmetic"},
                                               "other.yaml:x.y": 1}


def test_runs_are_twins_only_when_name_command_listed_params_and_inputs_agree(tmp_path):
    root = project(tmp_path)
    argv = ["stages/train.py", "0", "data/folds.csv", "data/big.bin", "data/images", "models/fold_0"]
    base = twins.identity(root, "train@0", argv)
    assert twins.identity(root, "train@0", argv) == base
    change(root, "params.yaml", "lr", 0.2)                 # not listed for train
    assert twins.identity(root, "train@0", argv) == base
    assert twins.identity(root, "train@1", argv[:1] + ["1"] + argv[2:]) != base
    change(root, "params.yaml", "train.epochs", 3)         # listed
    moved = twins.identity(root, "train@0", argv)
    assert moved != base
    (root / "data/folds.csv").write_text("img,fold\na.jpg,1\n")   # a small input's content
    assert twins.identity(root, "train@0", argv) != moved
    moved = twins.identity(root, "train@0", argv)
    (root / "data/big.bin").write_bytes(b"\0" * (twins.SMALL + 11))  # a large input's size
    assert twins.identity(root, "train@0", argv) != moved
    moved = twins.identity(root, "train@0", argv)
    (root / "data/images/b.png").write_bytes(b"\1" * 100)          # a folder's listing
    assert twins.identity(root, "train@0", argv) != moved
    moved = twins.identity(root, "train@0", argv)
    (root / "data/images/b.png").write_bytes(b"\2" * 100)          # not its files' contents
    assert twins.identity(root, "train@0", argv) == moved
    change(root, "other.yaml", "x.z", 5)                   # another file, key not listed
    bag = twins.identity(root, "bag", ["stages/bag.py"])
    change(root, "other.yaml", "x.z", 6)
    assert twins.identity(root, "bag", ["stages/bag.py"]) == bag
    change(root, "other.yaml", "x.y", 6)
    assert twins.identity(root, "bag", ["stages/bag.py"]) != bag


def test_a_twin_waits_for_the_run_and_then_for_its_dvc_commit(tmp_path):
    """Two threads take turns like two processes (flock locks an open file, not a process). The
    second starts only after the first finished and its dvc.lock was rewritten (DVC's commit)."""
    root = project(tmp_path / "exp-a")
    (root / "dvc.lock").write_text("before\n")
    past = time.time() - 60
    os.utime(root / "dvc.lock", (past, past))
    env = {"DVC_STAGE": "train@0", "DVC_ROOT": str(root)}
    argv = ["stages/train.py", "0", "data/folds.csv"]
    events = []

    def first():
        with twins.turn(argv, env):
            events.append(("first starts", time.monotonic()))
            time.sleep(0.5)
        events.append(("first ends", time.monotonic()))

    def commit():  # what DVC does after the stage's command exits
        time.sleep(1.5)
        events.append(("commit", time.monotonic()))
        (root / "dvc.lock").write_text("after\n")

    def second():
        time.sleep(0.1)
        with twins.turn(argv, env):
            events.append(("second starts", time.monotonic()))

    threads = [threading.Thread(target=f) for f in (first, commit, second)]
    [t.start() for t in threads]
    [t.join(timeout=30) for t in threads]
    order = [name for name, _ in sorted(events, key=lambda e: e[1])]
    assert order == ["first starts", "first ends", "commit", "second starts"], events
    assert not list((tmp_path / "exp-a/.foldwise/locks").glob("*.lock"))  # done: removed


def test_different_runs_do_not_wait_and_a_failed_holder_leaves_no_wait(tmp_path):
    root = project(tmp_path)
    env = {"DVC_STAGE": "train@0", "DVC_ROOT": str(root)}
    started = []
    with twins.turn(["stages/train.py", "0"], env):
        with twins.turn(["stages/train.py", "1"], {**env, "DVC_STAGE": "train@1"}):
            started.append("both at once")
    assert started == ["both at once"]
    try:
        with twins.turn(["stages/train.py", "0"], env):
            raise RuntimeError("the stage failed")
    except RuntimeError:
        pass
    t0 = time.monotonic()
    with twins.turn(["stages/train.py", "0"], env):  # no commit to wait for
        assert len(list((root / ".foldwise/locks").glob("*.lock"))) == 1  # held: there
    assert time.monotonic() - t0 < 5
    assert not list((root / ".foldwise/locks").glob("*.lock"))  # failed or done: gone
    locks = Path.cwd() / ".foldwise/locks"  # (a `make repro` in this checkout leaves its own)
    before = sorted(locks.iterdir()) if locks.exists() else []
    with twins.turn(["anything"], {}):  # not under DVC: no lock at all
        pass
    assert (sorted(locks.iterdir()) if locks.exists() else []) == before or Path.cwd() == root


def test_processes_a_stage_run_starts_share_its_turn(tmp_path):
    """torchrun's ranks run the stage's script again under the same DVC_STAGE: they must not
    wait for the turn their own parent holds (they did, and the ranks never met)."""
    import subprocess
    import sys
    root = project(tmp_path)
    env = {"DVC_STAGE": "train@0", "DVC_ROOT": str(root)}
    argv = ["stages/train.py", "0", "data/folds.csv"]
    child = (f"import os; from foldwise.scale import twins; "
             f"env = {{**os.environ, **{env!r}}}\n"
             f"with twins.turn({argv!r}, env): print('rank ran')")
    with twins.turn(argv, env):
        res = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "rank ran" in res.stdout, res.stderr
    assert twins.HELD not in os.environ
