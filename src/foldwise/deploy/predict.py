"""`foldwise-predict MODEL_DIR IMAGES_DIR OUT_CSV`: a folder of images to a submission file.

Decodes with the very function preprocess used (same size, crop and reduced-size decoding),
runs the exported bag and writes the data source's submission format.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from foldwise import stage
from foldwise.deploy import export
from foldwise.data.cache import decode_chunks
from foldwise.errors import InputError
from foldwise.data.sources import get_source
from foldwise.tasks import create_task

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def predict_folder(model_dir, images_dir, out_csv, batch_size: int = 64, workers: int = 2,
                   chunk: int = 512) -> np.ndarray:
    """Decode in `workers` processes, `chunk` images at a time, while the model predicts the
    previous chunk (on the GPU when there is one)."""
    model, meta = export.load(model_dir)
    files = sorted(p for p in Path(images_dir).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"{images_dir}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found")
    pre = meta["preprocess"]
    preds = [export.run_model(model, block, batch_size, desc=f"predict {i * chunk}/{len(files)}")
             for i, block in enumerate(decode_chunks(files, pre, workers, chunk))]
    preds = create_task(meta).postprocess(np.concatenate(preds), meta.get("decision", {}))
    get_source(meta["source"]).write_submission([p.name for p in files], preds,
                                                {**meta, "root": str(images_dir)}, out_csv)
    return preds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", help="the exported model folder (export/model)")
    parser.add_argument("images_dir", help="folder of images to predict")
    parser.add_argument("out_csv", help="where to write the submission CSV")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    parser.add_argument("--workers", type=int, default=2, help="decoding processes")
    args = parser.parse_args()
    stage.run(lambda: predict_folder(args.model_dir, args.images_dir, args.out_csv,
                                     args.batch_size, args.workers))


if __name__ == "__main__":
    main()
