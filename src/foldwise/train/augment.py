"""Batch augmentation on the device, as one random affine warp plus colour jitter.

The colour jitter is torchvision's ColorJitter in a fixed order (brightness, contrast,
saturation), computed as its functional ops compute them: brightness scales the pixels (black
stays black), contrast blends with the image's mean grey level, saturation with its grey image.

Every random number of a batch is drawn on the CPU from the fold's generator (`draw`), so a
seed gives the same augmentation on any device, and travels to the device in one non-blocking
copy; `apply` then warps and jitters the whole batch there. The affine matrices stay on the
CPU for a task whose labels live in image coordinates (keypoints) to move them with the pixels.
Every key of params.yaml's `train.augment` is read as written (the schema in `params.py` makes
sure it is there): a misspelt key is an error, never a silently disabled augmentation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from foldwise.errors import InputError
from foldwise.params import Augment


def check(cfg: Augment, hflip_safe: bool, erases: bool = True) -> None:
    if cfg.hflip and not hflip_safe:
        raise InputError("params.yaml: train.augment.hflip is true, but a mirror image changes this "
                         "data set's labels (left/right classes); set it to false")
    if cfg.erase and not erases:
        raise InputError(f"params.yaml: train.augment.erase is {cfg.erase}, but this task's targets "
                         "are places in the image (an erased point would keep its target where "
                         "nothing shows it); set it to 0")


@dataclass
class Draw:
    theta: torch.Tensor  # (n, 2, 3) affine matrices in grid_sample's normalised frame
    colour: torch.Tensor  # (n, 3): saturation, contrast and brightness factors

    def rows(self, rows: slice) -> "Draw":
        """The draws of some of the batch's images (one rank's part of it)."""
        return Draw(self.theta[rows], self.colour[rows])

    def to(self, device: torch.device) -> "Draw":
        if device.type != "cuda":
            return self
        return Draw(*(t.pin_memory().to(device, non_blocking=True) for t in (self.theta, self.colour)))


def random_affine(n: int, cfg: Augment, generator: torch.Generator, aspect: float = 1.0) -> torch.Tensor:
    """(n, 2, 3) matrices in normalised coordinates: shift, scale, rotation, optional mirror,
    and a random resized crop (a random region of at least `crop_area` of the frame, zoomed
    to fill it) when `crop_area` < 1.

    `aspect` is width / height. Normalised coordinates stretch x by 2/W and y by 2/H, so a
    rotation by a pixel angle is A = S^-1 R S with S = diag(W, H); rotating in the normalised
    frame itself would shear every non-square image."""
    def uniform(lo, hi):
        return lo + (hi - lo) * torch.rand(n, generator=generator)

    angle = uniform(-1, 1) * math.radians(cfg.rotate)
    scale = 1 + uniform(-1, 1) * cfg.scale
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * cfg.shift * 2
    area = cfg.crop_area
    if area < 1.0:
        side = uniform(area, 1.0).sqrt()  # the crop's side as a fraction of the frame
        scale = scale / side
        shift = shift + (torch.rand(n, 2, generator=generator) * 2 - 1) * (1 - side)[:, None]
    flip = torch.ones(n)
    if cfg.hflip:
        flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin / aspect, shift[:, 0]], 1),
                         torch.stack([sin * flip * aspect, cos, shift[:, 1]], 1)], 1)
    return theta


def draw(n: int, cfg: Augment, generator: torch.Generator, aspect: float = 1.0) -> Draw:
    """All random numbers of one batch's augmentation, on the CPU, in a fixed order."""
    theta = random_affine(n, cfg, generator, aspect)
    u = torch.rand(n, 3, generator=generator) * 2 - 1
    colour = torch.stack([1 + u[:, 0] * cfg.saturation, 1 + u[:, 1] * cfg.contrast,
                          1 + u[:, 2] * cfg.brightness], 1)
    return Draw(theta, colour)


def warps(cfg: Augment) -> bool:
    """Whether `cfg` moves pixels at all (else the warp is the identity and is skipped)."""
    return bool(cfg.hflip or cfg.shift or cfg.scale or cfg.rotate
                or cfg.crop_area < 1.0)


def apply(x: torch.Tensor, d: Draw, cfg: Augment) -> torch.Tensor:
    """x: (N, C, H, W) float in [0, 1] on any device; `d` on the same device."""
    if warps(cfg):
        grid = F.affine_grid(d.theta.to(x.dtype), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    colour = d.colour.to(x.dtype)[:, :, None, None, None]
    if cfg.brightness:
        x = (x * colour[:, 2]).clamp(0, 1)
    if cfg.contrast:
        mean = grey(x).mean(dim=(1, 2, 3), keepdim=True)
        x = (mean + (x - mean) * colour[:, 1]).clamp(0, 1)
    if cfg.saturation and x.shape[1] == 3:
        g = grey(x)
        x = (g + (x - g) * colour[:, 0]).clamp(0, 1)
    return x


def grey(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) luma with ITU-R 601 weights (torchvision's rgb_to_grayscale rounds red to
    0.2989: grey levels agree to 1e-4); a one-channel batch is its own grey."""
    if x.shape[1] != 3:
        return x
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device)
    return (x * w[:, None, None]).sum(dim=1, keepdim=True)


def augment(x: torch.Tensor, cfg: Augment, generator: torch.Generator):
    """Draw and apply in one call. Returns the augmented batch and the (CPU) affine matrices."""
    d = draw(x.shape[0], cfg, generator, aspect=x.shape[-1] / x.shape[-2])
    return apply(x, d.to(x.device), cfg), d.theta
