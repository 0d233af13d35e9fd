import numpy as np
import pytest
from sklearn.metrics import log_loss

from foldwise import metrics


@pytest.mark.parametrize("seed", range(5))
def test_logloss_matches_scikit_learn_on_random_inputs(seed):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(10), size=200)
    labels = rng.integers(0, 10, size=200)
    ours = metrics.multiclass_logloss(labels, probs)
    assert ours == pytest.approx(log_loss(labels, probs, labels=np.arange(10)), rel=1e-12)


def test_rows_that_do_not_sum_to_one_are_renormalised_like_scikit_learn():
    rng = np.random.default_rng(7)
    probs = rng.uniform(0.05, 1.0, size=(50, 4))  # unnormalised scores
    labels = rng.integers(0, 4, size=50)
    expected = log_loss(labels, probs / probs.sum(1, keepdims=True), labels=np.arange(4))
    assert metrics.multiclass_logloss(labels, probs) == pytest.approx(expected, rel=1e-12)


def test_a_confident_miss_is_clipped_at_1e_15():
    probs = np.array([[0.0, 1.0], [1.0, 0.0]])
    labels = np.array([0, 0])
    # row 0: p(true) clipped to 1e-15, renormalised by 1 (1e-15 + (1 - 1e-15)); row 1: ~0
    expected = (-np.log(1e-15) + -np.log(1 - 1e-15)) / 2
    assert metrics.multiclass_logloss(labels, probs) == pytest.approx(expected, rel=1e-9)


def test_accuracy_and_per_class_figures():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 1, 1, 1])
    assert metrics.accuracy(labels, probs) == 0.75
    rows = {r["class"]: r for r in metrics.per_class(labels, probs, ["a", "b"])}
    assert rows["a"]["count"] == 1 and rows["a"]["recall"] == 1.0
    assert rows["b"]["recall"] == pytest.approx(2 / 3)
    assert rows["b"]["logloss"] == pytest.approx(-np.mean(np.log([0.8, 0.4, 0.7])))
