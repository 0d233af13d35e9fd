import pytest

from foldwise.files import atomic_dir, atomic_path


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
