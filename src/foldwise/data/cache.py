"""Decode every image once into a uint8 array on disk that training memory-maps.

JPEG decoding dominates CPU time, so images are decoded at reduced size (libjpeg's 1/2, 1/4,
1/8 DCT scaling through PIL's `draft`) whenever the target is at most half the source, then
cropped and resized in one step. The same function serves `predict`, so that train and
predict time see identical pixels.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
from dataclasses import dataclass
from multiprocessing import Pool, get_context
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from foldwise.errors import InputError
from foldwise.files import atomic_path

FULL_FRAME = (0.0, 0.0, 1.0, 1.0)
MAX_PIXELS = 100_000_000  # a 10,000 x 10,000 photo; a file claiming more is refused unread
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decode:
    """How each image becomes the cache's pixels (size, crop as fractions left, top, right,
    bottom of the frame, PIL mode), and how many processes decode blocks of `chunk` images."""
    height: int
    width: int
    crop: tuple = FULL_FRAME
    mode: str = "RGB"
    workers: int = 2
    chunk: int = 32

    @classmethod
    def of(cls, preprocess: dict, workers: int = 2, chunk: int = 32) -> Decode:
        """From the decoding settings meta.json and an export record (height, width, crop, mode)."""
        return cls(int(preprocess["height"]), int(preprocess["width"]), tuple(preprocess["crop"]),
                   str(preprocess["mode"]), workers, chunk)

    def record(self) -> dict:
        """What predict must repeat, as meta.json keeps it."""
        return {"height": self.height, "width": self.width, "crop": list(self.crop), "mode": self.mode}


def load_image(path: str | Path, height: int, width: int, crop=FULL_FRAME,
               mode: str = "RGB") -> np.ndarray:
    """Decode, crop (fractions left, top, right, bottom of the frame) and resize to H x W."""
    left, top, right, bottom = crop
    try:
        with Image.open(path) as im:
            full_w, full_h = im.size
            if full_w * full_h > MAX_PIXELS:  # a decompression bomb: a tiny file, gigapixels
                raise InputError(f"{path}: image claims {full_w} x {full_h} = {full_w * full_h:,} "
                                 f"pixels, more than {MAX_PIXELS:,}; refused before decoding")
            # the smallest decode that still covers the target inside the crop box
            need = (math.ceil(width / (right - left)), math.ceil(height / (bottom - top)))
            im.draft(mode, need)
            sx, sy = im.size[0] / full_w, im.size[1] / full_h
            box = (left * full_w * sx, top * full_h * sy, right * full_w * sx, bottom * full_h * sy)
            out = im.convert(mode).resize((width, height), Image.BILINEAR, box=box)
            arr = np.asarray(out, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, SyntaxError, Image.DecompressionBombError) as err:
        raise InputError(f"{path}: cannot decode image ({err})") from None
    return arr if arr.ndim == 3 else arr[:, :, None]


def read_meta(processed: str | Path) -> dict:
    """The preprocess cache's meta.json: the source, the task and its classes or targets, the
    image size and channel statistics (what every later stage builds its task from)."""
    path = Path(processed) / "meta.json"
    if not path.is_file():
        raise InputError(f"{path}: not found; the preprocess stage writes it (dvc repro preprocess)")
    return json.loads(path.read_text())


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
    items, decode, stats = args
    load = resize_array if len(items) and isinstance(items[0], np.ndarray) else load_image
    block = np.stack([load(p, decode.height, decode.width, decode.crop, decode.mode) for p in items])
    if not stats:
        return block, None
    # exact integer sums, in the worker: the main process only copies blocks into the map
    pixels = block.reshape(-1, block.shape[-1])
    return block, (pixels.sum(0, dtype=np.uint64), np.square(pixels, dtype=np.uint32).sum(0, dtype=np.uint64))


def decode_scale(path, height: int, width: int, crop=FULL_FRAME) -> float:
    """The JPEG reduced-size decode `load_image` gets for this image (1, 1/2, 1/4 or 1/8)."""
    left, top, right, bottom = crop
    with Image.open(path) as im:
        full = im.size[0]
        im.draft(im.mode, (math.ceil(width / (right - left)), math.ceil(height / (bottom - top))))
        return im.size[0] / full


def decode_chunks(paths, decode: Decode):
    """Decoded uint8 blocks of `decode.chunk` images, in order, decoded by `decode.workers`
    processes ahead of the consumer (which predicts meanwhile)."""
    jobs = [(paths[i:i + decode.chunk], decode, False) for i in range(0, len(paths), decode.chunk)]
    with get_context(pool_start_method()).Pool(max(1, decode.workers)) as pool:
        for block, _ in pool.imap(_load_chunk, jobs):
            yield block


def pool_start_method() -> str:
    """`spawn` once this process has started CUDA (a forked child of a CUDA process cannot use
    it, and may hang or crash); `fork` otherwise, which starts workers without re-importing."""
    torch = sys.modules.get("torch")
    return "spawn" if torch is not None and torch.cuda.is_initialized() else "fork"


def check_crop(crop) -> tuple:
    crop = tuple(float(v) for v in (crop or FULL_FRAME))
    if len(crop) != 4 or not (0 <= crop[0] < crop[2] <= 1 and 0 <= crop[1] < crop[3] <= 1):
        raise InputError(f"params.yaml: preprocess.crop={list(crop)} must be [left, top, right, "
                         f"bottom] fractions with 0 <= left < right <= 1 and 0 <= top < bottom <= 1")
    return crop


def _reserve_map(path: Path, shape: tuple) -> np.memmap:
    """The cache's memory map, with its whole file reserved now: running out of disk is then
    an error naming the file, not a SIGBUS when a page of the map is first written."""
    nbytes = int(np.prod(shape))
    try:
        array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, array.offset + nbytes)
        finally:
            os.close(fd)
    except OSError as err:
        size = f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"
        raise InputError(f"{path}: cannot reserve {size} for the cache ({os.strerror(err.errno or 0)}); "
                         "free disk space or lower preprocess.height/width") from None
    return array


def build_cache(paths, out: str | Path, decode: Decode, stats: bool = True, progress=None) -> dict:
    """Decode `paths` (image files, or pixel arrays) into an (N, H, W, C) uint8 .npy at `out`;
    return per-channel mean/std (of pixel values scaled to [0, 1]) when `stats`.

    The array is written under a temporary name, block by block through a memory map (never
    whole in memory), and renamed when complete. `progress(n)` is called per decoded block.
    """
    paths = list(paths) if isinstance(paths, np.ndarray) else [str(p) for p in paths]
    height, width, chunk = decode.height, decode.width, decode.chunk
    channels = 1 if decode.mode == "L" else 3
    jobs = [(paths[i:i + chunk], decode, stats) for i in range(0, len(paths), chunk)]
    total: np.ndarray = np.zeros(channels, dtype=np.uint64)
    total_sq: np.ndarray = np.zeros(channels, dtype=np.uint64)
    with atomic_path(out) as tmp:
        array = _reserve_map(tmp, (len(paths), height, width, channels))
        with Pool(max(1, decode.workers)) as pool:
            start = 0
            for block, sums in pool.imap(_load_chunk, jobs):
                array[start:start + len(block)] = block
                if sums is not None:
                    total += sums[0]
                    total_sq += sums[1]
                start += len(block)
                if progress:
                    progress(len(block))
        array.flush()
        del array
    if not stats:
        return {"count": len(paths)}
    count = max(1, len(paths) * height * width)
    mean = total.astype(np.float64) / 255.0 / count
    std = np.sqrt(np.maximum(total_sq.astype(np.float64) / 255.0 ** 2 / count - mean ** 2, 1e-12))
    return {"mean": mean.tolist(), "std": std.tolist(), "count": len(paths)}
