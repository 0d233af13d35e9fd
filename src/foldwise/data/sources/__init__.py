"""Data sources: each reads one competition's on-disk layout and writes its submission format.

A source is a module with
  - `read(root) -> Dataset`: validate the layout and list the images (errors name file and row);
  - `write_sample(root, **options)`: a small deterministic synthetic set in the same layout;
  - `write_submission(ids, preds, dataset_meta, path)`: the file the competition accepts, where
    `dataset_meta` is what preprocess recorded (classes, target names, the source's root).
Adding a source means adding a module and one line in `SOURCES`; training never looks here.
"""
from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd

from foldwise.errors import InputError

SOURCES = {
    "statefarm": "foldwise.data.sources.statefarm",
    "dogscats": "foldwise.data.sources.dogscats",
    "keypoints": "foldwise.data.sources.keypoints",
    "folders": "foldwise.data.sources.folders",
    "multilabel": "foldwise.data.sources.multilabel",
}


@dataclass(frozen=True)
class Dataset:
    """What a source found: images with labels or targets and groups, test images, task facts."""

    train: pd.DataFrame  # columns: id, group (None where there are none), path (image files),
    #                      label (classification: int index into classes)
    test: pd.DataFrame  # columns: id, path (image files)
    classes: tuple[str, ...] = ()
    task: str = "classification"
    hflip_safe: bool = True  # False where a mirror image changes the label (left/right classes)
    targets: np.ndarray | None = None  # regression: (N, T) float, NaN where a value is missing
    target_names: tuple[str, ...] = ()
    flip_pairs: tuple[tuple[int, int], ...] = ()  # target columns a mirror swaps (left <-> right)
    images: dict | None = None  # {"train", "test"}: uint8 (N, H, W[, C]) when pixels ship in a table
    image_size: tuple[int, int] | None = None  # (H, W) of the source images, for coordinate targets


def read_table(path, columns, layout: str) -> pd.DataFrame:
    """A competition CSV as strings (empty cells stay ""), with its columns and rows checked."""
    if not path.is_file():
        raise InputError(f"{path}: not found (expected the {layout} layout)")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing[:5]}; expected {', '.join(columns)[:200]}")
    if table.empty:
        raise InputError(f"{path}: no rows")
    return table


DVC_CACHE_FILE = re.compile(r"/files/md5/[0-9a-f]{2}/[0-9a-f]{30,}$")


def inside(root: Path, relative: str, where: str) -> Path:
    """`root / relative`, refused unless it stays inside `root`: an absolute path, a `..` that
    climbs out, or a symlink pointing outside the data set would let a labels file read any
    file on the machine. `where` names the file and row (or the listed file) at fault. The one
    outside target allowed is a file of a DVC cache (DVC links tracked data to its cache, by
    symlink where the cache is on another filesystem)."""
    if Path(relative).is_absolute():
        raise InputError(f"{where}: image path {relative!r} is absolute; paths must be relative "
                         f"to the data root {root}")
    path = root / relative
    base, real = root.resolve(), path.resolve()
    if real != base and base not in real.parents and not DVC_CACHE_FILE.search(str(real)):
        raise InputError(f"{where}: image path {relative!r} leads to {real}, outside the data "
                         f"root {base}")
    return path


def listed_inside(root: Path, files) -> list[Path]:
    """Files found by listing a folder of `root`, each checked with `inside` (symlinks)."""
    return [inside(root, str(p.relative_to(root)), str(p)) for p in files]


def get_source(name: str) -> ModuleType:
    if name not in SOURCES:
        raise InputError(f"params.yaml: data.source={name!r} is not one of {sorted(SOURCES)}")
    return importlib.import_module(SOURCES[name])
