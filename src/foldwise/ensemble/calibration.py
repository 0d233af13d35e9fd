"""Temperature scaling of class probabilities, fit out-of-fold.

Log loss punishes confident mistakes; one temperature T, fit on out-of-fold predictions, turns
probabilities p into softmax(log p / T) (T > 1 softens, T < 1 sharpens; the ranking, hence the
accuracy, never changes). The OOF score after calibration is cross-fitted: each fold's rows are
tempered with a T fit on the other folds' rows only, so the reported figure is an honest
estimate, not one flattered by fitting T on the rows it scores. The T applied to the test set
(and inside the exported model) is fit on all OOF rows.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

from foldwise.metrics import clip_renormalise, multiclass_logloss

BOUNDS = (np.log(0.05), np.log(20.0))  # temperatures from 0.05 to 20


def temper(probs: np.ndarray, t: float) -> np.ndarray:
    """softmax(log p / t) for rows of probabilities."""
    z = np.log(clip_renormalise(probs)) / t
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit(probs: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises the log loss of `probs` against `labels`."""
    res = minimize_scalar(lambda log_t: multiclass_logloss(labels, temper(probs, np.exp(log_t))),
                          bounds=BOUNDS, method="bounded", options={"xatol": 1e-5})
    return float(np.exp(res.x))


def cross_fitted(probs: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> tuple[np.ndarray, dict]:
    """Each fold's rows tempered with a temperature fit on the other folds' rows; returns the
    tempered probabilities and the temperature used for each fold."""
    out = np.empty_like(np.asarray(probs, dtype=np.float64))
    temps = {}
    for k in np.unique(folds):
        rows = folds == k
        temps[k.item()] = fit(probs[~rows], labels[~rows])
        out[rows] = temper(probs[rows], temps[k.item()])
    return out, temps
