"""split: assign every training image a validation fold, grouped by subject and, with
`split.dedupe`, by clusters of near-duplicate images.

usage: python stages/split.py DATA_ROOT OUT_CSV DUPLICATES_CSV DUPLICATES_PNG
params: seed, folds, data.source, split.dedupe, split.hash_distance
writes OUT_CSV (id, group, label, fold), DUPLICATES_CSV (the near-duplicate clusters found,
largest first; empty when dedupe is off) and DUPLICATES_PNG (a contact sheet of the largest)
"""
import os

import _src  # noqa: F401
import numpy as np
import pandas as pd

from foldwise import dedupe, params as P, stage
from foldwise.errors import InputError
from foldwise.files import write_csv
from foldwise.folds import assign_folds
from foldwise.sources import get_source


def main():
    root, out, dup_csv, dup_png = stage.arguments(
        __doc__, ("data_root", "the data set, in data.source's layout"),
        ("out_csv", "the fold table to write"), ("duplicates_csv", "near-duplicate clusters found"),
        ("duplicates_png", "contact sheet of the largest clusters"))
    params = P.load()
    folds = list(P.get(params, "folds"))
    if folds != list(range(len(folds))):
        raise InputError(f"params.yaml: folds={folds} must be 0, 1, ..., k-1 (one entry per fold)")
    data = get_source(P.get(params, "data.source")).read(root)
    table = data.train[[c for c in ("id", "group", "label") if c in data.train]].copy()
    groups = None if table["group"].isna().all() else table["group"]
    labels = table["label"] if "label" in table else None  # regression: plain k-fold
    k, seed = len(folds), P.get(params, "seed")
    clusters = pd.DataFrame(columns=["cluster", "size", "id", "position", "hash"])
    items = data.images["train"] if data.images else list(data.train["path"])
    if P.get(params, "split.dedupe"):
        h = dedupe.hashes(items, workers=os.cpu_count() or 2)
        pairs = dedupe.near_pairs(h, int(P.get(params, "split.hash_distance")))
        clusters = dedupe.report(table["id"], h, pairs)
        if groups is not None:  # does the subject column alone keep near-duplicates together?
            across = dedupe.spanning(assign_folds(labels, groups, k, seed, size=len(table)), pairs)
            if across:
                print(f"split: warning: grouped by subject alone, {across} near-duplicate pairs "
                      "would fall in two folds; their subjects are grouped together")
        merged = dedupe.components(len(table), pairs, groups)
        if len(np.unique(merged)) < k:
            raise InputError(f"split.dedupe: near-duplicates (hash distance <= "
                             f"{P.get(params, 'split.hash_distance')}) link the images into "
                             f"{len(np.unique(merged))} groups, fewer than the {k} folds; lower "
                             "split.hash_distance in params.yaml")
        table["fold"] = assign_folds(labels, merged, k, seed, size=len(table))
        print(f"split: {len(clusters)} of {len(table)} images have near-duplicates (hash distance "
              f"<= {P.get(params, 'split.hash_distance')}), in {clusters['cluster'].nunique()} "
              f"clusters, the largest of {int(clusters['size'].max()) if len(clusters) else 0}; "
              f"{dedupe.spanning(table['fold'].to_numpy(), pairs)} pairs across folds")
    else:
        table["fold"] = assign_folds(labels, groups, k, seed, size=len(table))
    write_csv(clusters.drop(columns="position"), dup_csv)
    dedupe.contact_sheet(items, clusters, dup_png)
    write_csv(table, out)


if __name__ == "__main__":
    stage.run(main)
