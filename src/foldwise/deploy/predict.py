"""`foldwise-predict MODEL_DIR IMAGES_DIR OUT_CSV`: a folder of images to a submission file.

Decodes with the very function preprocess used (same size, crop and reduced-size decoding),
runs the exported bag and writes the data source's submission format: on the test folder, the
export's own submission. Where that submission averages over test neighbours or feeds them to
a logistic stack, the same is done over the images of the folder, from the export's feature
program and the stack's weights (`setlevel`), so the folder should be the whole set to predict
together. A second-level model the export cannot hold (a boosted stack) is refused, naming the
param, unless `--bag-only` asks for the program's own predictions.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from foldwise import stage
from foldwise.deploy import program, setlevel
from foldwise.data.cache import Decode, decode_chunks
from foldwise.errors import InputError
from foldwise.data.sources import get_source
from foldwise.tasks import create_task

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


@dataclass(frozen=True)
class Reading:
    """How foldwise-predict reads the folder: images per forward pass, decoding processes and
    images a chunk; `bag_only` the program's own predictions (no whole-set second level)."""
    batch_size: int = 64
    workers: int = 2
    chunk: int = 512
    bag_only: bool = False


def predict_folder(model_dir, images_dir, out_csv, reading: Reading = Reading()) -> np.ndarray:
    """Decode in `reading.workers` processes, `reading.chunk` images at a time, while the model
    predicts the previous chunk (on the GPU when there is one)."""
    bag_only, chunk = reading.bag_only, reading.chunk
    model, meta = program.load(model_dir)
    differs = program.unreproducible(meta)
    if differs and not bag_only:
        raise InputError(f"{model_dir}: its submission also applies {'; '.join(differs)}, which "
                         "the export cannot hold, so foldwise-predict would not reproduce it; "
                         "use the export's submission.csv, export with a logistic stack or none, "
                         "or pass --bag-only for the program's own predictions")
    files = sorted(p for p in Path(images_dir).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"{images_dir}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found")
    features = (setlevel.load_features(model_dir, program.default_device())
                if setlevel.wanted(meta) and not bag_only else None)
    preds, feats = [], []
    decode = Decode.of(meta["preprocess"], reading.workers, chunk)
    for i, block in enumerate(decode_chunks(files, decode)):
        preds.append(program.run_model(model, block, reading.batch_size,
                                       desc=f"predict {i * chunk}/{len(files)}"))
        if features is not None:
            feats.append(program.run_model(features, block, reading.batch_size, desc="features"))
    joined = np.concatenate(preds)
    if features is not None:  # over every image of the folder, as the submission over the test set
        joined = setlevel.apply(joined, setlevel.graph(np.concatenate(feats), meta), meta, model_dir)
    decided = create_task(meta).postprocess(joined, meta.get("decision", {}))
    get_source(meta["source"]).write_submission([p.name for p in files], decided,
                                                {**meta, "root": str(images_dir)}, out_csv)
    return decided


def main() -> None:
    parser = stage.parser(__doc__)
    parser.add_argument("model_dir", help="the exported model folder (export/model)")
    parser.add_argument("images_dir", help="folder of images to predict")
    parser.add_argument("out_csv", help="where to write the submission CSV")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    parser.add_argument("--workers", type=int, default=2, help="decoding processes")
    parser.add_argument("--bag-only", action="store_true",
                        help="the program's own predictions, without the steps the submission "
                        "applies over the whole test set (neighbour averaging, a second-level "
                        "model outside the program): they differ from the submission")
    args = parser.parse_args()
    reading = Reading(args.batch_size, args.workers, bag_only=args.bag_only)
    stage.run(lambda: predict_folder(args.model_dir, args.images_dir, args.out_csv, reading))


if __name__ == "__main__":
    main()
