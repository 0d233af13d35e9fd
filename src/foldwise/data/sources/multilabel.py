"""Multi-label images (Planet's "Understanding the Amazon from Space", Human Protein Atlas):
any number of tags per image.

    root/labels.csv           image_name,tags[,group]   (tags space-separated: "clear primary")
    root/tags.txt             optional: the known tags, one a line; a tag not listed is an error
    root/train/<image_name>   the image (".jpg" added when the name has no suffix)
    root/test/<image>         images to predict
Submission: `image_name,tags`, each test image's predicted tags space-separated (Planet's),
image_name without its suffix.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from foldwise.data.sources import Dataset, inside, listed_inside, read_table
from foldwise.errors import InputError
from foldwise.files import atomic_dir, write_csv

SUFFIXES = {".jpg", ".jpeg", ".png"}


def _file_name(name: str) -> str:
    return name if Path(name).suffix.lower() in SUFFIXES else f"{name}.jpg"


def _known_tags(root: Path) -> list[str] | None:
    path = root / "tags.txt"
    if not path.is_file():
        return None
    return [t.strip() for t in path.read_text().splitlines() if t.strip()]


def _check_rows(csv: Path, table: pd.DataFrame, known: list[str] | None) -> list[list[str]]:
    """Each row's tags, with the first empty, unknown or duplicated entry named by line."""
    dup = table["image_name"].duplicated(keep=False)
    if dup.any():
        lines = [int(i) + 2 for i in np.flatnonzero(dup.to_numpy())][:5]
        raise InputError(f"{csv}, lines {lines}: image {table['image_name'][dup].iloc[0]!r} listed twice")
    rows = []
    for i, (name, tags) in enumerate(zip(table["image_name"], table["tags"])):
        split = tags.split()
        if not split:
            raise InputError(f"{csv}, line {i + 2}: image {name!r} has no tags")
        unknown = [t for t in split if known is not None and t not in known]
        if unknown:
            raise InputError(f"{csv}, line {i + 2}: unknown tag {unknown[0]!r} (tags.txt lists "
                             f"{', '.join(known or ())})")
        rows.append(split)
    return rows


def read(root: str | Path) -> Dataset:
    root = Path(root)
    csv = root / "labels.csv"
    table = read_table(csv, ("image_name", "tags"), "image_name,tags[,group] CSV")
    known = _known_tags(root)
    row_tags = _check_rows(csv, table, known)
    tags = known or sorted({t for r in row_tags for t in r})
    paths = []
    for i, name in enumerate(table["image_name"]):
        path = inside(root, f"train/{_file_name(name)}", f"{csv}, line {i + 2}")
        if not path.is_file():
            raise InputError(f"{csv}, line {i + 2}: image {path} is listed but missing")
        paths.append(str(path))
    targets = np.array([[t in set(r) for t in tags] for r in row_tags], dtype=np.float32)
    train = pd.DataFrame({"id": table["image_name"], "path": paths,
                          "group": table["group"] if "group" in table.columns else None})
    test_dir = root / "test"
    files = sorted(p for p in test_dir.iterdir() if p.suffix.lower() in SUFFIXES) \
        if test_dir.is_dir() else []
    if not files:
        raise InputError(f"{test_dir}: no test images found")
    files = listed_inside(root, files)
    test = pd.DataFrame({"id": [p.stem for p in files], "path": [str(p) for p in files]})
    return Dataset(train=train, test=test, task="multilabel", hflip_safe=True, targets=targets,
                   target_names=tuple(tags))


def write_submission(ids, decisions: np.ndarray, meta: dict, path: str | Path) -> None:
    """`decisions`: 1 where a tag is predicted (the task's postprocess), in tag order."""
    tags = list(meta["target_names"])
    rows = [" ".join(t for t, on in zip(tags, row) if on > 0.5) for row in np.asarray(decisions)]
    write_csv(pd.DataFrame({"image_name": [Path(str(i)).stem for i in ids], "tags": rows}), path)


# --- synthetic sample --------------------------------------------------------------------------
# Each tag is a mark of its own (shape and colour) somewhere on a noisy background; an image
# carries every mark of its tags, so the tags are independent, as in satellite scenes.

TAGS = ("clear", "cloudy", "primary", "water", "road", "agriculture", "habitation", "haze")
_MARKS = (("disc", (220, 40, 40)), ("box", (40, 180, 60)), ("triangle", (50, 80, 230)),
          ("hbar", (240, 200, 30)), ("vbar", (200, 60, 200)), ("ring", (40, 200, 210)),
          ("cross", (250, 250, 250)), ("dots", (250, 140, 20)))


def _mark(draw: ImageDraw.ImageDraw, kind: str, colour, cx: float, cy: float, r: float) -> None:
    if kind == "disc":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif kind == "box":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif kind == "triangle":
        draw.polygon([(cx - r, cy + r), (cx + r, cy + r), (cx, cy - r)], fill=colour)
    elif kind == "hbar":
        draw.rectangle([cx - 2 * r, cy - r / 3, cx + 2 * r, cy + r / 3], fill=colour)
    elif kind == "vbar":
        draw.rectangle([cx - r / 3, cy - 2 * r, cx + r / 3, cy + 2 * r], fill=colour)
    elif kind == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=max(2, int(r / 3)))
    elif kind == "cross":
        draw.line([cx - r, cy - r, cx + r, cy + r], fill=colour, width=3)
        draw.line([cx - r, cy + r, cx + r, cy - r], fill=colour, width=3)
    else:
        for dx in (-r, 0, r):
            draw.ellipse([cx + dx - 2, cy - 2, cx + dx + 2, cy + 2], fill=colour)


def _scene(present: np.ndarray, rng: np.random.Generator, size: int = 64) -> Image.Image:
    img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(70, 130, size=3)))
    draw = ImageDraw.Draw(img)
    for k in np.flatnonzero(present):
        kind, colour = _MARKS[k]
        r = size * rng.uniform(0.08, 0.14)
        _mark(draw, kind, colour, size * rng.uniform(0.25, 0.75), size * rng.uniform(0.25, 0.75), r)
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0, 8, size=(size, size, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _tags_of(rng: np.random.Generator, n_tags: int) -> np.ndarray:
    present = rng.random(n_tags) < 0.35
    if not present.any():
        present[rng.integers(n_tags)] = True
    return present


def write_sample(root: str | Path, *, train: int, test: int, tags: int, seed: int) -> None:
    """A deterministic synthetic set at `root`: `train` labelled scenes (with a `group`, the
    site each was taken at), `test` unlabelled ones, `tags` of the TAGS listed in tags.txt."""
    if not 2 <= tags <= len(TAGS):
        raise InputError(f"params.yaml: sample.multilabel.tags={tags} must be 2..{len(TAGS)}")
    rng = np.random.default_rng(seed)
    names = TAGS[:tags]
    with atomic_dir(root) as tmp:
        (tmp / "train").mkdir()
        (tmp / "test").mkdir()
        rows = []
        for n in range(train):
            present = _tags_of(rng, tags)
            _scene(present, rng).save(tmp / "train" / f"train_{n}.jpg", quality=92)
            rows.append((f"train_{n}", " ".join(t for t, on in zip(names, present) if on),
                         f"site{n % 8}"))
        for n in range(test):
            _scene(_tags_of(rng, tags), rng).save(tmp / "test" / f"test_{n}.jpg", quality=92)
        write_csv(pd.DataFrame(rows, columns=["image_name", "tags", "group"]), tmp / "labels.csv")
        (tmp / "tags.txt").write_text("\n".join(names) + "\n")
