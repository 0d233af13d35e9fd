"""Image folders for fine-grained sets (birds and the like), in either common layout:

    root/train/<class>/<image>            one folder per class
    root/labels.csv                       or: image,label[,group]  (image relative to root)
    root/test/<image>                     images to predict
Submission: `image,label,<class probabilities...>`, the predicted label then each class's
probability.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from foldwise.errors import InputError
from foldwise.files import atomic_dir, write_csv
from foldwise.data.sources import Dataset, inside, listed_inside, read_table

SUFFIXES = {".jpg", ".jpeg", ".png"}


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)


def _from_csv(root: Path, csv: Path) -> pd.DataFrame:
    table = read_table(csv, ("image", "label"), "image,label[,group] CSV")
    for i, row in enumerate(table.itertuples(index=False)):
        if not row.label:
            raise InputError(f"{csv}, line {i + 2}: empty label (image {row.image!r})")
        if not inside(root, row.image, f"{csv}, line {i + 2}").is_file():
            raise InputError(f"{csv}, line {i + 2}: image {root / row.image} is listed but missing")
    dup = table["image"].duplicated(keep=False)
    if dup.any():
        lines = [int(i) + 2 for i in np.flatnonzero(dup.to_numpy())][:5]
        raise InputError(f"{csv}, lines {lines}: image {table['image'][dup].iloc[0]!r} listed twice")
    return pd.DataFrame({"id": table["image"], "path": [str(root / i) for i in table["image"]],
                         "label": table["label"],
                         "group": table["group"] if "group" in table.columns else None})


def _from_folders(train_dir: Path) -> pd.DataFrame:
    rows = []
    folders = sorted(p for p in train_dir.iterdir() if p.is_dir())
    if not folders:
        raise InputError(f"{train_dir}: no class folders")
    for folder in folders:
        files = listed_inside(train_dir.parent, _images(folder))
        if not files:
            raise InputError(f"{folder}: class folder holds no images ({', '.join(sorted(SUFFIXES))})")
        rows += [(f"{folder.name}/{f.name}", str(f), folder.name) for f in files]
    table = pd.DataFrame(rows, columns=["id", "path", "label"])
    table["group"] = None
    return table


def read(root: str | Path) -> Dataset:
    root = Path(root)
    csv, train_dir, test_dir = root / "labels.csv", root / "train", root / "test"
    if csv.is_file():
        train = _from_csv(root, csv)
    elif train_dir.is_dir():
        train = _from_folders(train_dir)
    else:
        raise InputError(f"{root}: neither labels.csv nor train/<class>/ folders found")
    classes = tuple(sorted(train["label"].unique()))
    train["label"] = [classes.index(c) for c in train["label"]]
    test_files = listed_inside(root, _images(test_dir)) if test_dir.is_dir() else []
    if not test_files:
        raise InputError(f"{test_dir}: no test images found")
    test = pd.DataFrame({"id": [p.name for p in test_files], "path": [str(p) for p in test_files]})
    return Dataset(train=train, test=test, classes=classes, task="classification", hflip_safe=True)


def write_submission(ids, probs: np.ndarray, meta: dict, path: str | Path) -> None:
    classes = list(meta["classes"])
    probs = np.asarray(probs, dtype=np.float64)
    df = pd.DataFrame(probs, columns=classes)
    df.insert(0, "label", [classes[i] for i in probs.argmax(axis=1)])
    df.insert(0, "image", [str(i) for i in ids])
    write_csv(df, path, float_format="%.6g")


# --- synthetic sample --------------------------------------------------------------------------
# "Birds": a body shape and a wing-bar colour per class, at random places, sizes and
# backgrounds; classes differ in a detail, as in fine-grained sets.

_SHAPES = ("ellipse", "box", "triangle")
_BARS = ((220, 40, 40), (40, 180, 60), (50, 80, 230), (240, 200, 30))


def _bird(label: int, rng: np.random.Generator, size: int = 160) -> Image.Image:
    shape, bar = _SHAPES[label % len(_SHAPES)], _BARS[label // len(_SHAPES) % len(_BARS)]
    img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(60, 200, size=3)))
    draw = ImageDraw.Draw(img)
    r = size * rng.uniform(0.2, 0.3)
    cx, cy = size * rng.uniform(0.35, 0.65), size * rng.uniform(0.35, 0.65)
    body = tuple(int(v) for v in rng.integers(90, 160, size=3))
    box = [cx - r, cy - 0.7 * r, cx + r, cy + 0.7 * r]
    if shape == "ellipse":
        draw.ellipse(box, fill=body)
    elif shape == "box":
        draw.rectangle(box, fill=body)
    else:
        draw.polygon([(cx - r, cy + 0.7 * r), (cx + r, cy + 0.7 * r), (cx, cy - 0.9 * r)], fill=body)
    draw.rectangle([cx - 0.6 * r, cy - 0.12 * r, cx + 0.6 * r, cy + 0.12 * r], fill=bar)
    draw.ellipse([cx + 0.7 * r, cy - 1.1 * r, cx + 1.2 * r, cy - 0.6 * r], fill=body)  # head
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0, 6, size=(size, size, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def write_sample(root: str | Path, *, classes: int, per_class: int, test: int, layout: str,
                 seed: int) -> None:
    """A deterministic synthetic set at `root`: `layout: folders` (train/<class>/) or `csv`
    (labels.csv with a group column: the 'site' each image was taken at)."""
    if layout not in ("folders", "csv"):
        raise InputError(f"params.yaml: sample.folders.layout={layout!r} must be folders or csv")
    if not 2 <= classes <= len(_SHAPES) * len(_BARS):
        raise InputError(f"params.yaml: sample.folders.classes={classes} must be 2..{len(_SHAPES) * len(_BARS)}")
    rng = np.random.default_rng(seed)
    names = [f"species_{k:02d}" for k in range(classes)]
    with atomic_dir(root) as tmp:
        rows = []
        for k, name in enumerate(names):
            folder = tmp / "train" / name
            folder.mkdir(parents=True)
            for n in range(per_class):
                _bird(k, rng).save(folder / f"{name}_{n:03d}.jpg", quality=90)
                rows.append((f"train/{name}/{name}_{n:03d}.jpg", name, f"site{n % 4}"))
        (tmp / "test").mkdir()
        for n in range(test):
            _bird(int(rng.integers(0, classes)), rng).save(tmp / "test" / f"t{n:04d}.jpg", quality=90)
        if layout == "csv":
            write_csv(pd.DataFrame(rows, columns=["image", "label", "group"]), tmp / "labels.csv")
