"""Test-neighbour averaging: each prediction averaged with those of its nearest images.

State Farm's test set holds many frames of each unseen driver, and frames close in a network's
feature space usually show one pose; the winning team averaged each test image's prediction
with its neighbours'. Here the feature space is the bagged fold models' (timm's pre-logits
features, each fold's L2-normalised, averaged), the distance is cosine, and each image keeps
weight 1 while each of its k nearest other images weighs its cosine similarity (negative
similarities count 0). On out-of-fold predictions the same is done within each validation fold,
with that fold's own model, so neighbours are always images of subjects the model never saw:
the OOF score with neighbours is an honest estimate of what the trick does to the test set.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from foldwise.train.loader import predict_array, to_float


def embed(net: nn.Module, images, device: torch.device, batch_size: int = 64,
          desc: str = "features") -> np.ndarray:
    """L2-normalised pre-logits features of `net` (a `models.Normalised` timm network) for a
    uint8 (N, H, W, C) array, through the one inference loop."""
    net = net.to(device).eval()
    backbone = net.backbone

    def forward(x: torch.Tensor) -> torch.Tensor:
        x = (to_float(x, False) - net.mean) / net.std
        f = backbone.forward_head(backbone.forward_features(x), pre_logits=True)
        return F.normalize(f.float().flatten(1), dim=1)

    return predict_array(forward, images, batch_size, device, desc)


def mean_direction(features) -> np.ndarray:
    """Several models' normalised features of the same images combined into one direction."""
    f = np.mean(np.stack(features), axis=0)
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def graph(features: np.ndarray, k: int, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k nearest other rows by cosine similarity (rows are unit vectors): indices
    and similarities, (n, k) each, nearest first. Computed `block` rows at a time, so the
    n x n matrix (25 GB for State Farm's test set) is never held."""
    f = torch.as_tensor(np.asarray(features), dtype=torch.float32)
    n, k = len(f), min(int(k), len(f) - 1)
    idx: np.ndarray = np.zeros((n, max(k, 0)), dtype=np.int64)
    sim: np.ndarray = np.zeros((n, max(k, 0)), dtype=np.float32)
    if k <= 0:
        return idx, sim
    for i in range(0, n, block):
        s = f[i:i + block] @ f.T
        rows = torch.arange(len(s))
        s[rows, rows + i] = -torch.inf  # not itself
        v, j = s.topk(k, dim=1)
        idx[i:i + len(s)], sim[i:i + len(s)] = j.numpy(), v.numpy()
    return idx, sim


def grouped_graph(features: np.ndarray, groups: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """`graph` within each group (validation fold) separately, indices into all rows; a row of
    a group smaller than k + 1 has fewer neighbours (similarity 0 pads the rest)."""
    idx = np.tile(np.arange(len(features))[:, None], (1, k))
    sim: np.ndarray = np.zeros((len(features), k), dtype=np.float32)
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        local_idx, local_sim = graph(features[rows], k)
        idx[rows, :local_idx.shape[1]] = rows[local_idx]
        sim[rows, :local_sim.shape[1]] = local_sim
    return idx, sim


def smooth(preds: np.ndarray, idx: np.ndarray, sim: np.ndarray) -> np.ndarray:
    """Each row of `preds` averaged with its neighbours' rows: weight 1 for itself, the
    similarity (at least 0) for each neighbour. Rows of probabilities stay distributions."""
    preds = np.asarray(preds, dtype=np.float64)
    w = np.clip(np.asarray(sim, dtype=np.float64), 0.0, None)
    total = preds + np.einsum("nk,nkc->nc", w, preds[idx])
    return total / (1.0 + w.sum(axis=1))[:, None]
