"""The preprocess stage: every train and test image decoded once (`cache.build_cache`) into
memory-mappable uint8 arrays, with the tables, regression targets and what later stages need to
know of the data (`meta.json`)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
from tqdm import tqdm

from foldwise.data.cache import Decode, build_cache, check_crop, decode_scale
from foldwise.data.sources import get_source
from foldwise.files import atomic_dir, write_csv, write_json
from foldwise.params import Params


def describe(source: str, data, stats: dict, decode: Decode) -> dict:
    """meta.json: the task's facts (kind, classes or targets, mirror safety), the pixels'
    statistics and the decoding settings that predict must repeat."""
    return {"source": source, "task": data.task, "classes": list(data.classes),
            "target_names": list(data.target_names),
            "flip_pairs": [list(p) for p in data.flip_pairs],
            "image_size": list(data.image_size) if data.image_size else None,
            "hflip_safe": data.hflip_safe, "mean": stats["mean"], "std": stats["std"],
            **decode.record()}


def report_decode_scale(train_items, decode: Decode) -> None:
    """The JPEG reduced-size decode the first training image gets (other formats: nothing)."""
    from PIL import Image
    with Image.open(train_items.iloc[0]) as im:
        if im.format != "JPEG":
            return
    scale = decode_scale(train_items.iloc[0], decode.height, decode.width, decode.crop)
    print(f"preprocess: JPEG decoded at {scale:g} of full size"
          + ("" if scale < 1 else ": the target size needs more than half of the crop's "
             "source pixels, so reduced-size decoding cannot apply"))


@dataclass(frozen=True)
class Paths:
    root: Annotated[Path, "the data set, in data.source's layout"]
    out: Annotated[Path, "where the cache goes"]


def run(params: Params, paths: Paths) -> None:
    """The preprocess stage: `out`/{train.npy, test.npy, train.csv, test.csv, meta.json[,
    targets.npy]} in one atomic replacement."""
    cfg, source = params.preprocess, params.data.source
    data = get_source(source).read(paths.root)
    decode = Decode(cfg.height, cfg.width, check_crop(cfg.crop), cfg.mode, cfg.workers)
    train_items = data.images["train"] if data.images else data.train["path"]
    test_items = data.images["test"] if data.images else data.test["path"]
    if not data.images:
        report_decode_scale(train_items, decode)
    n = len(data.train) + len(data.test)
    with atomic_dir(paths.out) as tmp, tqdm(total=n, desc="preprocess", unit="img", disable=None) as bar:
        t0 = time.perf_counter()
        stats = build_cache(train_items, tmp / "train.npy", decode, progress=bar.update)
        build_cache(test_items, tmp / "test.npy", decode, stats=False, progress=bar.update)
        seconds = time.perf_counter() - t0
        write_csv(data.train.drop(columns="path", errors="ignore"), tmp / "train.csv")
        write_csv(data.test.drop(columns="path", errors="ignore"), tmp / "test.csv")
        if data.targets is not None:
            np.save(tmp / "targets.npy", data.targets.astype(np.float32))
        write_json(describe(source, data, stats, decode), tmp / "meta.json")
    print(f"preprocess: {n} images in {seconds:.1f} s = {n / seconds:.0f} images/s "
          f"({decode.workers} workers)")
