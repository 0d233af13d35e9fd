"""`foldwise-predict MODEL_DIR IMAGES_DIR OUT_CSV`: a folder of images to a submission file.

Decodes with the very function preprocess used (same size, crop and reduced-size decoding),
runs the exported bag and writes the data source's submission format.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from foldwise import export, stage
from foldwise.cache import load_image
from foldwise.errors import InputError
from foldwise.sources import get_source
from foldwise.tasks import create_task

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def predict_folder(model_dir, images_dir, out_csv, batch_size: int = 64) -> np.ndarray:
    model, meta = export.load(model_dir)
    files = sorted(p for p in Path(images_dir).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"{images_dir}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found")
    pre = meta["preprocess"]
    preds = []
    for start in range(0, len(files), batch_size):
        batch = np.stack([load_image(p, pre["height"], pre["width"], pre["crop"], pre["mode"])
                          for p in files[start:start + batch_size]])
        preds.append(export.run_model(model, batch, batch_size))
    preds = create_task(meta).postprocess(np.concatenate(preds), meta.get("clip", 0.0))
    get_source(meta["source"]).write_submission([p.name for p in files], preds,
                                                {**meta, "root": str(images_dir)}, out_csv)
    return preds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", help="the exported model folder (export/model)")
    parser.add_argument("images_dir", help="folder of images to predict")
    parser.add_argument("out_csv", help="where to write the submission CSV")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    stage.run(lambda: predict_folder(args.model_dir, args.images_dir, args.out_csv, args.batch_size))


if __name__ == "__main__":
    main()
