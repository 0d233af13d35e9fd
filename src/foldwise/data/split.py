"""The split stage: every training image assigned a validation fold, grouped by subject and,
with `split.dedupe`, by clusters of near-duplicate images (`dedupe`), as `folds` assigns them."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, NamedTuple

import numpy as np
import pandas as pd

from foldwise.data import dedupe
from foldwise.data.folds import assign_folds
from foldwise.data.sources import get_source
from foldwise.errors import InputError
from foldwise.files import write_csv
from foldwise.params import Params

CLUSTER_COLUMNS = ["cluster", "size", "id", "position", "hash"]


class Deduped(NamedTuple):
    folds: np.ndarray  # each image's validation fold
    clusters: pd.DataFrame  # the near-duplicate clusters found (CLUSTER_COLUMNS)


def grouping(table: pd.DataFrame) -> tuple[pd.Series | None, pd.Series | None]:
    """The fold table's labels (None for regression: plain k-fold) and subjects (None when the
    source has none)."""
    groups = None if table["group"].isna().all() else table["group"]
    return (table["label"] if "label" in table else None), groups


def deduped_folds(params: Params, table: pd.DataFrame, items) -> Deduped:
    """Folds that keep near-duplicates together, and the clusters found."""
    distance, k, seed = params.split.hash_distance, len(params.folds), params.split.seed
    labels, groups = grouping(table)
    h = dedupe.hashes(items, workers=os.cpu_count() or 2)
    pairs = dedupe.near_pairs(h, distance)
    clusters = dedupe.report(table["id"], h, pairs)
    if groups is not None:  # does the subject column alone keep near-duplicates together?
        across = dedupe.spanning(assign_folds(labels, groups, k, seed, size=len(table)), pairs)
        if across:
            print(f"split: warning: grouped by subject alone, {across} near-duplicate pairs "
                  "would fall in two folds; their subjects are grouped together")
    merged = dedupe.components(len(table), pairs, groups)
    if len(np.unique(merged)) < k:
        raise InputError(f"split.dedupe: near-duplicates (hash distance <= {distance}) link the "
                         f"images into {len(np.unique(merged))} groups, fewer than the {k} folds; "
                         "lower split.hash_distance in params.yaml")
    folds = assign_folds(labels, merged, k, seed, size=len(table))
    print(f"split: {len(clusters)} of {len(table)} images have near-duplicates (hash distance "
          f"<= {distance}), in {clusters['cluster'].nunique()} clusters, the largest of "
          f"{int(clusters['size'].max()) if len(clusters) else 0}; "
          f"{dedupe.spanning(folds, pairs)} pairs across folds")
    return Deduped(folds, clusters)


@dataclass(frozen=True)
class Paths:
    root: Annotated[Path, "the data set, in data.source's layout"]
    out: Annotated[Path, "the fold table to write"]
    dup_csv: Annotated[Path, "near-duplicate clusters found"]
    dup_png: Annotated[Path, "contact sheet of the largest clusters"]


def run(params: Params, paths: Paths) -> None:
    """The split stage: the fold table `out` (id, group, label, fold), the near-duplicate
    clusters found (`dup_csv`, empty when dedupe is off) and a contact sheet of the largest
    (`dup_png`)."""
    folds = list(params.folds)
    if folds != list(range(len(folds))):
        raise InputError(f"params.yaml: folds={folds} must be 0, 1, ..., k-1 (one entry per fold)")
    data = get_source(params.data.source).read(paths.root)
    table = data.train[[c for c in ("id", "group", "label") if c in data.train]].copy()
    items = data.images["train"] if data.images else list(data.train["path"])
    clusters = pd.DataFrame(columns=CLUSTER_COLUMNS)
    if params.split.dedupe:
        table["fold"], clusters = deduped_folds(params, table, items)
    else:
        labels, groups = grouping(table)
        table["fold"] = assign_folds(labels, groups, len(folds), params.split.seed, size=len(table))
    write_csv(clusters.drop(columns="position"), paths.dup_csv)
    dedupe.contact_sheet(items, clusters, paths.dup_png)
    write_csv(table, paths.out)
