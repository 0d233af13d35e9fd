"""Batch augmentation on the uint8 cache, as one random affine warp plus colour jitter.

The affine matrices are returned so that a task whose labels live in image coordinates
(keypoints) can move them with the pixels.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from foldwise.errors import InputError


def check(cfg: dict, hflip_safe: bool) -> None:
    if cfg.get("hflip") and not hflip_safe:
        raise InputError("params.yaml: train.augment.hflip is true, but a mirror image changes this "
                         "data set's labels (left/right classes); set it to false")


def random_affine(n: int, cfg: dict, generator: torch.Generator) -> torch.Tensor:
    """(n, 2, 3) matrices in normalised coordinates: shift, scale, rotation, optional mirror,
    and a random resized crop (a random region of at least `crop_area` of the frame, zoomed
    to fill it) when `crop_area` < 1."""
    def uniform(lo, hi):
        return lo + (hi - lo) * torch.rand(n, generator=generator)

    angle = uniform(-1, 1) * math.radians(cfg.get("rotate", 0.0))
    scale = 1 + uniform(-1, 1) * cfg.get("scale", 0.0)
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * cfg.get("shift", 0.0) * 2
    area = float(cfg.get("crop_area", 1.0))
    if area < 1.0:
        side = uniform(area, 1.0).sqrt()  # the crop's side as a fraction of the frame
        scale = scale / side
        shift = shift + (torch.rand(n, 2, generator=generator) * 2 - 1) * (1 - side)[:, None]
    flip = torch.ones(n)
    if cfg.get("hflip"):
        flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1),
                         torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1)
    return theta


def augment(x: torch.Tensor, cfg: dict, generator: torch.Generator):
    """x: (N, C, H, W) float in [0, 1]. Returns the augmented batch and the affine matrices."""
    theta = random_affine(x.shape[0], cfg, generator).to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    n = x.shape[0]
    b = cfg.get("brightness", 0.0)
    c = cfg.get("contrast", 0.0)
    sat = cfg.get("saturation", 0.0)
    if sat and x.shape[1] == 3:
        grey = x.mean(dim=1, keepdim=True)
        amount = (1 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * sat).to(x.device, x.dtype)
        x = (grey + (x - grey) * amount).clamp(0, 1)
    if b or c:
        gain = (1 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * c).to(x.device, x.dtype)
        bias = ((torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * b).to(x.device, x.dtype)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * gain + mean + bias).clamp(0, 1)
    return x, theta
