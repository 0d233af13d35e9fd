"""Data sources: each reads one competition's on-disk layout and writes its submission format.

A source is a module with
  - `read(root) -> Dataset`: validate the layout and list the images (errors name file and row);
  - `write_sample(root, **options)`: a small deterministic synthetic set in the same layout;
  - `write_submission(ids, preds, classes, path)`: the file the competition accepts.
Adding a source means adding a module and one line in `SOURCES`; training never looks here.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

import pandas as pd

from foldwise.errors import InputError

SOURCES = {
    "statefarm": "foldwise.sources.statefarm",
}


@dataclass(frozen=True)
class Dataset:
    """What a source found: images with labels and groups, test images, and task facts."""

    train: pd.DataFrame  # columns: id, path, label (int index into classes), group
    test: pd.DataFrame  # columns: id, path
    classes: tuple[str, ...]
    task: str = "classification"
    hflip_safe: bool = True  # False where a mirror image changes the label (left/right classes)


def get_source(name: str) -> ModuleType:
    if name not in SOURCES:
        raise InputError(f"params.yaml: data.source={name!r} is not one of {sorted(SOURCES)}")
    return importlib.import_module(SOURCES[name])
