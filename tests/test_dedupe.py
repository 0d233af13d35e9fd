"""Hidden near-duplicates: planted into an image-folders set with no subject column, they are
found, kept within one fold by `split.dedupe`, and the out-of-fold score stops flattering."""
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageEnhance

from foldwise import params as P
from foldwise.data import dedupe
from foldwise.data.cache import Decode, build_cache
from foldwise.data.folds import assign_folds
from helpers import copy_params
from foldwise.data.sources import folders

ROOT = Path(__file__).resolve().parents[1]


def near_copy(src: Path, dst: Path, k: int) -> None:
    """A burst-photo twin: cropped a few pixels, brighter or darker, re-encoded."""
    with Image.open(src) as im:
        w, h = im.size
        d = 2 + k % 4
        im = im.crop((d, d // 2, w - d // 2, h - d)).resize((w, h))
        im = ImageEnhance.Brightness(im).enhance(1.08 if k % 2 else 0.93)
        im.save(dst, quality=80)


def scene(rng, label: int, side: int = 128) -> Image.Image:
    """A photo-like frame: a smooth random scene (most of the pixels) with a faint
    class-specific patch, so that only a near-copy of the same frame is close in pixels."""
    coarse = rng.normal(0, 1, size=(6, 6, 3))
    coarse = ((coarse - coarse.min()) / np.ptp(coarse) * 255).astype(np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((side, side), Image.BICUBIC), dtype=np.float64)
    x, y = (label % 3) * 40 + 10, (label // 3) * 60 + 10
    field = field * 0.8
    field[y:y + 30, x:x + 30] += 60
    return Image.fromarray(np.clip(field + rng.normal(0, 4, field.shape), 0, 255).astype(np.uint8))


def write_set(root: Path, per_class: int, seed: int, twins: bool) -> list:
    """The image-folders layout (no subject column), 6 classes; with `twins`, every frame
    has a planted burst-photo near-copy in its class folder."""
    rng = np.random.default_rng(seed)
    planted = []
    for c in range(6):
        folder = root / "train" / f"class_{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            src = folder / f"frame_{i}.jpg"
            scene(rng, c).save(src, quality=90)
            if twins:
                near_copy(src, folder / f"frame_{i}_burst.jpg", i)
                planted.append((f"class_{c}/frame_{i}.jpg", f"class_{c}/frame_{i}_burst.jpg"))
    (root / "test").mkdir()
    scene(rng, 0).save(root / "test" / "t.jpg")
    return planted


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("dups") / "data"
    twins = write_set(root, 12, seed=4, twins=True)
    unseen = tmp_path_factory.mktemp("unseen") / "data"
    write_set(unseen, 10, seed=99, twins=False)
    return root, twins, unseen


def pixels(data, tmp_path, name):
    build_cache(data.train["path"], tmp_path / f"{name}.npy", Decode(24, 24, workers=2))
    return np.load(tmp_path / f"{name}.npy").reshape(len(data.train), -1).astype(np.float32)


def one_nn(x_train, y_train, x_test):
    d = ((x_test[:, None, :] - x_train[None, :, :]) ** 2).sum(-1)
    return y_train[d.argmin(1)]


def oof_accuracy(x, y, fold):
    pred = np.empty_like(y)
    for k in np.unique(fold):
        va = fold == k
        pred[va] = one_nn(x[~va], y[~va], x[va])
    return float((pred == y).mean())


def test_planted_near_duplicates_are_found_and_unrelated_images_are_not(planted):
    root, twins, _ = planted
    data = folders.read(root)
    h = dedupe.hashes(data.train["path"])
    pairs = dedupe.near_pairs(h, 8)
    index = {img: i for i, img in enumerate(data.train["id"])}
    found = {(min(a, b), max(a, b)) for a, b in pairs.tolist()}
    planted_pairs = {tuple(sorted((index[a], index[b]))) for a, b in twins}
    assert len(planted_pairs & found) >= 0.9 * len(planted_pairs)
    assert len(found - planted_pairs) <= 0.05 * len(planted_pairs)  # few false matches


def test_with_dedupe_no_cluster_spans_two_folds_and_the_score_stops_flattering(planted, tmp_path):
    root, _, unseen_root = planted
    data, unseen = folders.read(root), folders.read(unseen_root)
    x, y = pixels(data, tmp_path, "train"), data.train["label"].to_numpy()
    h = dedupe.hashes(data.train["path"])
    pairs = dedupe.near_pairs(h, 8)
    random_folds = assign_folds(y, None, 4, seed=0)
    grouped = assign_folds(y, dedupe.components(len(y), pairs), 4, seed=0)
    assert dedupe.spanning(grouped, pairs) == 0
    assert dedupe.spanning(random_folds, pairs) > len(pairs) / 2
    truly_unseen = float((one_nn(x, y, pixels(unseen, tmp_path, "unseen"))
                          == unseen.train["label"].to_numpy()).mean())
    flattering, honest = oof_accuracy(x, y, random_folds), oof_accuracy(x, y, grouped)
    print(f"1-NN accuracy: random split OOF {flattering:.3f}, dedupe split OOF {honest:.3f}, unseen {truly_unseen:.3f}")
    assert flattering > honest + 0.2, (flattering, honest, truly_unseen)
    assert abs(honest - truly_unseen) < abs(flattering - truly_unseen), (flattering, honest, truly_unseen)


def run_split(tmp_path, data_root, folds):
    """The split stage with dedupe on, over `data_root` (image folders), in `tmp_path`."""
    def dedupe_on(params):
        params["data"].update(source="folders", root=str(data_root))
        params["split"].update(dedupe=True, hash_distance=8)
        params["folds"] = list(range(folds))
    copy_params(tmp_path)
    P.change_files(tmp_path, dedupe_on)
    res = subprocess.run([sys.executable, str(ROOT / "stages/split.py"), str(data_root), "folds.csv",
                          "duplicates.csv", "duplicates.png"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout, pd.read_csv(tmp_path / "folds.csv").set_index("id")["fold"]


def test_the_split_stage_reports_clusters_and_keeps_them_in_one_fold(planted, tmp_path):
    root, twins, _ = planted
    out, folds = run_split(tmp_path, root, 4)
    assert "images have near-duplicates" in out and "0 pairs across folds" in out
    assert all(folds[a] == folds[b] for a, b in twins)
    clusters = pd.read_csv(tmp_path / "duplicates.csv")
    assert list(clusters.columns) == ["cluster", "size", "id", "hash"]
    assert clusters["size"].is_monotonic_decreasing and len(clusters) >= 0.9 * 2 * len(twins)
    with Image.open(tmp_path / "duplicates.png") as sheet:
        assert sheet.width > 300 and sheet.height > 100


def test_a_subject_column_that_splits_near_duplicates_is_warned_about_and_merged(planted, tmp_path):
    """labels.csv names a subject per image, but each twin was given another subject: grouping
    by subject alone would put twins in two folds. The stage says so and groups them."""
    root, twins, _ = planted
    data = shutil.copytree(root, tmp_path / "data")
    files = sorted((data / "train").glob("*/*.jpg"))
    # a subject per frame and its twin, except that every fourth twin is filed under a
    # subject of its own
    subject = [f"{p.parent.name}-{p.stem.removesuffix('_burst')}" for p in files]
    subject = [s + ("-x" if p.stem.endswith("_burst") and i % 8 == 1 else "")
               for i, (s, p) in enumerate(zip(subject, files))]
    pd.DataFrame({"image": [f"train/{p.parent.name}/{p.name}" for p in files],
                  "label": [p.parent.name for p in files],
                  "group": subject}).to_csv(data / "labels.csv", index=False)
    out, folds = run_split(tmp_path, data, 3)
    assert "warning: grouped by subject alone" in out, out
    assert all(folds[f"train/{a}"] == folds[f"train/{b}"] for a, b in twins)
