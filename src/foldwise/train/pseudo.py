"""Fold-honest pseudo-labels: the unlabelled test images, labelled by models, as training data
for a second round of folds, without flattering the out-of-fold score.

The rule: the pseudo-labels that fold k's second-round model trains on are made only by models
that never saw the labels of fold k's validation images. Among one bag's folds that is fold k's
own first-round model alone, since every other fold's model trained on fold k's images. The
bag's test predictions (all folds averaged) would leak: through them fold k's second-round model
learns what the other folds' models learnt from fold k's labels, and its validation score on
those images flatters (Google QUEST's 1st place: the honest gain was smaller than the leaked one;
their fix was one pseudo-label set per fold). `leaked` checks any source against a fold by the
images themselves, so a model from another split (another seed, another experiment) is judged
by what it trained on, not by its fold number.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from foldwise.errors import InputError
from foldwise.train import outputs

MODES = ("soft", "hard")


def leaked(val_ids, source_folds: pd.DataFrame, source_fold: int) -> list[str]:
    """The images of `val_ids` (one fold's validation images) whose labels the model that
    validated on `source_fold` of the split `source_folds` (columns id, fold) trained on."""
    trained = set(source_folds.loc[source_folds["fold"] != source_fold, "id"].astype(str))
    return sorted(set(map(str, val_ids)) & trained)


def check_sources(fold: int, folds: pd.DataFrame, sources: list[tuple[pd.DataFrame, int]],
                  names: list[str]) -> None:
    """Refuse pseudo-labels for `fold` (of the split `folds`) made by any source model (its
    split and its fold) that trained on one of the fold's validation images, naming it."""
    val_ids = folds.loc[folds["fold"] == fold, "id"]
    for (split, source_fold), name in zip(sources, names):
        seen = leaked(val_ids, split, source_fold)
        if seen:
            raise InputError(f"pseudo-labels for fold {fold}: {name} trained on {len(seen)} of the "
                             f"fold's {len(val_ids)} validation images (e.g. {seen[0]!r}); only "
                             "models that never saw them may label its extra images")


def targets(probs: np.ndarray, mode: str, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(rows kept, their targets): `soft` keeps every row with its probabilities; `hard` keeps
    the rows whose top class has at least `threshold`, as one-hot rows."""
    probs = np.asarray(probs, dtype=np.float64)
    if mode == "soft":
        return np.arange(len(probs)), probs
    if mode != "hard":
        raise InputError(f"params.yaml: pseudo.mode={mode!r} must be one of {', '.join(MODES)}")
    if not 0.0 < threshold <= 1.0:
        raise InputError(f"params.yaml: pseudo.threshold={threshold!r} must be in (0, 1]")
    rows = np.flatnonzero(probs.max(axis=1) >= threshold)
    return rows, np.eye(probs.shape[1])[probs[rows].argmax(axis=1)]


def fold_labels(models: str | Path, fold: int, folds: pd.DataFrame, columns: list[str],
                mode: str, threshold: float) -> tuple[pd.Series, np.ndarray]:
    """The test images' pseudo-labels for fold `fold`'s second round: (ids, targets) from that
    fold's own first-round model, the one model of the bag that never saw its validation labels
    (checked, not assumed)."""
    check_sources(fold, folds, [(folds, fold)], [f"fold {fold}'s model"])
    test = outputs.read_test(models, fold)
    rows, y = targets(test[columns].to_numpy(), mode, threshold)
    return test["id"].iloc[rows].reset_index(drop=True), y
