"""Temperature scaling: the fitted temperature is the log-loss minimum (checked against a brute
grid scored by scikit-learn), it recovers a known over-confidence, the cross-fitted OOF figure
never sees the rows it scores, and the exported bag tempers exactly as numpy does."""
import numpy as np
import pytest
import torch
from scipy.special import softmax
from sklearn.metrics import log_loss

from foldwise.ensemble import calibration
from foldwise.deploy.program import Bagged
from foldwise.tasks import Classification


def overconfident(n=4000, classes=5, factor=3.0, seed=0):
    """Labels drawn from softmax(z); predictions softmax(factor * z): too sure by `factor`."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, classes)) * 1.2
    truth = softmax(z, axis=1)
    labels = np.array([rng.choice(classes, p=p) for p in truth])
    return softmax(factor * z, axis=1), labels


def test_temperature_is_the_minimum_of_scikit_learns_log_loss():
    probs, labels = overconfident(n=1500, factor=2.0)
    t = calibration.fit(probs, labels)
    grid = np.exp(np.linspace(np.log(0.2), np.log(10), 1500))
    losses = [log_loss(labels, softmax(np.log(probs) / g, axis=1), labels=range(5)) for g in grid]
    best = grid[int(np.argmin(losses))]
    assert t == pytest.approx(best, rel=0.01)
    assert calibration.fit(probs, labels) == t  # deterministic


def test_a_known_overconfidence_is_recovered_and_accuracy_is_unchanged():
    probs, labels = overconfident(factor=3.0)
    t = calibration.fit(probs, labels)
    assert 2.6 < t < 3.4, t
    tempered = calibration.temper(probs, t)
    assert log_loss(labels, tempered) < log_loss(labels, probs) - 0.1
    np.testing.assert_array_equal(tempered.argmax(1), probs.argmax(1))
    np.testing.assert_allclose(calibration.temper(probs, 1.0), probs, atol=1e-12)


def test_each_folds_temperature_is_fit_without_its_own_rows():
    probs, labels = overconfident(n=1200, factor=2.5)
    folds = np.arange(len(labels)) % 3
    out, temps = calibration.cross_fitted(probs, labels, folds)
    for k in range(3):
        rows = folds == k
        assert temps[k] == pytest.approx(calibration.fit(probs[~rows], labels[~rows]))
        np.testing.assert_allclose(out[rows], calibration.temper(probs[rows], temps[k]))
    # scrambling fold 0's labels changes no temperature used on fold 0
    shuffled = labels.copy()
    shuffled[folds == 0] = np.random.default_rng(1).permutation(labels[folds == 0])
    _, again = calibration.cross_fitted(probs, shuffled, folds)
    assert again[0] == temps[0] and again[1] != temps[1]


class Fixed(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", torch.tensor(logits, dtype=torch.float32))

    def forward(self, x):
        return self.logits[: x.shape[0]]


@pytest.mark.parametrize("mean", ["arithmetic", "geometric"])
def test_the_exported_bag_tempers_as_numpy_does(mean):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 4)) * 3, rng.normal(size=(6, 4)) * 3
    images = torch.zeros((6, 8, 8, 3), dtype=torch.uint8)
    task = Classification(["a", "b", "c", "d"])
    plain = Bagged([Fixed(a), Fixed(b)], task.head(), mean, task.tempering(1.0))(images).double().numpy()
    tempered = Bagged([Fixed(a), Fixed(b)], task.head(), mean, task.tempering(1.7))(images).double().numpy()
    np.testing.assert_allclose(tempered, calibration.temper(plain, 1.7), atol=1e-6)
    assert np.abs(tempered - plain).max() > 0.01
