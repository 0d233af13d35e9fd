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
