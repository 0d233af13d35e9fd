"""`foldwise-predict MODEL_DIR IMAGES_DIR OUT_CSV`: a folder of images to a submission file.

Decodes with the very function preprocess used (same size, crop and reduced-size decoding),
runs the exported bag and writes the data source's submission format: on the test folder, the
export's own submission. Where that submission also applies steps the program does not hold
(test-neighbour averaging, a second-level model that is not a layer of it), it refuses, naming
them, unless `--bag-only` asks for the program's own predictions.
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
                   chunk: int = 512, bag_only: bool = False) -> np.ndarray:
    """Decode in `workers` processes, `chunk` images at a time, while the model predicts the
    previous chunk (on the GPU when there is one)."""
    model, meta = export.load(model_dir)
    differs = export.set_level(meta)
    if differs and not bag_only:
        raise InputError(f"{model_dir}: its submission also applies {'; '.join(differs)}, which "
                         "the exported program does not hold, so foldwise-predict would not "
                         "reproduce it; use the export's submission.csv, export with those off, "
                         "or pass --bag-only for the program's own predictions")
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
    parser.add_argument("--bag-only", action="store_true",
                        help="where the submission also averages over test neighbours or applies "
                        "a second-level model outside the program: the program's own "
                        "predictions (they differ from the submission)")
    args = parser.parse_args()
    stage.run(lambda: predict_folder(args.model_dir, args.images_dir, args.out_csv,
                                     args.batch_size, args.workers, bag_only=args.bag_only))


if __name__ == "__main__":
    main()
