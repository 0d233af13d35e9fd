"""bag: average the folds' test predictions and gather the out-of-fold table.

usage: python stages/bag.py MODELS_DIR PROCESSED_DIR OUT_DIR
params: folds (which fold_k folders), bag.mean (arithmetic | geometric)
writes OUT_DIR/{oof.csv, test.csv}
"""
import json
from pathlib import Path

from foldwise import params as P, stage
from foldwise.ensemble.bagging import bag_folds
from foldwise.tasks import create_task


def main():
    models, processed, out = stage.arguments(
        __doc__, ("models_dir", "folder of the fold_k outputs of train"),
        ("processed_dir", "the preprocess cache (train.csv, meta.json)"),
        ("out_dir", "where oof.csv and test.csv go"))
    params = P.load()
    task = create_task(json.loads((Path(processed) / "meta.json").read_text()), params)
    bag_folds(params.folds, params.bag.mean, task.probabilities, models,
              processed, out)


if __name__ == "__main__":
    stage.run(main)
