"""Kaggle Facial Keypoints Detection, read and written as the competition ships it.

    root/training.csv      30 coordinate columns (empty where missing) + Image (96*96 grey values)
    root/test.csv          ImageId,Image
    root/IdLookupTable.csv RowId,ImageId,FeatureName,Location   (absent in the course variant)
Submission: `RowId,Location` through the lookup table; without one (course variant), one row of
30 coordinates per test image.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from foldwise.errors import InputError
from foldwise.files import atomic_dir, write_csv
from foldwise.data.sources import Dataset, read_table

POINTS = ("left_eye_center", "right_eye_center", "left_eye_inner_corner", "left_eye_outer_corner",
          "right_eye_inner_corner", "right_eye_outer_corner", "left_eyebrow_inner_end",
          "left_eyebrow_outer_end", "right_eyebrow_inner_end", "right_eyebrow_outer_end", "nose_tip",
          "mouth_left_corner", "mouth_right_corner", "mouth_center_top_lip", "mouth_center_bottom_lip")
COLUMNS = tuple(f"{p}_{axis}" for p in POINTS for axis in ("x", "y"))
SIDE = 96
LAYOUT = "facial keypoints"


def _flip_pairs() -> tuple:
    pairs = []
    for k, name in enumerate(POINTS):
        if "left" in name:
            other = POINTS.index(name.replace("left", "right"))
            pairs += [(2 * k, 2 * other), (2 * k + 1, 2 * other + 1)]
    return tuple(pairs)


FLIP_PAIRS = _flip_pairs()


def _pixels(csv: Path, table: pd.DataFrame) -> np.ndarray:
    images: np.ndarray = np.empty((len(table), SIDE, SIDE), dtype=np.uint8)
    for i, text in enumerate(table["Image"]):
        try:
            values = np.array(str(text).split(), dtype=np.float64)
        except ValueError as err:
            raise InputError(f"{csv}, line {i + 2}: Image holds a non-numeric value ({err})") from None
        if values.size != SIDE * SIDE:
            raise InputError(f"{csv}, line {i + 2}: Image has {values.size} values, expected "
                             f"{SIDE * SIDE} ({SIDE}x{SIDE})")
        if values.min() < 0 or values.max() > 255:
            raise InputError(f"{csv}, line {i + 2}: Image values must lie in 0..255")
        images[i] = values.reshape(SIDE, SIDE).astype(np.uint8)
    return images


def read(root: str | Path) -> Dataset:
    root = Path(root)
    train_csv, test_csv = root / "training.csv", root / "test.csv"
    table = read_table(train_csv, COLUMNS + ("Image",), LAYOUT)
    targets = np.full((len(table), len(COLUMNS)), np.nan)
    for j, col in enumerate(COLUMNS):
        for i, cell in enumerate(table[col]):
            if cell.strip() == "":
                continue  # a missing coordinate: masked in the loss, never filled
            try:
                targets[i, j] = float(cell)
            except ValueError:
                raise InputError(f"{train_csv}, line {i + 2}, column {col}: {cell!r} is not a number") \
                    from None
    test = read_table(test_csv, ("ImageId", "Image"), LAYOUT)
    lookup = root / "IdLookupTable.csv"
    if lookup.exists():
        ids = read_table(lookup, ("RowId", "ImageId", "FeatureName"), LAYOUT)
        unknown = ids.loc[~ids["FeatureName"].isin(COLUMNS), "FeatureName"]
        if len(unknown):
            raise InputError(f"{lookup}, line {unknown.index[0] + 2}: unknown FeatureName {unknown.iloc[0]!r}")
        absent = ids.loc[~ids["ImageId"].isin(test["ImageId"]), "ImageId"]
        if len(absent):
            raise InputError(f"{lookup}, line {absent.index[0] + 2}: ImageId {absent.iloc[0]} is not in {test_csv}")
    train = pd.DataFrame({"id": [str(i) for i in range(len(table))], "group": None})
    return Dataset(train=train, test=pd.DataFrame({"id": test["ImageId"].astype(str)}),
                   task="keypoints", targets=targets, target_names=COLUMNS, flip_pairs=FLIP_PAIRS,
                   images={"train": _pixels(train_csv, table), "test": _pixels(test_csv, test)},
                   image_size=(SIDE, SIDE), hflip_safe=True)


def write_submission(ids, coords: np.ndarray, meta: dict, path: str | Path) -> None:
    """`RowId,Location` through IdLookupTable.csv when the data set has one; else
    `ImageId` and the 30 coordinates, one row per test image."""
    coords = np.asarray(coords, dtype=np.float64)
    ids = [str(i) for i in ids]
    lookup = Path(meta.get("root", "")) / "IdLookupTable.csv"
    if lookup.is_file():
        table = pd.read_csv(lookup, dtype={"ImageId": str})
        row = {img: i for i, img in enumerate(ids)}
        col = {name: j for j, name in enumerate(COLUMNS)}
        loc = coords[[row[i] for i in table["ImageId"]], [col[f] for f in table["FeatureName"]]]
        write_csv(pd.DataFrame({"RowId": table["RowId"], "Location": loc}), path, float_format="%.4f")
    else:
        df = pd.DataFrame(coords, columns=list(COLUMNS))
        df.insert(0, "ImageId", ids)
        write_csv(df, path, float_format="%.4f")


# --- synthetic sample --------------------------------------------------------------------------
# A grey face at a random position, size and tilt; its 15 points follow from a canonical face
# through the same transform, so the keypoints are exactly where the features are drawn.

_CANON = {  # in face units: x to the image's right, y down; "left" is the person's left
    "left_eye_center": (0.38, -0.2), "right_eye_center": (-0.38, -0.2),
    "left_eye_inner_corner": (0.2, -0.2), "left_eye_outer_corner": (0.56, -0.2),
    "right_eye_inner_corner": (-0.2, -0.2), "right_eye_outer_corner": (-0.56, -0.2),
    "left_eyebrow_inner_end": (0.16, -0.42), "left_eyebrow_outer_end": (0.62, -0.45),
    "right_eyebrow_inner_end": (-0.16, -0.42), "right_eyebrow_outer_end": (-0.62, -0.45),
    "nose_tip": (0.0, 0.12), "mouth_left_corner": (0.3, 0.45), "mouth_right_corner": (-0.3, 0.45),
    "mouth_center_top_lip": (0.0, 0.38), "mouth_center_bottom_lip": (0.0, 0.55),
}
_KEEP_WHEN_SPARSE = ("left_eye_center", "right_eye_center", "nose_tip", "mouth_center_bottom_lip")


def _face(rng: np.random.Generator):
    scale = rng.uniform(26, 36)
    cx, cy = 48 + rng.uniform(-9, 9), 50 + rng.uniform(-7, 7)
    a = np.radians(rng.uniform(-12, 12))
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    pts = {k: np.array([cx, cy]) + scale * rot @ np.array(v) for k, v in _CANON.items()}
    img = Image.new("L", (SIDE, SIDE), int(rng.integers(20, 90)))
    draw = ImageDraw.Draw(img)
    skin = int(rng.integers(140, 220))
    draw.ellipse([cx - 0.85 * scale, cy - 1.0 * scale, cx + 0.85 * scale, cy + 0.95 * scale], fill=skin)
    dark = int(rng.integers(0, 50))
    for side in ("left", "right"):
        e = pts[f"{side}_eye_center"]
        draw.ellipse([e[0] - 0.1 * scale, e[1] - 0.07 * scale, e[0] + 0.1 * scale, e[1] + 0.07 * scale], fill=dark)
        draw.line([tuple(pts[f"{side}_eye_inner_corner"]), tuple(pts[f"{side}_eye_outer_corner"])], fill=dark, width=1)
        draw.line([tuple(pts[f"{side}_eyebrow_inner_end"]), tuple(pts[f"{side}_eyebrow_outer_end"])],
                  fill=dark, width=2)
    n = pts["nose_tip"]
    draw.ellipse([n[0] - 3, n[1] - 3, n[0] + 3, n[1] + 3], fill=max(0, skin - 70))
    draw.polygon([tuple(pts["mouth_left_corner"]), tuple(pts["mouth_center_top_lip"]),
                  tuple(pts["mouth_right_corner"]), tuple(pts["mouth_center_bottom_lip"])], fill=max(0, skin - 100))
    arr = np.asarray(img, dtype=np.float64) + rng.normal(0, 6, size=(SIDE, SIDE))
    coords = np.concatenate([pts[p] for p in POINTS])
    return np.clip(arr, 0, 255).astype(np.uint8), coords


def _image_text(pixels: np.ndarray) -> str:
    return " ".join(map(str, pixels.reshape(-1).tolist()))


def write_sample(root: str | Path, *, train: int, test: int, variant: str,
                 sparse_fraction: float, seed: int) -> None:
    """A deterministic synthetic set at `root`. `variant: kaggle` leaves only 4 of the 15 points
    on `sparse_fraction` of the rows (empty cells) and writes IdLookupTable.csv; `course` has
    every point and no lookup table."""
    if variant not in ("kaggle", "course"):
        raise InputError(f"params.yaml: sample.keypoints.variant={variant!r} must be kaggle or course")
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(train):
        pixels, coords = _face(rng)
        cells = [f"{v:.4f}" for v in coords]
        if variant == "kaggle" and rng.random() < sparse_fraction:
            cells = [c if COLUMNS[j].rsplit("_", 1)[0] in _KEEP_WHEN_SPARSE else "" for j, c in enumerate(cells)]
        rows.append(cells + [_image_text(pixels)])
    tests = [(str(i + 1), _image_text(_face(rng)[0])) for i in range(test)]
    with atomic_dir(root) as tmp:
        write_csv(pd.DataFrame(rows, columns=list(COLUMNS) + ["Image"]), tmp / "training.csv")
        write_csv(pd.DataFrame(tests, columns=["ImageId", "Image"]), tmp / "test.csv")
        if variant == "kaggle":
            lookup = []
            for image_id, _ in tests:
                wanted = COLUMNS if int(image_id) % 2 else [c for c in COLUMNS
                                                             if c.rsplit("_", 1)[0] in _KEEP_WHEN_SPARSE]
                lookup += [(image_id, f) for f in wanted]
            write_csv(pd.DataFrame({"RowId": range(1, len(lookup) + 1), "ImageId": [i for i, _ in lookup],
                                    "FeatureName": [f for _, f in lookup], "Location": ""}),
                      tmp / "IdLookupTable.csv")
