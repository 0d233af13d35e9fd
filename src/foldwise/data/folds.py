"""K-fold assignment: stratified by label and, where groups exist, no group in two folds."""
from __future__ import annotations

import numpy as np
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

from foldwise.errors import InputError


def assign_folds(labels, groups, n_folds: int, seed: int, size: int | None = None) -> np.ndarray:
    """Return the validation fold (0..n_folds-1) of every sample.

    With `groups`, every group lands in exactly one validation fold (drivers' frames are near
    duplicates, so a split that mixes them overstates the score); label proportions are kept
    as close as the groups allow. `labels=None` (regression targets) splits without stratifying;
    `size` gives the number of samples when there are neither labels nor groups.
    """
    if n_folds < 2:
        raise InputError(f"params.yaml: folds lists {n_folds} fold(s); k-fold needs at least 2")
    if labels is None and groups is None and size is None:
        raise ValueError("assign_folds: give labels, groups or size")
    n = len(labels) if labels is not None else len(groups) if groups is not None else int(size or 0)
    x = np.zeros(n)
    if groups is not None:
        groups = np.asarray(groups)
        n_groups = len(np.unique(groups))
        if n_groups < n_folds:
            raise InputError(f"only {n_groups} subjects ({', '.join(map(str, np.unique(groups)))}) "
                             f"for {n_folds} folds: params.yaml 'folds' must list at most {n_groups}")
    if labels is None and groups is None:
        splits = KFold(n_splits=n_folds, shuffle=True, random_state=seed).split(x)
    elif labels is None:
        splits = GroupKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(x, groups=groups)
    elif groups is None:
        splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(x, np.asarray(labels))
    else:
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(x, np.asarray(labels), groups)
    fold: np.ndarray = np.full(n, -1, dtype=np.int64)
    for k, (_, val) in enumerate(splits):
        fold[val] = k
    return fold
