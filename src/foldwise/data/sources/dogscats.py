"""Dogs vs. Cats Redux, read and written as the competition ships it.

    root/train/cat.0.jpg ... dog.12499.jpg   (label in the file name; sizes vary)
    root/test/1.jpg ... 12500.jpg
Submission: `id,label`, label = P(dog), ids in numeric order.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from foldwise.errors import InputError
from foldwise.files import atomic_dir, write_csv
from foldwise.data.sources import Dataset, listed_inside

CLASSES = ("cat", "dog")
TRAIN_NAME = re.compile(r"^(cat|dog)\.(\d+)\.jpg$")
TEST_NAME = re.compile(r"^(\d+)\.jpg$")


def read(root: str | Path) -> Dataset:
    root = Path(root)
    train_dir, test_dir = root / "train", root / "test"
    if not train_dir.is_dir():
        raise InputError(f"{train_dir}: not found (expected the dogs-vs-cats layout under {root})")
    train_files = listed_inside(root, sorted(p for p in train_dir.iterdir() if p.is_file()))
    if not train_files:
        raise InputError(f"{train_dir}: no training images")
    labels = []
    for p in train_files:
        m = TRAIN_NAME.match(p.name)
        if not m:
            raise InputError(f"{p}: file name fits neither cat.<n>.jpg nor dog.<n>.jpg")
        labels.append(CLASSES.index(m.group(1)))
    test_files = listed_inside(root, sorted((p for p in test_dir.iterdir() if p.is_file()),
                                            key=lambda p: p.name)) if test_dir.is_dir() else []
    if not test_files:
        raise InputError(f"{test_dir}: no test images found")
    for p in test_files:
        if not TEST_NAME.match(p.name):
            raise InputError(f"{p}: test file name is not <n>.jpg")
    test_files.sort(key=lambda p: int(p.stem))
    train = pd.DataFrame({"id": [p.name for p in train_files], "path": [str(p) for p in train_files],
                          "label": labels, "group": None})
    test = pd.DataFrame({"id": [p.name for p in test_files], "path": [str(p) for p in test_files]})
    return Dataset(train=train, test=test, classes=CLASSES, task="classification", hflip_safe=True)


def write_submission(ids, probs: np.ndarray, meta: dict, path: str | Path) -> None:
    """`id,label` with the probability of dog, ids in numeric order."""
    dog = list(meta["classes"]).index("dog")
    df = pd.DataFrame({"id": [int(Path(str(i)).stem) for i in ids],
                       "label": np.asarray(probs, dtype=np.float64)[:, dog]})
    write_csv(df.sort_values("id"), path, float_format="%.6g")


# --- synthetic sample --------------------------------------------------------------------------
# A face on a random background, in random colours and sizes: cats have pointed ears and
# whiskers, dogs floppy ears hanging beside the head and a tongue.

def _render(kind: str, rng: np.random.Generator) -> Image.Image:
    w, h = int(rng.integers(160, 480)), int(rng.integers(160, 480))
    bg = tuple(int(v) for v in rng.integers(0, 256, size=3))
    img = Image.new("RGB", (w, h), bg)
    draw = ImageDraw.Draw(img)
    r = min(w, h) * rng.uniform(0.22, 0.32)
    cx, cy = w * rng.uniform(0.4, 0.6), h * rng.uniform(0.45, 0.6)
    fur = tuple(int(v) for v in rng.integers(40, 230, size=3))
    if kind == "cat":
        for side in (-1, 1):
            draw.polygon([(cx + side * 0.9 * r, cy - 0.3 * r), (cx + side * 0.8 * r, cy - 1.5 * r),
                          (cx + side * 0.2 * r, cy - 0.85 * r)], fill=fur)
    else:
        for side in (-1, 1):
            draw.ellipse([cx + side * 0.95 * r - 0.3 * r, cy - 0.7 * r,
                          cx + side * 0.95 * r + 0.3 * r, cy + 0.8 * r], fill=tuple(v // 2 for v in fur))
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fur)
    for side in (-1, 1):
        draw.ellipse([cx + side * 0.4 * r - 0.12 * r, cy - 0.3 * r, cx + side * 0.4 * r + 0.12 * r,
                      cy - 0.06 * r], fill=(10, 10, 10))
    draw.ellipse([cx - 0.15 * r, cy + 0.1 * r, cx + 0.15 * r, cy + 0.3 * r], fill=(30, 20, 20))
    if kind == "cat":
        for side in (-1, 1):
            for dy in (-0.05, 0.1, 0.25):
                draw.line([(cx + side * 0.2 * r, cy + 0.25 * r), (cx + side * 1.3 * r, cy + (0.25 + dy) * r)],
                          fill=(250, 250, 250), width=max(1, int(r / 30)))
    else:
        draw.ellipse([cx - 0.18 * r, cy + 0.45 * r, cx + 0.18 * r, cy + 0.95 * r], fill=(230, 60, 90))
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0, 8, size=(h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def write_sample(root: str | Path, *, per_class: int, test: int, seed: int) -> None:
    """A deterministic synthetic set in the dogs-vs-cats layout at `root` (replaced whole)."""
    rng = np.random.default_rng(seed)
    with atomic_dir(root) as tmp:
        (tmp / "train").mkdir()
        (tmp / "test").mkdir()
        for kind in CLASSES:
            for n in range(per_class):
                _render(kind, rng).save(tmp / "train" / f"{kind}.{n}.jpg", quality=90)
        for n in range(1, test + 1):
            _render(CLASSES[int(rng.integers(0, 2))], rng).save(tmp / "test" / f"{n}.jpg", quality=90)
