"""Bagging the fold models: average their test predictions, gather the out-of-fold table."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd

from foldwise.errors import InputError
from foldwise.files import atomic_dir, write_csv
from foldwise.metrics import EPS
from foldwise.params import Params
from foldwise.train import outputs

MEANS = ("arithmetic", "geometric")


def average(preds, mean: str = "arithmetic", weights=None, eps: float = EPS) -> np.ndarray:
    """The (weighted) average of per-model predictions of identical shape: the bag of the folds
    (equal weights) and the blend of experiments (weights fit out-of-fold) alike.

    `geometric` is the normalised weighted geometric mean of probabilities, which penalises a
    class any one model rules out; it applies to probabilities only.
    """
    stack = np.stack([np.asarray(p, dtype=np.float64) for p in preds])
    if weights is None:
        w = np.full((len(stack), 1, 1), 1.0 / len(stack))
    else:
        w = np.asarray(weights, dtype=np.float64)[:, None, None]
    if mean == "arithmetic":
        return (w * stack).sum(axis=0)
    if mean == "geometric":
        p = np.exp((w * np.log(np.clip(stack, eps, 1.0))).sum(axis=0))
        return p / p.sum(axis=1, keepdims=True)
    raise InputError(f"mean {mean!r} (params.yaml bag.mean, foldwise-blend --mean) must be one of {MEANS}")


def assemble_oof(fold_tables, expected_ids) -> pd.DataFrame:
    """Concatenate each fold's validation predictions; every training image exactly once."""
    oof = pd.concat(fold_tables, ignore_index=True)
    counts = oof["id"].value_counts()
    twice = counts[counts > 1]
    if len(twice):
        raise InputError(f"image {twice.index[0]!r} is in the validation set of more than one fold")
    missing = sorted(set(expected_ids) - set(oof["id"]))
    if missing:
        raise InputError(f"{len(missing)} training images have no out-of-fold prediction, "
                         f"e.g. {missing[0]!r}: were all folds trained?")
    order = {img: i for i, img in enumerate(expected_ids)}
    return oof.sort_values("id", key=lambda s: s.map(order)).reset_index(drop=True)


def bag_test(fold_tables, mean: str) -> pd.DataFrame:
    """Average test predictions of the folds; the tables must list the same ids in one order."""
    first = fold_tables[0]
    for t in fold_tables[1:]:
        if not first["id"].equals(t["id"]):
            raise InputError("fold test predictions list different images; rerun the train stages")
    cols = [c for c in first.columns if c != "id"]
    bagged = average([t[cols].to_numpy() for t in fold_tables], mean)
    out = pd.DataFrame(bagged, columns=cols)
    out.insert(0, "id", first["id"].to_numpy())
    return out


@dataclass(frozen=True)
class Paths:
    models: Annotated[Path, "folder of the fold_k outputs of train"]
    processed: Annotated[Path, "the preprocess cache (train.csv, meta.json)"]
    out: Annotated[Path, "where oof.csv and test.csv go"]


def run(params: Params, paths: Paths) -> None:
    """The bag stage: `bag_folds` over `params.folds` with `bag.mean`."""
    from foldwise.data.cache import read_meta
    from foldwise.tasks import create_task
    task = create_task(read_meta(paths.processed), params)
    bag_folds(params.folds, params.bag.mean, task.probabilities, paths.models, paths.processed,
              paths.out)


def bag_folds(folds, mean: str, probabilities: bool, models, processed, out) -> None:
    """Every fold's OOF rows gathered in training order (`processed`'s
    train.csv) and their test predictions averaged, written to `out`/{oof,test}.csv.
    `probabilities`: the task's outputs are probabilities (else only the arithmetic mean)."""
    if not probabilities and mean != "arithmetic":
        raise InputError(f"params.yaml: bag.mean={mean!r} applies to probabilities; this task's "
                         "predictions are averaged arithmetically")
    ids = pd.read_csv(Path(processed) / "train.csv", dtype={"id": str})["id"]
    oof = assemble_oof([outputs.read_oof(models, k) for k in folds], ids)
    test = bag_test([outputs.read_test(models, k) for k in folds], mean)
    with atomic_dir(out) as tmp:
        write_csv(oof, tmp / "oof.csv", float_format=outputs.FLOATS)
        write_csv(test, tmp / "test.csv", float_format=outputs.FLOATS)
