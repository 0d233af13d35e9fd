"""export: the submission file and the bagged model (torch.export .pt2) that reproduces it.

usage: python stages/export.py MODELS_DIR PROCESSED_DIR BAGGED_DIR SUBMISSION_CSV MODEL_DIR
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


def main():
    models, processed, bagged = (Path(a) for a in sys.argv[1:4])
    submission, model_dir = sys.argv[4], sys.argv[5]
    params = P.load()
    meta = json.loads((processed / "meta.json").read_text())
    task = create_task(meta["task"], meta["classes"], params)
    mean = P.get(params, "bag.mean")
    nets = [load_checkpoint(models / f"fold_{k}" / "model.pt") for k in P.get(params, "folds")]
    test_images = np.load(processed / "test.npy", mmap_mode="r")
    bag = export.Bagged(nets, task.activation, mean)
    example = torch.zeros((2, *test_images.shape[1:]), dtype=torch.uint8)  # batch size stays dynamic
    export.save(bag, example,
                {"source": meta["source"], "task": meta["task"], "classes": meta["classes"],
                 "bag_mean": mean, "folds": len(nets),
                 "preprocess": {k: meta[k] for k in ("height", "width", "crop", "mode")}},
                model_dir)

    test = pd.read_csv(bagged / "test.csv", dtype={"id": str})
    expected = test[meta["classes"]].to_numpy()
    model, _ = export.load(model_dir)
    got = export.run_model(model, test_images)
    worst = float(np.abs(got - expected).max())
    if worst > TOLERANCE:
        raise RuntimeError(f"exported model differs from the bagged test predictions by {worst:.2e}")
    get_source(meta["source"]).write_submission(test["id"], expected, meta["classes"], submission)
    print(f"exported {len(nets)} fold models; max |exported - bagged| = {worst:.2e}")


if __name__ == "__main__":
    stage.run(main)
