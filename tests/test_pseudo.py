"""Fold-honest pseudo-labels' parts: fold k's labels come from fold k's own model only, a planted
leak (the bag's other folds, a model from another split) is refused by name, and the soft and
hard targets by hand."""
import numpy as np
import pandas as pd
import pytest

from foldwise.errors import InputError
from foldwise.train import outputs, pseudo


def split(n=12, k=3, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"id": [f"img{i}" for i in range(n)], "fold": rng.permutation(np.arange(n) % k)})


def test_only_the_folds_own_model_never_saw_its_validation_labels():
    folds = split()
    for k in range(3):
        val = folds.loc[folds["fold"] == k, "id"]
        assert pseudo.leaked(val, folds, k) == []
        for j in set(range(3)) - {k}:  # every other fold's model trained on fold k's images
            assert pseudo.leaked(val, folds, j) == sorted(val)


def test_a_planted_leak_is_refused_naming_the_model_and_the_images():
    folds = split()
    bag = [(folds, j) for j in range(3)]  # the bag's test predictions: every fold's model
    with pytest.raises(InputError, match=r"fold 1: fold 0's model trained on 4 of the fold's 4"):
        pseudo.check_sources(1, folds, bag, [f"fold {j}'s model" for j in range(3)])
    other = split(seed=5)  # another split's fold 1 shares some images with ours, not all
    shared = pseudo.leaked(folds.loc[folds["fold"] == 1, "id"], other, 1)
    assert 0 < len(shared) < 4
    with pytest.raises(InputError, match=f"trained on {len(shared)} of"):
        pseudo.check_sources(1, folds, [(other, 1)], ["exp-b fold 1"])
    pseudo.check_sources(1, folds, [(folds, 1)], ["fold 1's model"])  # the honest one passes


def test_soft_and_hard_targets_by_hand():
    p = np.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25], [0.05, 0.05, 0.9]])
    rows, y = pseudo.targets(p, "soft", 0.0)
    np.testing.assert_array_equal(rows, [0, 1, 2])
    np.testing.assert_allclose(y, p)
    rows, y = pseudo.targets(p, "hard", 0.6)
    np.testing.assert_array_equal(rows, [0, 2])
    np.testing.assert_array_equal(y, [[1, 0, 0], [0, 0, 1]])
    with pytest.raises(InputError, match="pseudo.mode"):
        pseudo.targets(p, "sharp", 0.6)
    with pytest.raises(InputError, match="pseudo.threshold"):
        pseudo.targets(p, "hard", 1.5)


def test_a_folds_labels_are_its_own_models_test_predictions(tmp_path):
    folds = split()
    cols = ["a", "b"]
    for k in range(3):
        preds = np.array([[0.9, 0.1], [0.3, 0.7], [0.55, 0.45]]) if k == 1 else np.full((3, 2), 0.5)
        out = outputs.fold_dir(tmp_path, k)
        out.mkdir(parents=True)
        outputs.prediction_table(["t0", "t1", "t2"], preds, cols).to_csv(out / "test.csv", index=False)
    ids, y = pseudo.fold_labels(tmp_path, 1, folds, cols, "hard", 0.6)
    assert list(ids) == ["t0", "t1"]
    np.testing.assert_array_equal(y, [[1, 0], [0, 1]])
