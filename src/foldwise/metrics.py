"""Scores computed exactly as the competitions compute them."""
from __future__ import annotations

import numpy as np

EPS = 1e-15


def clip_renormalise(probs: np.ndarray, eps: float = EPS) -> np.ndarray:
    """Kaggle's multi-class log loss treatment: clip to [eps, 1-eps], rescale rows to sum to 1."""
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1 - eps)
    return p / p.sum(axis=1, keepdims=True)


def multiclass_logloss(labels: np.ndarray, probs: np.ndarray, eps: float = EPS) -> float:
    p = clip_renormalise(probs, eps)
    labels = np.asarray(labels, dtype=np.int64)
    return float(-np.mean(np.log(p[np.arange(len(labels)), labels])))


def accuracy(labels: np.ndarray, probs: np.ndarray) -> float:
    return float(np.mean(np.asarray(probs).argmax(axis=1) == np.asarray(labels)))


def per_class(labels: np.ndarray, probs: np.ndarray, classes) -> list[dict]:
    """Log loss, recall and count for the rows of each true class."""
    labels = np.asarray(labels)
    rows = []
    for k, name in enumerate(classes):
        mask = labels == k
        if not mask.any():
            continue
        rows.append({"class": name, "count": int(mask.sum()),
                     "logloss": multiclass_logloss(labels[mask], probs[mask]),
                     "recall": accuracy(labels[mask], probs[mask])})
    return rows


def top_k_accuracy(labels: np.ndarray, probs: np.ndarray, k: int) -> float:
    top = np.argsort(-np.asarray(probs), axis=1)[:, :k]
    return float(np.mean((top == np.asarray(labels)[:, None]).any(axis=1)))


def masked_rmse(targets: np.ndarray, preds: np.ndarray) -> float:
    """RMSE over the coordinates that exist (NaN targets are missing labels, not zeros)."""
    targets, preds = np.asarray(targets, dtype=np.float64), np.asarray(preds, dtype=np.float64)
    mask = ~np.isnan(targets)
    return float(np.sqrt(np.mean((preds[mask] - targets[mask]) ** 2))) if mask.any() else float("nan")


def binary_logloss(targets: np.ndarray, probs: np.ndarray, eps: float = EPS) -> float:
    """Mean binary log loss over every (image, tag) pair: multi-label's monitored figure."""
    y = np.asarray(targets, dtype=np.float64)
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def f_beta_samples(targets: np.ndarray, decisions: np.ndarray, beta: float = 2.0) -> float:
    """F-beta of each image's predicted tag set against its true one, averaged over images
    (Planet's F2); an image with no true and no predicted tag scores 0, as scikit-learn does."""
    y, d = np.asarray(targets) > 0.5, np.asarray(decisions) > 0.5
    tp = (y & d).sum(axis=1)
    precision = np.divide(tp, d.sum(axis=1), out=np.zeros(len(y)), where=d.sum(axis=1) > 0)
    recall = np.divide(tp, y.sum(axis=1), out=np.zeros(len(y)), where=y.sum(axis=1) > 0)
    b2 = beta * beta
    denom = b2 * precision + recall
    f = np.divide((1 + b2) * precision * recall, denom, out=np.zeros(len(y)), where=denom > 0)
    return float(f.mean())


THRESHOLD_GRID = np.linspace(0.02, 0.98, 49)


def fit_thresholds(targets: np.ndarray, probs: np.ndarray, beta: float = 2.0,
                   rounds: int = 2) -> np.ndarray:
    """One threshold per tag that maximises the sample-averaged F-beta, by coordinate ascent
    over a grid from 0.5 (each tag in turn, the others held), as Planet's winners fit theirs."""
    t = np.full(probs.shape[1], 0.5)
    for _ in range(rounds):
        for k in range(probs.shape[1]):
            scores = []
            for value in THRESHOLD_GRID:
                t[k] = value
                scores.append(f_beta_samples(targets, probs >= t, beta))
            t[k] = THRESHOLD_GRID[int(np.argmax(scores))]
    return t


def fidelity(teacher: np.ndarray, student: np.ndarray) -> dict:
    """One set of class probabilities (`student`) against another (`teacher`): its
    cross-entropy against them (clipped as Kaggle's log loss is) and the share of rows whose top
    classes agree (the distilled student against its teacher, the refit network against the
    bag)."""
    t = np.asarray(teacher, dtype=np.float64)
    p = clip_renormalise(student)
    return {"logloss": float(-(t * np.log(p)).sum(axis=1).mean()),
            "agreement": float((t.argmax(axis=1) == p.argmax(axis=1)).mean())}
