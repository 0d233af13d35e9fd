"""Files that hold tensors: a fold's model checkpoint and, through `state`, its resume state.

Both hold tensors and plain data only and are read with `torch.load(weights_only=True)`, so a
file received from someone else cannot run code. Both are written atomically and fsynced: a
power loss leaves the previous file or the new one, never a truncated one; a resume file that
cannot be read anyway (an older format, a damaged disk) is reported and ignored, since it only
saves time.
"""
from __future__ import annotations

from pathlib import Path

import torch

from foldwise.errors import InputError
from foldwise.files import atomic_path


def save(obj, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(obj, f)


def load(path: str | Path):
    if Path(path).stat().st_size == 0:  # what a broken cache link leaves (docs/scaling.md)
        raise InputError(f"{path} is empty (0 bytes); run `dvc checkout --relink` or rerun the "
                         "stage that wrote it")
    return torch.load(path, map_location="cpu", weights_only=True)
