"""Decode every image once into a uint8 array on disk that training memory-maps.

JPEG decoding dominates CPU time, so images are decoded at reduced size (libjpeg's 1/2, 1/4,
1/8 DCT scaling through PIL's `draft`) whenever the target is at most half the source, then
cropped and resized in one step. The same function serves `predict`, so that train and
predict time see identical pixels.
"""
from __future__ import annotations

import math
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from foldwise.errors import InputError
from foldwise.files import atomic_path

FULL_FRAME = (0.0, 0.0, 1.0, 1.0)


def load_image(path: str | Path, height: int, width: int, crop=FULL_FRAME,
               mode: str = "RGB") -> np.ndarray:
    """Decode, crop (fractions left, top, right, bottom of the frame) and resize to H x W."""
    left, top, right, bottom = crop
    try:
        with Image.open(path) as im:
            full_w, full_h = im.size
            # the smallest decode that still covers the target inside the crop box
            need = (math.ceil(width / (right - left)), math.ceil(height / (bottom - top)))
            im.draft(mode, need)
            sx, sy = im.size[0] / full_w, im.size[1] / full_h
            box = (left * full_w * sx, top * full_h * sy, right * full_w * sx, bottom * full_h * sy)
            out = im.convert(mode).resize((width, height), Image.BILINEAR, box=box)
            arr = np.asarray(out, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, SyntaxError) as err:
        raise InputError(f"{path}: cannot decode image ({err})") from err
    return arr if arr.ndim == 3 else arr[:, :, None]


def load_truth(processed: str | Path) -> np.ndarray:
    """What the training images are labelled with, in training order: regression targets
    (`targets.npy`, NaN where missing) or class indices (`train.csv`'s label column)."""
    processed = Path(processed)
    targets = processed / "targets.npy"
    if targets.exists():
        return np.load(targets).astype(np.float64)
    return pd.read_csv(processed / "train.csv", usecols=["label"])["label"].to_numpy()


def resize_array(pixels: np.ndarray, height: int, width: int, crop=FULL_FRAME,
                 mode: str = "RGB") -> np.ndarray:
    """The same crop and resize as `load_image`, for pixels that ship inside a table."""
    im = Image.fromarray(np.asarray(pixels, dtype=np.uint8).squeeze())
    full_w, full_h = im.size
    left, top, right, bottom = crop
    box = (left * full_w, top * full_h, right * full_w, bottom * full_h)
    arr = np.asarray(im.convert(mode).resize((width, height), Image.BILINEAR, box=box), dtype=np.uint8)
    return arr if arr.ndim == 3 else arr[:, :, None]


def _load_chunk(args):
    items, height, width, crop, mode = args
    load = resize_array if len(items) and isinstance(items[0], np.ndarray) else load_image
    return np.stack([load(p, height, width, crop, mode) for p in items])


def check_crop(crop) -> tuple:
    crop = tuple(float(v) for v in (crop or FULL_FRAME))
    if len(crop) != 4 or not (0 <= crop[0] < crop[2] <= 1 and 0 <= crop[1] < crop[3] <= 1):
        raise InputError(f"params.yaml: preprocess.crop={list(crop)} must be [left, top, right, "
                         f"bottom] fractions with 0 <= left < right <= 1 and 0 <= top < bottom <= 1")
    return crop


def build_cache(paths, out: str | Path, height: int, width: int, crop=FULL_FRAME,
                mode: str = "RGB", workers: int = 2, chunk: int = 32) -> dict:
    """Decode `paths` (image files, or pixel arrays) into an (N, H, W, C) uint8 .npy at `out`;
    return per-channel mean/std.

    The array is written under a temporary name and renamed when complete. Statistics are of
    pixel values scaled to [0, 1].
    """
    paths = list(paths) if isinstance(paths, np.ndarray) else [str(p) for p in paths]
    channels = 1 if mode == "L" else 3
    jobs = [(paths[i:i + chunk], height, width, crop, mode) for i in range(0, len(paths), chunk)]
    total = np.zeros(channels)
    total_sq = np.zeros(channels)
    with atomic_path(out) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                          shape=(len(paths), height, width, channels))
        with Pool(max(1, workers)) as pool:
            start = 0
            for block in pool.imap(_load_chunk, jobs):
                array[start:start + len(block)] = block
                pixels = block.reshape(-1, channels).astype(np.float64) / 255.0
                total += pixels.sum(0)
                total_sq += (pixels ** 2).sum(0)
                start += len(block)
        array.flush()
        del array
    count = max(1, len(paths) * height * width)
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 1e-12))
    return {"mean": mean.tolist(), "std": std.tolist(), "count": len(paths)}
