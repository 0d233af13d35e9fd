"""Set-level steps: what the submission computes over the whole set of images predicted together,
reproduced from the exported files alone, so that `foldwise-predict` on the test folder writes
the export's own submission.

Test-neighbour averaging (`neighbours.k`) and a logistic stack over neighbour features
(`stack.neighbours` n > 0) need each image's nearest images among those predicted with it. The
export holds what that takes besides the bag's program: `features.pt2`, the bagged fold
networks' feature directions (each fold's L2-normalised pre-logits features, averaged and
normalised again, as the neighbours stage computes them), and `stack.json`, the logistic
stack's weights as plain numbers (no pickle: loading it runs no code). The export stage writes
the submission through the same functions, from the same files, so the two cannot drift apart.
A boosted stack has no such form: foldwise-predict refuses it, naming the param.

The MLflow model serves one request at a time, whose images are no test set: it is not logged
where the submission applies a set-level step (`export.set_level`).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from foldwise.ensemble import knn, stack_model
from foldwise.errors import InputError

FEATURES_FILE = "features.pt2"
STACK_FILE = "stack.json"


class BagFeatures(nn.Module):
    """uint8 (N, H, W, C) images -> the bag's feature direction: each fold network's (a
    `models.Normalised` timm network) L2-normalised pre-logits features, averaged over the
    folds and normalised again (`knn.embed` then `knn.mean_direction`)."""

    def __init__(self, nets):
        super().__init__()
        self.nets = nn.ModuleList(nets)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float() / 255.0
        each = []
        for net in self.nets:
            z = (x - net.mean) / net.std
            f = net.backbone.forward_head(net.backbone.forward_features(z), pre_logits=True)
            each.append(F.normalize(f.float().flatten(1), dim=1))
        return F.normalize(torch.stack(each).mean(dim=0), dim=1)


def wanted(meta: dict) -> bool:
    """Whether the submission this meta describes averages over test neighbours or feeds them
    to a stack that the export can reproduce (a graph over the images predicted together)."""
    st = meta.get("stack") or {}
    if st.get("model"):
        return bool(st.get("weights")) and st.get("neighbours", 0) > 0
    return meta.get("neighbours", 0) > 0


def save(model_dir: Path, nets, example: torch.Tensor, weights=None) -> None:
    """Write `features.pt2` (the bag's feature program, batch size dynamic) and, for a
    logistic stack outside the program, `stack.json` (W, b) into `model_dir`."""
    from foldwise.deploy.program import exported
    torch.export.save(exported(BagFeatures(nets), example), str(Path(model_dir) / FEATURES_FILE))
    if weights is not None:
        w, b = weights
        (Path(model_dir) / STACK_FILE).write_text(json.dumps(
            {"weight": np.asarray(w).tolist(), "bias": np.asarray(b).tolist()}) + "\n")


def load_features(model_dir, device: torch.device):
    """The feature program of an export, on `device`; a missing file is a clear error."""
    from foldwise.deploy.program import program_on
    path = Path(model_dir) / FEATURES_FILE
    if not path.is_file():
        raise InputError(f"{path}: missing; this export's submission averages over test "
                         "neighbours, which needs it (export again with `dvc repro export`)")
    return program_on(path, device)


def graph(features: np.ndarray, meta: dict) -> tuple[np.ndarray, np.ndarray]:
    """Each image's `neighbours.k` nearest among those given (indices and similarities)."""
    return knn.graph(features, int(meta.get("neighbours", 0)))


def apply(preds: np.ndarray, near: tuple[np.ndarray, np.ndarray], meta: dict,
          model_dir) -> np.ndarray:
    """The submission's predictions from the program's `preds` and the `graph` of the same
    images (rows in the same order): each averaged over its neighbours, or the logistic stack
    over it and its `stack.neighbours` nearest."""
    idx, sim = near
    st = meta.get("stack") or {}
    if not st.get("model"):
        return knn.smooth(preds, idx, sim)
    form = json.loads((Path(model_dir) / STACK_FILE).read_text())
    x = stack_model.features(preds, idx, sim, int(st["neighbours"]))
    logits = x @ np.asarray(form["weight"], np.float64) + np.asarray(form["bias"], np.float64)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
