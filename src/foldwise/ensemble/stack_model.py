"""A second-level model over the bag's out-of-fold predictions (stacking).

State Farm's 3rd place fitted a model on each image's out-of-fold prediction together with its
nearest neighbours' predictions and similarities, and took single models' CV from 0.31 to 0.19.
Here the features of an image are the logarithms of its bagged class probabilities and, with
`stack.neighbours` n > 0, those of its n nearest images (the neighbours stage's graph: within
its validation fold for a training image, within the test set for a test image), each with its
cosine similarity, and their similarity-weighted mean (the neighbours stage's own average). The
model is a scikit-learn classifier by name.

Its OOF score is cross-fitted over the same folds: each fold's rows are predicted by a model fit
on the other folds' rows only, so the figure never saw the labels it scores. (The features of
those other rows are themselves out-of-fold predictions, as in any stacking.) The model applied
to the test set is fit on every OOF row.

Where the model is linear in an image's own features (`logistic` without neighbours), it is
also a layer of the exported program (`linear_form`), so `foldwise-predict` and the MLflow
model apply it as the submission does; with neighbours its features are set-level, and the
export ships its weights beside a feature program (`deploy.setlevel`), so `foldwise-predict`
reproduces it over the test folder; a boosted model has no such form and stays in the
submission only.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from foldwise.errors import InputError
from foldwise.metrics import clip_renormalise

MODELS = ("logistic", "hist_gradient_boosting")
MODEL_FILE = "model.pkl"


def make_model(name: str, c: float, seed: int):
    """A fresh scikit-learn classifier for `stack.model`."""
    if name == "logistic":
        from sklearn.linear_model import LogisticRegression
        return LogisticRegression(C=c, max_iter=2000)
    if name == "hist_gradient_boosting":
        from sklearn.ensemble import HistGradientBoostingClassifier
        return HistGradientBoostingClassifier(max_iter=100, learning_rate=0.05, max_leaf_nodes=15,
                                              l2_regularization=1.0 / c, early_stopping=False,
                                              random_state=seed)
    raise InputError(f"params.yaml: stack.model={name!r} must be '' (off) or one of "
                     f"{', '.join(MODELS)}")


def features(preds: np.ndarray, idx: np.ndarray, sim: np.ndarray, n: int) -> np.ndarray:
    """Rows of features: log p of the row, then for each of its `n` nearest neighbours (nearest
    first) log p and the similarity, then the neighbours' similarity-weighted mean of p (log)."""
    logp = np.log(clip_renormalise(np.asarray(preds, dtype=np.float64)))
    if n == 0:
        return logp
    if idx.shape[1] < n:
        raise InputError(f"params.yaml: stack.neighbours={n} needs a neighbour graph of at least "
                         f"{n} (neighbours.k is {idx.shape[1]})")
    idx, sim = idx[:, :n], np.asarray(sim[:, :n], dtype=np.float64)
    near = logp[idx]                                            # (rows, n, classes)
    w = np.clip(sim, 0.0, None)
    p = np.exp(logp)
    mean = (p + np.einsum("rn,rnc->rc", w, p[idx])) / (1.0 + w.sum(axis=1))[:, None]
    return np.hstack([logp, near.reshape(len(logp), -1), sim, np.log(clip_renormalise(mean))])


def cross_fitted(x: np.ndarray, y: np.ndarray, folds: np.ndarray, make) -> np.ndarray:
    """Each fold's rows predicted by `make()` fit on the other folds' rows only: class
    probabilities, columns for every class of `y` (a class a fit never saw gets 0)."""
    classes = np.unique(y)
    out = np.zeros((len(y), len(classes)))
    for k in np.unique(folds):
        rows = folds == k
        model = make().fit(x[~rows], y[~rows])
        out[np.ix_(rows, np.searchsorted(classes, model.classes_))] = model.predict_proba(x[rows])
    return out


def fit(x: np.ndarray, y: np.ndarray, make):
    """The model the test set gets: fit on every OOF row."""
    return make().fit(x, y)


def predict(model, x: np.ndarray, n_classes: int) -> np.ndarray:
    """Class probabilities of every class 0..n_classes-1 (a class absent in training gets 0)."""
    out = np.zeros((len(x), n_classes))
    out[:, model.classes_] = model.predict_proba(x)
    return out


def load_model(folder: str | Path):
    """The stack stage's saved model, or None where the stage is off (an empty folder)."""
    path = Path(folder) / MODEL_FILE
    return pickle.loads(path.read_bytes()) if path.is_file() else None


def linear_form(model, n: int, n_classes: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(W, b) with `predict(model, features(p, ..., n), n_classes)` = softmax(log p @ W + b),
    where the model is a logistic regression on an image's own log probabilities (n = 0) that
    saw every class; else None (the model is applied in the submission only)."""
    return None if n else linear_weights(model, n_classes)


def linear_weights(model, n_classes: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(W, b) with `predict(model, x, n_classes)` = softmax(x @ W + b) for a logistic regression
    that saw every class, over whatever features it was fit on; else None. Two classes:
    scikit-learn's sigmoid of one decision value z is the softmax of (0, z)."""
    from sklearn.linear_model import LogisticRegression
    if not isinstance(model, LogisticRegression) or len(model.classes_) != n_classes:
        return None
    coef, intercept = np.asarray(model.coef_, np.float64), np.asarray(model.intercept_, np.float64)
    if n_classes == 2:
        return (np.hstack([np.zeros((coef.shape[1], 1)), coef.T]),
                np.array([0.0, intercept[0]]))
    return coef.T.copy(), intercept.copy()
