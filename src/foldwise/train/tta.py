"""Test-time augmentation: each image predicted as it is and under a few fixed warps (a mirror
where the data allow it, small shifts and zooms), every output taken back to the original
frame, then averaged.

`TTA` wraps a network and is itself a network (float images in, raw outputs out), so the fold's
validation (hence the OOF score), its test predictions and the exported bag run the very same
computation. Class outputs are averaged as logits (the softmax of the mean logit is the
normalised geometric mean of the views' probabilities). Keypoint outputs live in grid_sample's
frame, so a point predicted at p in a view warped by theta = [A | t] lies at A p + t in the
image, and a mirror swaps left and right points, as in training's augmentation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from foldwise.errors import InputError
from foldwise.params import Tta


def views(cfg: Tta, hflip_safe: bool) -> torch.Tensor:
    """(V, 2, 3) affine matrices of params.yaml's `tta`: the identity first, then a mirror
    (`hflip`), four shifts by `shift` of the frame (left, right, up, down), and a zoom in
    and out by `scale`. One view (the identity) means: no TTA."""
    if cfg.hflip and not hflip_safe:
        raise InputError("params.yaml: tta.hflip is true, but a mirror image changes this data "
                         "set's labels (left/right classes); set it to false")
    mats = [((1.0, 0.0, 0.0), (0.0, 1.0, 0.0))]
    if cfg.hflip:
        mats.append(((-1.0, 0.0, 0.0), (0.0, 1.0, 0.0)))
    d = 2.0 * cfg.shift  # the frame is 2 wide in grid_sample's coordinates
    if d:
        mats += [((1.0, 0.0, dx), (0.0, 1.0, dy)) for dx, dy in ((-d, 0), (d, 0), (0, -d), (0, d))]
    s = cfg.scale
    if s:
        mats += [((1 / z, 0.0, 0.0), (0.0, 1 / z, 0.0)) for z in (1 + s, 1 - s)]
    return torch.tensor(mats, dtype=torch.float32)


class TTA(nn.Module):
    """`net` over every view of `thetas` (see `views`), averaged. `points`: the network
    outputs `outputs` columns, (x, y) pairs in [-1, 1], of which a mirror swaps `flip_pairs`."""

    def __init__(self, net: nn.Module, thetas: torch.Tensor, points: bool = False, outputs: int = 0,
                 flip_pairs=()):
        super().__init__()
        self.net, self.points = net, points
        self.register_buffer("thetas", thetas[1:].clone())  # view 0 is the identity
        swap = torch.arange(outputs)
        for i, j in flip_pairs:
            swap[i], swap[j] = j, i
        self.register_buffer("swap", swap)
        self.flipped = [bool(torch.linalg.det(t[:, :2]) < 0) for t in self.thetas]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [self.net(x)]
        for theta, flipped in zip(self.thetas, self.flipped):
            grid = F.affine_grid(theta.to(x.dtype).expand(x.shape[0], 2, 3), list(x.shape),
                                 align_corners=False)
            y = self.net(F.grid_sample(x, grid, mode="bilinear", padding_mode="border",
                                       align_corners=False))
            if self.points:
                p = y.float().reshape(y.shape[0], -1, 2) @ theta[:, :2].T + theta[:, 2]
                y = p.reshape(y.shape[0], -1)
                if flipped:
                    y = y[:, self.swap]
            outs.append(y.float())
        return torch.stack(outs).mean(dim=0) if len(outs) > 1 else outs[0]


def wrap(net: nn.Module, cfg: Tta, task, hflip_safe: bool) -> nn.Module:
    """`net` under params.yaml's `tta` for `task` (its `view_outputs` say how a view's outputs
    map back to the image); `net` itself when `tta` asks for no view beyond the image."""
    thetas = views(cfg, hflip_safe)
    if len(thetas) == 1:
        return net
    return TTA(net, thetas, **task.view_outputs)
