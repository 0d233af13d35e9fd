import numpy as np
import pandas as pd
import pytest

from foldwise.ensemble.bag import assemble_oof, average, bag_test
from foldwise.errors import InputError


def test_arithmetic_mean_of_fold_predictions():
    a = np.array([[0.8, 0.2], [0.5, 0.5]])
    b = np.array([[0.6, 0.4], [0.1, 0.9]])
    np.testing.assert_allclose(average([a, b]), [[0.7, 0.3], [0.3, 0.7]])


def test_geometric_mean_is_normalised_and_punishes_a_dissent():
    a = np.array([[0.9, 0.1]])
    b = np.array([[0.01, 0.99]])
    g = average([a, b], "geometric")
    raw = np.sqrt(a * b)
    np.testing.assert_allclose(g, raw / raw.sum(), rtol=1e-12)
    assert g.sum() == pytest.approx(1.0)


def test_unknown_mean_names_the_param():
    with pytest.raises(InputError, match="bag.mean"):
        average([np.ones((1, 2))], "median")


def oof_part(ids, fold):
    return pd.DataFrame({"id": ids, "fold": fold, "c0": 0.5, "c1": 0.5})


def test_oof_table_has_every_training_image_once_in_training_order():
    oof = assemble_oof([oof_part(["b", "d"], 0), oof_part(["a", "c"], 1)], ["a", "b", "c", "d"])
    assert list(oof["id"]) == ["a", "b", "c", "d"]
    assert list(oof["fold"]) == [1, 0, 1, 0]


def test_oof_rejects_an_image_in_two_folds_and_a_missing_one():
    with pytest.raises(InputError, match="'b'.*more than one fold"):
        assemble_oof([oof_part(["a", "b"], 0), oof_part(["b", "c"], 1)], ["a", "b", "c"])
    with pytest.raises(InputError, match="1 training images.*'c'"):
        assemble_oof([oof_part(["a", "b"], 0)], ["a", "b", "c"])


def test_bag_test_averages_columns_and_checks_ids():
    t0 = pd.DataFrame({"id": ["x", "y"], "c0": [1.0, 0.0], "c1": [0.0, 1.0]})
    t1 = pd.DataFrame({"id": ["x", "y"], "c0": [0.5, 0.5], "c1": [0.5, 0.5]})
    out = bag_test([t0, t1], "arithmetic")
    assert list(out.columns) == ["id", "c0", "c1"]
    np.testing.assert_allclose(out[["c0", "c1"]], [[0.75, 0.25], [0.25, 0.75]])
    with pytest.raises(InputError, match="different images"):
        bag_test([t0, t1.iloc[::-1].reset_index(drop=True)], "arithmetic")


def test_weighted_averages_by_hand():
    a = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    b = np.array([[0.2, 0.5, 0.3], [0.3, 0.3, 0.4]])
    np.testing.assert_allclose(average([a, b], "arithmetic", [0.25, 0.75]), 0.25 * a + 0.75 * b, atol=1e-15)
    g = a ** 0.25 * b ** 0.75
    np.testing.assert_allclose(average([a, b], "geometric", [0.25, 0.75]), g / g.sum(axis=1, keepdims=True),
                               atol=1e-15)
    # a zero weight leaves the other model alone, even where the dropped one says 0
    c = np.array([[0.0, 0.5, 0.5], [1.0, 0.0, 0.0]])
    np.testing.assert_allclose(average([b, c], "geometric", [1.0, 0.0]), b, atol=1e-15)
