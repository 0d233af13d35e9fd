"""Task kinds: what the network outputs, how it is trained and scored.

The training loop only calls `loss`, `activate` and `score`; a task kind (classification now,
keypoint regression next) is one class here.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from foldwise import metrics


class Classification:
    kind = "classification"
    activation = "softmax"  # applied to outputs at predict time, also inside the exported model
    monitor = "logloss"  # the validation figure that picks the kept epoch (lower is better)

    def __init__(self, classes, label_smoothing: float = 0.0):
        self.classes = tuple(classes)
        self.num_outputs = len(self.classes)
        self.label_smoothing = float(label_smoothing)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, targets, label_smoothing=self.label_smoothing)

    def activate(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.float().softmax(dim=1)

    def score(self, targets: np.ndarray, preds: np.ndarray) -> dict:
        return {"logloss": metrics.multiclass_logloss(targets, preds),
                "accuracy": metrics.accuracy(targets, preds)}

    def targets(self, labels: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(labels, dtype=torch.long)


def create_task(name: str, classes, params: dict):
    if name == "classification":
        return Classification(classes, label_smoothing=params["train"]["label_smoothing"])
    raise ValueError(f"unknown task kind {name!r}")
