"""Task kinds: what the network outputs, how it is trained, scored, reported and exported.

Every difference between task kinds is a member of its class here, and nothing outside this
module asks which kind a task is:
- training: `targets`, `augment_targets`, `loss`, `activate`, `score`, `monitor`, `mixes`,
  `erases`, `fp32_head`;
- test-time views: `view_outputs` (how a warped view's outputs map back to the image);
- the bag and calibration: `probabilities` (geometric means and temperatures apply);
- evaluate: `report`, `item_loss`, `baselines`, `confusion`, `reliability`, `item_columns`;
- export and predict: `head`, `tempering`, `decision` (what is fit out-of-fold), `postprocess`.
Another kind is one more class and one line in `create_task`. `Task` states what every kind
provides, `ClassTask` what kinds whose outputs are class probabilities add (distillation and
pseudo-labels need them); a type checker holds the classes to them (`make test-fast`).
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from foldwise import metrics
from foldwise.params import Params


@runtime_checkable
class Task(Protocol):
    """What every task kind provides (see the module's text for who reads what)."""
    monitor: str  # the validation figure that keeps an epoch (lower is better)
    baselines: tuple[str, ...]  # report() figures of the data, not of the model
    outputs_are: str  # what its columns are, in a sentence
    probabilities: bool  # rows of class probabilities: geometric bags, temperatures
    mixes: bool  # timm's mixup and cutmix may blend its targets
    erases: bool  # timm's random erasing leaves its targets true
    view_outputs: dict  # how a warped test-time view's outputs map back
    columns: list[str]  # the prediction table's columns, one per output
    num_outputs: int
    fp32_head: bool  # the head runs in float32 under autocast

    def targets(self, values: np.ndarray) -> torch.Tensor: ...
    def augment_targets(self, targets: torch.Tensor, theta: torch.Tensor) -> torch.Tensor: ...
    def values(self, targets: torch.Tensor) -> np.ndarray: ...
    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...
    def activate(self, outputs: torch.Tensor) -> torch.Tensor: ...
    def score(self, targets: np.ndarray, preds: np.ndarray) -> dict: ...
    def item_loss(self, targets: np.ndarray, preds: np.ndarray) -> np.ndarray: ...
    def report(self, targets: np.ndarray, preds: np.ndarray,
               folds=None) -> tuple[dict, pd.DataFrame]: ...
    def head(self) -> nn.Module: ...
    def tempering(self, temperature: float) -> nn.Module | None: ...
    def confusion(self, truth: np.ndarray, preds: np.ndarray) -> pd.DataFrame: ...
    def reliability(self, truth: np.ndarray, preds: np.ndarray,
                    bins: int = 10) -> pd.DataFrame: ...
    def item_columns(self, truth: np.ndarray, preds: np.ndarray) -> dict: ...
    def decision(self, summary: dict) -> dict: ...
    def postprocess(self, preds: np.ndarray, decision: dict) -> np.ndarray: ...


@runtime_checkable
class ClassTask(Task, Protocol):
    """A task whose outputs are one probability per class (`probabilities` true): what
    distillation's soft targets and pseudo-labels need beside `Task`."""
    classes: tuple[str, ...]
    label_smoothing: float

    def clip_bound(self, targets: np.ndarray, preds: np.ndarray, folds=None) -> dict: ...


def of_classes(task) -> bool:
    """`task` gives one probability per class (a `ClassTask` with `probabilities`)."""
    return isinstance(task, ClassTask) and task.probabilities

CLIP_GRID = np.concatenate([[0.0], np.geomspace(1e-4, 0.1, 61)])
RELIABILITY_COLUMNS = ["confidence", "accuracy", "perfect", "images"]


class Softmax(nn.Module):
    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y.softmax(dim=1)


class Sigmoid(nn.Module):
    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y.sigmoid()


class Affine(nn.Module):
    """Outputs in [-1, 1] (grid_sample's frame) to pixels: y * scale + offset."""

    def __init__(self, scale, offset):
        super().__init__()
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32))
        self.register_buffer("offset", torch.tensor(offset, dtype=torch.float32))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.scale + self.offset


class Tempered(nn.Module):
    """Bagged class probabilities tempered in float64, as `calibration.temper` does."""

    def __init__(self, temperature: float):
        super().__init__()
        self.register_buffer("temperature", torch.tensor(float(temperature), dtype=torch.float64))

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        q = p.double().clamp(metrics.EPS, 1 - metrics.EPS)
        q = q / q.sum(dim=1, keepdim=True)
        return (q.log() / self.temperature).softmax(dim=1).float()


def reliability_table(conf: np.ndarray, right: np.ndarray, low: float, bins: int) -> pd.DataFrame:
    """Predictions binned by confidence from `low` to 1: each bin's mean confidence against how
    often it was right (`perfect` is the diagonal a calibrated model follows)."""
    edges = np.linspace(low, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, bins - 1)
    rows = [(conf[which == b].mean(), right[which == b].mean(), conf[which == b].mean(),
             int((which == b).sum())) for b in range(bins) if (which == b).any()]
    return pd.DataFrame(rows, columns=RELIABILITY_COLUMNS)


class Classification:
    monitor = "logloss"  # the validation figure that picks the kept epoch (lower is better)
    baselines: tuple[str, ...] = ("prior_logloss",)  # report() figures of the data, not of the model
    outputs_are = "classes"  # what its columns are, in a sentence (foldwise-report's card)
    probabilities = True  # outputs are probabilities: geometric bags and temperatures apply
    mixes = True  # timm's mixup and cutmix blend its targets
    erases = True  # timm's random erasing leaves the label as it is
    view_outputs: dict = {}  # a class survives a warp: the views' outputs average as they are
    fp32_head = False  # logits: bfloat16 is fine under autocast

    def __init__(self, classes, label_smoothing: float = 0.0):
        self.classes = tuple(classes)
        self.columns = list(self.classes)
        self.num_outputs = len(self.classes)
        self.label_smoothing = float(label_smoothing)

    def targets(self, labels: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(labels), dtype=torch.long)

    def augment_targets(self, targets: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        return targets  # a class survives a shift or a zoom

    def values(self, targets: torch.Tensor) -> np.ndarray:
        """Training targets back in the form `score` takes."""
        return targets.cpu().numpy()

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, targets, label_smoothing=self.label_smoothing)

    def activate(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.float().softmax(dim=1)

    def score(self, targets: np.ndarray, preds: np.ndarray) -> dict:
        return {"logloss": metrics.multiclass_logloss(targets, preds),
                "accuracy": metrics.accuracy(targets, preds)}

    def item_loss(self, targets: np.ndarray, preds: np.ndarray) -> np.ndarray:
        """Each image's own log loss, for listing the worst (often mislabelled) images."""
        p = metrics.clip_renormalise(preds)
        return -np.log(p[np.arange(len(targets)), np.asarray(targets, dtype=int)])

    def report(self, targets: np.ndarray, preds: np.ndarray, folds=None) -> tuple[dict, pd.DataFrame]:
        """Out-of-fold summary and a per-class table."""
        summary = self.score(targets, preds)
        if self.num_outputs >= 5:
            summary["top5_accuracy"] = metrics.top_k_accuracy(targets, preds, 5)
        prior = np.bincount(np.asarray(targets, dtype=int), minlength=self.num_outputs) / len(targets)
        summary["prior_logloss"] = metrics.multiclass_logloss(targets, np.tile(prior, (len(targets), 1)))
        if self.num_outputs == 2:
            summary.update(self.clip_bound(np.asarray(targets), np.asarray(preds), folds))
        return summary, pd.DataFrame(metrics.per_class(targets, preds, self.classes))

    def clip_bound(self, targets: np.ndarray, preds: np.ndarray, folds=None) -> dict:
        """Log loss punishes confident mistakes: bound the probabilities (seed 003 guessed
        0.005). `clip`, for the test set, is the bound best on every OOF row; its figure
        `logloss_clipped` is cross-fitted like the temperature: each fold's rows clipped with
        the bound best on the other folds' rows, never the rows it is scored on (without
        `folds`, the bound's own rows: `logloss_clipped_in_sample`)."""
        def best(rows) -> float:
            losses = [metrics.multiclass_logloss(targets[rows], self.postprocess(preds[rows], {"clip": c}))
                      for c in CLIP_GRID]
            return float(CLIP_GRID[int(np.argmin(losses))])

        everywhere = best(np.ones(len(targets), dtype=bool))
        if folds is None:
            return {"clip": everywhere, "logloss_clipped_in_sample": metrics.multiclass_logloss(
                targets, self.postprocess(preds, {"clip": everywhere}))}
        folds, clipped = np.asarray(folds), np.empty_like(preds, dtype=np.float64)
        for k in np.unique(folds):
            rows = folds == k
            clipped[rows] = self.postprocess(preds[rows], {"clip": best(~rows)})
        return {"clip": everywhere, "logloss_clipped": metrics.multiclass_logloss(targets, clipped)}

    def head(self) -> nn.Module:
        """What the exported bag applies to each network's outputs."""
        return Softmax()

    def tempering(self, temperature: float) -> nn.Module | None:
        return Tempered(temperature) if temperature != 1.0 else None

    def confusion(self, truth: np.ndarray, preds: np.ndarray) -> pd.DataFrame:
        """Actual and predicted class of each image (DVC's confusion template)."""
        return pd.DataFrame({"actual": [self.columns[i] for i in truth],
                             "predicted": [self.columns[i] for i in preds.argmax(1)]})

    def reliability(self, truth: np.ndarray, preds: np.ndarray, bins: int = 10) -> pd.DataFrame:
        """The confidence of each image's top class against how often it was right."""
        return reliability_table(preds.max(1), preds.argmax(1) == truth, 1.0 / preds.shape[1], bins)

    def item_columns(self, truth: np.ndarray, preds: np.ndarray) -> dict:
        """Columns that describe listed images (the hardest): label, prediction, p of label."""
        return {"label": [self.columns[i] for i in truth],
                "predicted": [self.columns[i] for i in preds.argmax(1)],
                "p_label": preds[np.arange(len(truth)), truth]}

    def decision(self, summary: dict) -> dict:
        """What the submission applies, as fit out-of-fold (`report`'s summary): a clip bound."""
        return {"clip": float(summary.get("clip", 0.0))}

    def postprocess(self, preds: np.ndarray, decision: dict) -> np.ndarray:
        """The submission's values: probabilities, bounded by the clip fit out-of-fold."""
        clip = decision.get("clip", 0.0)
        if not clip:
            return preds
        p = np.clip(preds, clip, 1 - clip)
        return p / p.sum(axis=1, keepdims=True)


class Keypoints:
    """Coordinates in pixels of the source image; the network predicts them in [-1, 1]
    (grid_sample's frame), so they follow the augmentation's affine warp exactly."""

    monitor = "rmse"
    baselines: tuple[str, ...] = ("mean_baseline_rmse",)
    outputs_are = "keypoint coordinates"
    probabilities = False
    mixes = False
    erases = False  # an erased point's target would stay where nothing shows it
    fp32_head = True  # coordinates: the classifier stays in float32 under autocast

    def __init__(self, names, image_size, flip_pairs=()):
        self.columns = list(names)
        self.num_outputs = len(self.columns)
        h, w = image_size
        self.half = np.tile([w / 2.0, h / 2.0], self.num_outputs // 2)  # x, y, x, y, ...
        self.size = np.tile([w, h], self.num_outputs // 2)
        self.flip_pairs = [tuple(p) for p in flip_pairs]
        # a warped view's points go back to the image; a mirror swaps left and right points
        self.view_outputs = {"points": True, "outputs": self.num_outputs,
                             "flip_pairs": self.flip_pairs}

    def to_unit(self, pixels: np.ndarray) -> np.ndarray:
        return (np.asarray(pixels, dtype=np.float64) + 0.5) / self.half - 1.0

    def targets(self, values: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(self.to_unit(values), dtype=torch.float32)

    def augment_targets(self, targets: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """Move points with the pixels: the warp samples input at theta @ output, so a point
        q lands at A^-1 (q - t). A mirror swaps left and right points; a point pushed out of
        the frame becomes missing (masked), rather than a label outside the image."""
        n = targets.shape[0]
        q = targets.view(n, -1, 2)
        a, t = theta[:, :, :2].to(q), theta[:, :, 2].to(q)
        p = torch.linalg.solve(a, (q - t[:, None, :]).transpose(1, 2)).transpose(1, 2)
        p = p.masked_fill((p.abs() > 1).any(dim=2, keepdim=True), float("nan"))
        out = p.reshape(n, -1)
        flipped = torch.linalg.det(a) < 0
        if self.flip_pairs and flipped.any():
            idx = torch.arange(out.shape[1])
            for i, j in self.flip_pairs:
                idx[i], idx[j] = j, i
            out = torch.where(flipped[:, None], out[:, idx], out)
        return out

    def values(self, targets: torch.Tensor) -> np.ndarray:
        return self.activate(targets).double().cpu().numpy()

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        mask = ~torch.isnan(targets)
        diff = torch.where(mask, outputs.float() - torch.nan_to_num(targets), 0.0)
        return (diff ** 2).sum() / mask.sum().clamp_min(1)

    def activate(self, outputs: torch.Tensor) -> torch.Tensor:
        half = torch.as_tensor(self.half, dtype=torch.float32, device=outputs.device)
        return (outputs.float() + 1.0) * half - 0.5

    def score(self, targets: np.ndarray, preds: np.ndarray) -> dict:
        return {"rmse": metrics.masked_rmse(targets, preds)}

    def item_loss(self, targets: np.ndarray, preds: np.ndarray) -> np.ndarray:
        err = (np.asarray(preds) - np.asarray(targets)) ** 2
        return np.sqrt(np.nanmean(err, axis=1))

    def report(self, targets: np.ndarray, preds: np.ndarray, folds=None) -> tuple[dict, pd.DataFrame]:
        mean = np.nanmean(targets, axis=0)
        summary = {"rmse": metrics.masked_rmse(targets, preds),
                   "mean_baseline_rmse": metrics.masked_rmse(targets, np.tile(mean, (len(targets), 1)))}
        names = [c[: -len("_x")] for c in self.columns[::2]]
        rows = [{"keypoint": name, "count": int((~np.isnan(targets[:, 2 * k])).sum()),
                 "rmse": metrics.masked_rmse(targets[:, 2 * k:2 * k + 2], preds[:, 2 * k:2 * k + 2])}
                for k, name in enumerate(names)]
        return summary, pd.DataFrame(rows)

    def head(self) -> nn.Module:
        """From the network's [-1, 1] outputs to pixels, as `activate`."""
        return Affine(self.half.tolist(), (self.half - 0.5).tolist())

    def tempering(self, temperature: float) -> nn.Module | None:
        return None  # coordinates have no temperature

    def confusion(self, truth, preds) -> pd.DataFrame:
        return pd.DataFrame(columns=["actual", "predicted"])

    def reliability(self, truth, preds, bins: int = 10) -> pd.DataFrame:
        return pd.DataFrame(columns=RELIABILITY_COLUMNS)

    def item_columns(self, truth, preds) -> dict:
        return {}

    def decision(self, summary: dict) -> dict:
        return {}

    def postprocess(self, preds: np.ndarray, decision: dict) -> np.ndarray:
        """Predictions clipped to the image."""
        return np.clip(preds, 0.0, self.size - 1)


class MultiLabel:
    """Any number of tags per image (Planet's "Understanding the Amazon", Human Protein Atlas):
    one sigmoid per tag, trained with binary cross-entropy; the mean binary log loss picks the
    kept epoch, and the submission lists each image's tags whose probability reaches a
    per-tag threshold fit out-of-fold for the sample-averaged F2 (cross-fitted, like the
    temperature: each fold's rows are decided by thresholds fit on the other folds)."""

    monitor = "logloss"
    baselines: tuple[str, ...] = ("prior_logloss", "prior_f2")
    outputs_are = "tags"
    probabilities = False  # not rows that sum to one: no geometric bag, no temperature
    mixes = False  # timm's Mixup one-hot encodes single labels
    erases = True
    view_outputs: dict = {}  # tags survive a warp
    fp32_head = False

    def __init__(self, tags):
        self.columns = list(tags)
        self.num_outputs = len(self.columns)

    def targets(self, values: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(values), dtype=torch.float32)

    def augment_targets(self, targets: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        return targets

    def values(self, targets: torch.Tensor) -> np.ndarray:
        return targets.cpu().numpy()

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(outputs.float(), targets)

    def activate(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.float().sigmoid()

    def score(self, targets: np.ndarray, preds: np.ndarray) -> dict:
        """Training and validation figures: the log loss, and F2 at thresholds of 0.5."""
        return {"logloss": metrics.binary_logloss(targets, preds),
                "f2": metrics.f_beta_samples(targets, preds >= 0.5)}

    def item_loss(self, targets: np.ndarray, preds: np.ndarray) -> np.ndarray:
        y, p = np.asarray(targets), np.clip(preds, metrics.EPS, 1 - metrics.EPS)
        return -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p), axis=1)

    def cross_fitted_f2(self, targets, preds, folds) -> float:
        decided = np.zeros_like(preds, dtype=bool)
        for k in np.unique(folds):
            rows = folds == k
            decided[rows] = preds[rows] >= metrics.fit_thresholds(targets[~rows], preds[~rows])
        return metrics.f_beta_samples(targets, decided)

    def report(self, targets: np.ndarray, preds: np.ndarray, folds=None) -> tuple[dict, pd.DataFrame]:
        """Log loss and F2 at 0.5, thresholds fit on all rows (for the test set) and, with
        `folds`, F2 with cross-fitted thresholds (honest); the prior's figures; a per-tag table."""
        t = metrics.fit_thresholds(targets, preds)
        prior = np.tile(targets.mean(axis=0), (len(targets), 1))
        summary = {**self.score(targets, preds), "thresholds": dict(zip(self.columns, t.tolist())),
                   "prior_logloss": metrics.binary_logloss(targets, prior),
                   "prior_f2": metrics.f_beta_samples(targets, prior >= metrics.fit_thresholds(
                       targets, prior))}
        if folds is not None:
            summary["f2_thresholds"] = self.cross_fitted_f2(targets, preds, np.asarray(folds))
        rows = [{"tag": tag, "count": int(targets[:, k].sum()),
                 "logloss": metrics.binary_logloss(targets[:, k], preds[:, k]),
                 "threshold": float(t[k])} for k, tag in enumerate(self.columns)]
        return summary, pd.DataFrame(rows)

    def head(self) -> nn.Module:
        return Sigmoid()

    def tempering(self, temperature: float) -> nn.Module | None:
        return None

    def confusion(self, truth, preds) -> pd.DataFrame:
        return pd.DataFrame(columns=["actual", "predicted"])

    def reliability(self, truth: np.ndarray, preds: np.ndarray, bins: int = 10) -> pd.DataFrame:
        """Every (image, tag) probability against how often the tag was there."""
        return reliability_table(preds.ravel(), np.asarray(truth).ravel() > 0.5, 0.0, bins)

    def tag_string(self, row) -> str:
        return " ".join(tag for tag, on in zip(self.columns, row) if on > 0.5)

    def item_columns(self, truth: np.ndarray, preds: np.ndarray) -> dict:
        return {"label": [self.tag_string(r) for r in truth],
                "predicted": [self.tag_string(r >= 0.5) for r in preds]}

    def decision(self, summary: dict) -> dict:
        """The per-tag thresholds fit out-of-fold, in column order."""
        return {"thresholds": [float(summary["thresholds"][tag]) for tag in self.columns]}

    def postprocess(self, preds: np.ndarray, decision: dict) -> np.ndarray:
        """1 where a tag is predicted, else 0 (the submission lists the tags)."""
        t = np.asarray(decision.get("thresholds", [0.5] * self.num_outputs))
        return (np.asarray(preds) >= t).astype(np.float64)


def create_task(meta: dict, params: Params | None = None) -> Task:
    """The task kind that preprocess recorded for the data (`meta.json`); `params` only shape
    training (predict passes none)."""
    if meta["task"] == "classification":
        smoothing = params.train.label_smoothing if params else 0.0
        return Classification(meta["classes"], label_smoothing=smoothing)
    if meta["task"] == "keypoints":
        return Keypoints(meta["target_names"], meta["image_size"], meta["flip_pairs"])
    if meta["task"] == "multilabel":
        return MultiLabel(meta["target_names"])
    raise ValueError(f"unknown task kind {meta['task']!r}")
