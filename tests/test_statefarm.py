import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from foldwise.data.cache import Decode, build_cache
from foldwise.errors import InputError
from foldwise.data.folds import assign_folds
from foldwise.data.sources import statefarm

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def sample_copy(statefarm_sample, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(statefarm_sample, root)
    return root


def test_sample_is_in_the_competition_layout(statefarm_sample):
    table = pd.read_csv(statefarm_sample / "driver_imgs_list.csv")
    assert list(table.columns) == ["subject", "classname", "img"]
    assert table["subject"].nunique() == 6 and sorted(table["classname"].unique()) == list(statefarm.CLASSES)
    first = table.iloc[0]
    from PIL import Image
    with Image.open(statefarm_sample / "imgs/train" / first.classname / first.img) as im:
        assert (im.format, im.size, im.mode) == ("JPEG", (640, 480), "RGB")
    sub = pd.read_csv(statefarm_sample / "sample_submission.csv")
    assert list(sub.columns) == ["img"] + list(statefarm.CLASSES)
    assert sorted(sub["img"]) == sorted(p.name for p in (statefarm_sample / "imgs/test").glob("*.jpg"))


def test_the_samples_test_labels_pair_names_and_classes_as_the_writer_did(statefarm_sample):
    """`sample_test_labels` (what benchmarks score a sample's submission with) replays the
    writer's own plan: its training frames are driver_imgs_list.csv row for row, and its test
    names are the test folder's files, each class as often as asked."""
    sizes = dict(drivers=6, per_class=3, test_drivers=1, test_per_class=1, seed=1)  # conftest's
    table = pd.read_csv(statefarm_sample / "driver_imgs_list.csv")
    train = [(d, c, n) for frames in statefarm.sample_frames(**sizes)
             for is_test, d, c, n in frames if not is_test]
    assert train == list(table.itertuples(index=False, name=None))
    labels = statefarm.sample_test_labels(**sizes)
    assert sorted(labels) == sorted(p.name for p in (statefarm_sample / "imgs/test").glob("*.jpg"))
    assert sorted(labels.values()) == list(statefarm.CLASSES)


def test_sample_is_deterministic_in_one_process_or_several(tmp_path, monkeypatch):
    """The drivers are written in parallel, each from its own random stream: the same seed
    gives the same bytes with one process or several; another seed, other images."""
    def write(name, cores, seed=0):
        monkeypatch.setattr(statefarm.os, "cpu_count", lambda: cores)
        statefarm.write_sample(tmp_path / name, drivers=2, per_class=1, test_drivers=1,
                               test_per_class=1, seed=seed)

    write("a", 1)
    write("b", 3)
    write("c", 3, seed=1)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 2 * 10 + 10 + 2
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    other = sorted((tmp_path / "c").rglob("*.jpg"))
    assert [p.read_bytes() for p in sorted((tmp_path / "a").rglob("*.jpg"))] != \
        [p.read_bytes() for p in other]


def test_read_lists_labels_groups_and_test_images(statefarm_sample):
    data = statefarm.read(statefarm_sample)
    assert len(data.train) == 6 * 10 * 3 and len(data.test) == 10
    assert set(data.train["label"]) == set(range(10))
    assert not data.hflip_safe  # c1 texting right mirrors into c3 texting left


def test_missing_listed_image_names_the_row_and_file(sample_copy):
    table = pd.read_csv(sample_copy / "driver_imgs_list.csv")
    row = table.iloc[7]
    (sample_copy / "imgs/train" / row.classname / row.img).unlink()
    with pytest.raises(InputError, match=rf"line 9: image .*{row.img} is listed but missing"):
        statefarm.read(sample_copy)


def test_unknown_class_names_the_row(sample_copy):
    csv = sample_copy / "driver_imgs_list.csv"
    table = pd.read_csv(csv)
    table.loc[3, "classname"] = "c10"
    table.to_csv(csv, index=False)
    with pytest.raises(InputError, match=r"line 5: unknown class 'c10'"):
        statefarm.read(sample_copy)


def test_empty_test_folder_is_an_error(sample_copy):
    for p in (sample_copy / "imgs/test").iterdir():
        p.unlink()
    with pytest.raises(InputError, match=r"imgs/test: no test images"):
        statefarm.read(sample_copy)


def test_corrupt_jpeg_fails_preprocess_naming_the_file_and_keeps_old_cache(sample_copy, tmp_path):
    data = statefarm.read(sample_copy)
    out = tmp_path / "train.npy"
    build_cache(data.train["path"][:4], out, Decode(24, 32, workers=1))
    before = out.read_bytes()
    victim = data.train["path"].iloc[2]
    raw = open(victim, "rb").read()
    open(victim, "wb").write(raw[: len(raw) // 3])  # truncated
    with pytest.raises(InputError, match=rf"{victim}: cannot decode image"):
        build_cache(data.train["path"][:4], out, Decode(24, 32, workers=1))
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_submission_has_the_competition_header_and_rows_summing_to_one(tmp_path):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(10), size=3)
    path = tmp_path / "submission.csv"
    statefarm.write_submission(["img_1.jpg", "img_2.jpg", "img_3.jpg"], probs, {"classes": statefarm.CLASSES}, path)
    lines = path.read_text().splitlines()
    assert lines[0] == "img,c0,c1,c2,c3,c4,c5,c6,c7,c8,c9"
    sub = pd.read_csv(path)
    assert list(sub["img"]) == ["img_1.jpg", "img_2.jpg", "img_3.jpg"]
    np.testing.assert_allclose(sub.iloc[:, 1:].sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(sub.iloc[:, 1:], probs, atol=1e-6)


def one_nn_accuracy(x, y, fold):
    correct = 0
    for k in np.unique(fold):
        tr, va = fold != k, fold == k
        d = ((x[va, None, :] - x[None, tr, :]) ** 2).sum(-1)
        correct += (y[tr][d.argmin(1)] == y[va]).sum()
    return correct / len(y)


def test_ignoring_drivers_flatters_the_score(statefarm_sample, tmp_path):
    """Frames of one driver are near duplicates: a nearest-neighbour classifier on raw pixels
    looks far better on a random split than on a driver-grouped one."""
    data = statefarm.read(statefarm_sample)
    build_cache(data.train["path"], tmp_path / "x.npy", Decode(24, 32, workers=2))
    x = np.load(tmp_path / "x.npy").reshape(len(data.train), -1).astype(np.float32)
    y = data.train["label"].to_numpy()
    grouped = one_nn_accuracy(x, y, assign_folds(y, data.train["group"], 3, seed=0))
    mixed = one_nn_accuracy(x, y, assign_folds(y, None, 3, seed=0))
    assert mixed > grouped + 0.3, (mixed, grouped)


def test_no_room_for_the_cache_is_an_error_naming_the_file_not_a_crash(statefarm_sample, tmp_path):
    """The cache file is reserved whole before the memory map is written: with no room (here a
    file-size limit standing in for a full disk) preprocess stops with the file and the size
    it needed, and leaves no partial file behind, instead of dying of SIGBUS mid-write."""
    import subprocess
    import sys
    paths = [str(p) for p in statefarm.read(statefarm_sample).train["path"][:8]]
    code = ("import resource, signal\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))\n"
            "from foldwise.data.cache import Decode, build_cache\n"
            "from foldwise.errors import InputError\n"
            "try:\n"
            "    build_cache(%r, %r, Decode(96, 128, workers=1))\n"
            "except InputError as err:\n"
            "    print(err)\n") % (paths, str(tmp_path / "train.npy"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "cannot reserve 0.3 MiB for the cache (File too large)" in out.stdout, out.stdout
    assert str(tmp_path) in out.stdout
    assert list(tmp_path.iterdir()) == []


def test_the_sample_stage_writes_only_a_note_when_data_root_is_your_own_data(tmp_path):
    """With data.root elsewhere the sample stage ran anyway and wrote images nothing reads; now
    its folder holds one note, and at the sample's own root it writes the sample."""
    import json

    from foldwise import params as P
    from foldwise.data import sample
    out = tmp_path / "data/sample/statefarm"
    base = P.load(ROOT / "params.yaml")
    small = {"sample": {"statefarm": {"drivers": 2, "per_class": 1, "test_drivers": 1,
                                      "test_per_class": 1}}}
    mine = P.evolve(base, {**small, "data": {"root": str(tmp_path / "my-photos")}})
    assert sample.run(mine, sample.Paths(out)) == f"sample: not written, data.root is {tmp_path / 'my-photos'}"
    assert [p.name for p in out.iterdir()] == ["off.json"]
    assert "not the sample" in json.loads((out / "off.json").read_text())["off"]
    own = P.evolve(base, {**small, "data": {"root": str(out)}})
    assert "written" in sample.run(own, sample.Paths(out))
    assert (out / "driver_imgs_list.csv").is_file() and not (out / "off.json").exists()
