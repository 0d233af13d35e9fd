"""Distillation: one network trained against the bag's class probabilities instead of the
labels, so that deployment costs one forward pass instead of one per fold (AutoGluon's
`distill`, Hinton et al.'s soft targets).

`Distilled` wraps a class task for the training loop: its targets are probability rows (the
teacher's), its loss the cross-entropy against them (the KL divergence from the teacher up to
the teacher's own entropy), its figures that cross-entropy (`logloss`) and how often the top
classes agree (`agreement`). The teacher's row for a training image is its out-of-fold
prediction, made by folds that never saw that image's label; the student still trains on
every training image, so its own figures on them are not out-of-fold and are never reported
as if they were. It is validated (its epoch kept) on the test images against the teacher's
test predictions: how faithfully it reproduces the bag where the bag would have been used, with
no label involved.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from foldwise.errors import InputError
from foldwise.metrics import fidelity  # noqa: F401  (soft_targets.fidelity: the student against its teacher)
from foldwise.tasks import of_classes


class Distilled:
    """A class task whose targets are the teacher's probabilities (see the module's text)."""
    monitor = "logloss"
    probabilities = True
    mixes = False  # timm's Mixup blends class indices, not probability rows
    erases = True  # an erased rectangle leaves the teacher's row as it is
    view_outputs: dict = {}
    fp32_head = False

    def __init__(self, task):
        if not of_classes(task):
            raise InputError("params.yaml: distill.model: distillation needs a class task "
                             "(its outputs are class probabilities); this task's are not")
        self.task = task
        self.classes, self.columns = task.classes, task.columns
        self.num_outputs = task.num_outputs

    def targets(self, probs: np.ndarray) -> torch.Tensor:
        probs = np.asarray(probs, dtype=np.float32)
        if probs.ndim != 2 or probs.shape[1] != self.num_outputs:
            raise InputError(f"teacher predictions of shape {probs.shape}: expected rows of "
                             f"{self.num_outputs} class probabilities")
        return torch.as_tensor(probs)

    def augment_targets(self, targets: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        return targets  # a class survives a shift or a zoom

    def values(self, targets: torch.Tensor) -> np.ndarray:
        return targets.float().cpu().numpy()

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, targets)  # probability targets

    def activate(self, outputs: torch.Tensor) -> torch.Tensor:
        return self.task.activate(outputs)

    def score(self, targets: np.ndarray, preds: np.ndarray) -> dict:
        return fidelity(targets, preds)

    def head(self):
        return self.task.head()


def teacher_predictions(task, bagged: Path, metrics_json: Path, train_ids) -> tuple[np.ndarray, np.ndarray]:
    """(the training images' targets, the test images' teacher predictions): the bag's
    out-of-fold and test probabilities, tempered with evaluate's temperature where calibration
    ran (as the exported bag gives them), the first in the order of `train_ids`."""
    from foldwise.ensemble.stack import shipped_probabilities
    oof = pd.read_csv(Path(bagged) / "oof.csv", dtype={"id": str, "group": str})
    test = pd.read_csv(Path(bagged) / "test.csv", dtype={"id": str})
    if not oof["id"].equals(pd.Series(list(train_ids), dtype=str, name="id")):
        raise InputError(f"{Path(bagged) / 'oof.csv'} and the training table list different "
                         "images: rerun the bag stage")
    return (shipped_probabilities(oof, task, metrics_json),
            shipped_probabilities(test, task, metrics_json))
