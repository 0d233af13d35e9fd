"""preprocess: decode every train and test image once into memory-mappable uint8 arrays.

usage: python stages/preprocess.py DATA_ROOT OUT_DIR
params: data.source; preprocess.height, width, crop, mode, workers
writes OUT_DIR/{train.npy, test.npy, train.csv, test.csv, meta.json} and, for regression
tasks, OUT_DIR/targets.npy (NaN where a value is missing)
"""
import time
from pathlib import Path

import _src  # noqa: F401
import numpy as np

from tqdm import tqdm

from foldwise import params as P, stage
from foldwise.cache import build_cache, check_crop, decode_scale
from foldwise.files import atomic_dir, write_csv, write_json
from foldwise.sources import get_source


def main():
    root, out = stage.arguments(__doc__, ("data_root", "the data set, in data.source's layout"),
                                ("out_dir", "where the cache goes"))
    out = Path(out)
    params = P.load()
    cfg = P.get(params, "preprocess")
    source = P.get(params, "data.source")
    data = get_source(source).read(root)
    size = dict(height=int(cfg["height"]), width=int(cfg["width"]), crop=check_crop(cfg["crop"]),
                mode=cfg["mode"], workers=int(cfg["workers"]))
    train_items = data.images["train"] if data.images else data.train["path"]
    test_items = data.images["test"] if data.images else data.test["path"]
    if not data.images:
        scale = decode_scale(train_items.iloc[0], size["height"], size["width"], size["crop"])
        print(f"preprocess: JPEG decoded at {scale:g} of full size"
              + ("" if scale < 1 else ": the target size needs more than half of the crop's "
                 "source pixels, so reduced-size decoding cannot apply"))
    n = len(data.train) + len(data.test)
    with atomic_dir(out) as tmp, tqdm(total=n, desc="preprocess", unit="img", disable=None) as bar:
        t0 = time.perf_counter()
        stats = build_cache(train_items, tmp / "train.npy", **size, progress=bar.update)
        build_cache(test_items, tmp / "test.npy", **size, stats=False, progress=bar.update)
        seconds = time.perf_counter() - t0
        write_csv(data.train.drop(columns="path", errors="ignore"), tmp / "train.csv")
        write_csv(data.test.drop(columns="path", errors="ignore"), tmp / "test.csv")
        if data.targets is not None:
            np.save(tmp / "targets.npy", data.targets.astype(np.float32))
        write_json({"source": source, "task": data.task, "classes": list(data.classes),
                    "target_names": list(data.target_names),
                    "flip_pairs": [list(p) for p in data.flip_pairs],
                    "image_size": list(data.image_size) if data.image_size else None,
                    "hflip_safe": data.hflip_safe, "mean": stats["mean"], "std": stats["std"],
                    "height": size["height"], "width": size["width"], "crop": list(size["crop"]),
                    "mode": size["mode"]}, tmp / "meta.json")
    print(f"preprocess: {n} images in {seconds:.1f} s = {n / seconds:.0f} images/s "
          f"({size['workers']} workers)")


if __name__ == "__main__":
    stage.run(main)
