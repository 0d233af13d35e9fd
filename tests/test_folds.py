import numpy as np
import pytest

from foldwise.errors import InputError
from foldwise.data.folds import assign_folds


def make_groups(n_groups=12, per_group=30, n_classes=5, seed=0):
    rng = np.random.default_rng(seed)
    groups = np.repeat([f"p{g:03d}" for g in range(n_groups)], per_group)
    labels = rng.integers(0, n_classes, size=len(groups))
    return labels, groups


def test_every_subject_is_in_exactly_one_validation_fold():
    labels, groups = make_groups()
    fold = assign_folds(labels, groups, n_folds=4, seed=0)
    assert set(fold) == {0, 1, 2, 3}
    for g in np.unique(groups):
        assert len(set(fold[groups == g])) == 1, f"subject {g} split across folds"


def test_folds_keep_class_proportions():
    labels, groups = make_groups(n_groups=20)
    fold = assign_folds(labels, groups, n_folds=5, seed=0)
    overall = np.bincount(labels, minlength=5) / len(labels)
    for k in range(5):
        part = np.bincount(labels[fold == k], minlength=5) / np.sum(fold == k)
        assert np.abs(part - overall).max() < 0.08


def test_split_is_deterministic_for_a_seed_and_changes_with_it():
    labels, groups = make_groups()
    a = assign_folds(labels, groups, 4, seed=3)
    assert np.array_equal(a, assign_folds(labels, groups, 4, seed=3))
    assert not all(np.array_equal(a, assign_folds(labels, groups, 4, seed=s)) for s in range(4, 8))


def test_fewer_subjects_than_folds_is_a_clear_error():
    labels, groups = make_groups(n_groups=3)
    with pytest.raises(InputError, match=r"only 3 subjects .*p000.* for 5 folds"):
        assign_folds(labels, groups, n_folds=5, seed=0)


def test_without_groups_folds_are_stratified():
    labels = np.repeat(np.arange(4), 25)
    fold = assign_folds(labels, None, n_folds=5, seed=0)
    for k in range(5):
        assert np.array_equal(np.bincount(labels[fold == k]), [5, 5, 5, 5])


def test_regression_targets_split_without_labels_and_groups_stay_whole():
    groups = np.repeat(np.arange(8), 5)
    fold = assign_folds(None, groups, n_folds=4, seed=0)
    for g in range(8):
        assert len(set(fold[groups == g])) == 1
    plain = assign_folds(None, None, n_folds=4, seed=0, size=40)
    assert np.array_equal(np.bincount(plain), [10, 10, 10, 10])


def test_the_training_seed_leaves_the_folds_alone_and_split_seed_moves_them(statefarm_sample, tmp_path):
    """Search trials that differ in `seed` must be scored on the same folds (they were not:
    the split read `seed`); the folds have their own `split.seed`."""
    from pathlib import Path

    import pandas as pd

    from foldwise import params as P
    from foldwise.data import split
    base = P.load(Path(__file__).resolve().parents[1] / "params.yaml")
    base = P.evolve(base, {"folds": [0, 1, 2], "data": {"root": str(statefarm_sample)}})

    def folds(**changes):
        out = tmp_path / f"{len(list(tmp_path.iterdir()))}.csv"
        split.run(P.evolve(base, P.nested(changes)),
                  split.Paths(statefarm_sample, out, tmp_path / "d.csv", tmp_path / "d.png"))
        return pd.read_csv(out)["fold"].tolist()

    first = folds(seed=0, **{"split.seed": 0})
    assert folds(seed=7, **{"split.seed": 0}) == first
    assert folds(seed=0, **{"split.seed": 3}) != first
