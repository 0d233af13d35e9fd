"""bag: average the folds' test predictions and gather the out-of-fold table.

usage: python stages/bag.py MODELS_DIR PROCESSED_DIR OUT_DIR
params: folds (which fold_k folders), bag.mean (arithmetic | geometric)
writes OUT_DIR/{oof.csv, test.csv}
"""
import json
from pathlib import Path

import _src  # noqa: F401
import pandas as pd

from foldwise import params as P, stage
from foldwise.bagging import assemble_oof, bag_test
from foldwise.errors import InputError
from foldwise.files import atomic_dir, write_csv


def main():
    models, processed, out = stage.arguments(
        __doc__, ("models_dir", "folder of the fold_k outputs of train"),
        ("processed_dir", "the preprocess cache (train.csv, meta.json)"),
        ("out_dir", "where oof.csv and test.csv go"))
    models, processed = Path(models), Path(processed)
    params = P.load()
    meta = json.loads((processed / "meta.json").read_text())
    if meta["task"] != "classification" and P.get(params, "bag.mean") != "arithmetic":
        raise InputError(f"params.yaml: bag.mean={P.get(params, 'bag.mean')!r} applies to "
                         f"probabilities; {meta['task']} predictions are averaged arithmetically")
    dirs = [models / f"fold_{k}" for k in P.get(params, "folds")]
    ids = pd.read_csv(processed / "train.csv", dtype={"id": str})["id"]
    oof = assemble_oof([pd.read_csv(d / "oof.csv", dtype={"id": str, "group": str}) for d in dirs], ids)
    test = bag_test([pd.read_csv(d / "test.csv", dtype={"id": str}) for d in dirs],
                    P.get(params, "bag.mean"))
    with atomic_dir(out) as tmp:
        write_csv(oof, tmp / "oof.csv", float_format="%.8g")
        write_csv(test, tmp / "test.csv", float_format="%.8g")


if __name__ == "__main__":
    stage.run(main)
