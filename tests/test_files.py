import pytest


from foldwise.files import atomic_dir, atomic_path, remove_stale_temporaries


def test_failed_write_leaves_the_old_file_whole(tmp_path):
    path = tmp_path / "out.csv"
    path.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert path.read_text() == "old\n"
    assert list(tmp_path.iterdir()) == [path]


def test_failed_directory_write_leaves_the_old_directory(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "a").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "a").write_text("new")
            raise RuntimeError("crash")
    assert (out / "a").read_text() == "old"
    with atomic_dir(out) as tmp:
        (tmp / "b").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_writer_killed_mid_write_leaves_the_old_output_and_its_temporary_is_cleaned(tmp_path):
    """SIGKILL a process inside atomic_dir: the old output is whole, and the next write to the
    same name removes the dead writer's temporary (at scale, gigabytes)."""
    import signal
    import subprocess
    import sys
    out = tmp_path / "processed"
    out.mkdir()
    (out / "a").write_text("old")
    code = ("import time\n"
            "from foldwise.files import atomic_dir\n"
            "with atomic_dir(%r) as tmp:\n"
            "    (tmp / 'a').write_text('half')\n"
            "    print('inside', flush=True); time.sleep(60)\n") % (str(out),)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "inside"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = [p.name for p in tmp_path.iterdir() if p.name != "processed"]
    assert len(left) == 1 and left[0].startswith(f".processed.{proc.pid}.")
    assert (out / "a").read_text() == "old"
    with atomic_dir(out) as tmp:
        (tmp / "a").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["processed"]
    assert (out / "a").read_text() == "new"


def test_an_output_moved_aside_by_a_killed_swap_is_put_back(tmp_path):
    """Where the atomic exchange is unavailable the swap is two renames; a kill between them
    leaves the output under .NAME.old, and the next access restores it."""
    out = tmp_path / "model"
    old = tmp_path / ".model.old"
    old.mkdir()
    (old / "a").write_text("old")
    remove_stale_temporaries(out)
    assert (out / "a").read_text() == "old" and not old.exists()


def test_a_live_writers_temporary_is_left_alone(tmp_path):
    import os
    out = tmp_path / "x.csv"
    mine = tmp_path / f".x.csv.{os.getpid()}.abc.tmp"
    mine.write_text("in progress")
    with atomic_path(out) as tmp:
        tmp.write_text("done")
    assert mine.exists() and out.read_text() == "done"
