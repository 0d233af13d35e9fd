"""export: the submission file and the bagged model (torch.export .pt2) that reproduces it.

usage: python stages/export.py DATA_ROOT MODELS_DIR PROCESSED_DIR BAGGED_DIR METRICS_JSON
                               SUBMISSION_CSV MODEL_DIR
"""
import json
import sys
from pathlib import Path

import _src  # noqa: F401
import numpy as np
import pandas as pd
import torch

from foldwise import export, params as P, stage
from foldwise.models import load_checkpoint
from foldwise.sources import get_source
from foldwise.tasks import create_task

TOLERANCE = 1e-4
TASK_KEYS = ("source", "task", "classes", "target_names", "image_size", "flip_pairs")


def main():
    root = sys.argv[1]
    models, processed, bagged, metrics_json = (Path(a) for a in sys.argv[2:6])
    submission, model_dir = sys.argv[6], sys.argv[7]
    params = P.load()
    meta = json.loads((processed / "meta.json").read_text())
    task = create_task(meta, params)
    mean = P.get(params, "bag.mean")
    clip = json.loads(metrics_json.read_text())["oof"].get("clip", 0.0)  # chosen on OOF by evaluate
    nets = [load_checkpoint(models / f"fold_{k}" / "model.pt") for k in P.get(params, "folds")]
    test_images = np.load(processed / "test.npy", mmap_mode="r")
    bag = export.Bagged(nets, task.activation, mean, *task.output_affine())
    example = torch.zeros((2, *test_images.shape[1:]), dtype=torch.uint8)  # batch size stays dynamic
    export.save(bag, example,
                {**{k: meta[k] for k in TASK_KEYS}, "bag_mean": mean, "folds": len(nets), "clip": clip,
                 "preprocess": {k: meta[k] for k in ("height", "width", "crop", "mode")}},
                model_dir)

    test = pd.read_csv(bagged / "test.csv", dtype={"id": str})
    expected = test[task.columns].to_numpy()
    model, _ = export.load(model_dir)
    got = export.run_model(model, test_images)
    worst = float(np.abs(got - expected).max())
    if worst > TOLERANCE:
        raise RuntimeError(f"exported model differs from the bagged test predictions by {worst:.2e}")
    get_source(meta["source"]).write_submission(test["id"], task.postprocess(expected, clip),
                                                {**meta, "root": root}, submission)
    print(f"exported {len(nets)} fold models; max |exported - bagged| = {worst:.2e}; clip {clip:g}")


if __name__ == "__main__":
    stage.run(main)
