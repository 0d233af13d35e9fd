"""split: assign every training image a validation fold, grouped by subject.

usage: python stages/split.py DATA_ROOT OUT_CSV
"""
import sys

import _src  # noqa: F401

from foldwise import params as P, stage
from foldwise.errors import InputError
from foldwise.files import write_csv
from foldwise.folds import assign_folds
from foldwise.sources import get_source


def main():
    root, out = sys.argv[1:3]
    params = P.load()
    folds = list(P.get(params, "folds"))
    if folds != list(range(len(folds))):
        raise InputError(f"params.yaml: folds={folds} must be 0, 1, ..., k-1 (one entry per fold)")
    data = get_source(P.get(params, "data.source")).read(root)
    table = data.train[[c for c in ("id", "group", "label") if c in data.train]].copy()
    groups = None if table["group"].isna().all() else table["group"]
    labels = table["label"] if "label" in table else None  # regression: plain k-fold
    table["fold"] = assign_folds(labels, groups, len(folds), P.get(params, "seed"),
                                 size=len(table))
    write_csv(table, out)


if __name__ == "__main__":
    stage.run(main)
