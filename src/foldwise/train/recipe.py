"""What timm's `train.py` adds to a plain training step, through timm's own parts: random
erasing (`timm.data.random_erasing.RandomErasing`), mixup and cutmix (`timm.data.Mixup`),
gradient clipping (`timm.utils.dispatch_clip_grad`), a moving average of the weights
(`timm.utils.ModelEmaV3`) and the learning rate moved after every optimiser step (timm's
schedulers with `step_on_epochs=False`).

Each is off when its params.yaml value says so (`augment.erase: 0`, `mixup.prob: 0`,
`clip_grad: 0`, `ema.decay: 0`, `lr_per_step: false`), and then changes nothing: no random number is drawn,
no tensor is touched. Nothing here waits for the device.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import random

import numpy as np
import timm.data
import timm.utils
from timm.data.random_erasing import RandomErasing
import torch
from torch import nn

from foldwise.params import Train


@dataclass
class Erasing:
    """timm's RandomErasing in the normalised space it is made for (its fills, 0 and N(0, 1),
    are the data's mean and spread); the batch reaches the network in [0, 1] pixels."""
    eraser: RandomErasing
    mean: torch.Tensor  # (1, C, 1, 1) on the device: the network's own normalisation
    std: torch.Tensor

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.mean) / self.std
        erased = self.eraser(z.clone())  # in place, image by image
        return torch.where(erased != z, erased * self.std + self.mean, x)  # no other pixel moves


@dataclass
class Recipe:
    erasing: Erasing | None = None
    mixup: timm.data.Mixup | None = None
    ema: timm.utils.ModelEmaV3 | None = None
    clip_grad: float = 0.0
    clip_mode: str = "norm"
    scheduler: Any = None  # stepped after every update when the lr moves per step
    step: int = 0  # optimiser updates so far: the per-step schedule's and the EMA warm-up's clock
    _params: list = field(default_factory=list)

    def start_epoch(self, gen: torch.Generator) -> None:
        """timm's Mixup draws from NumPy's global generator, its RandomErasing from Python's:
        seed them from the fold's, so a seed (and a resumed fold) gives the same mixes and
        rectangles (an erased patch's noise comes from torch's, which the fold seeds)."""
        if self.mixup is not None:
            np.random.seed(int(torch.randint(2 ** 31 - 1, (1,), generator=gen)))
        if self.erasing is not None:
            random.seed(int(torch.randint(2 ** 31 - 1, (1,), generator=gen)))

    def erase(self, x: torch.Tensor) -> torch.Tensor:
        return self.erasing(x) if self.erasing is not None else x

    def even(self, batch: np.ndarray) -> np.ndarray:
        """Mixup pairs each image with its mirror in the batch: an odd batch loses one image."""
        return batch[: len(batch) // 2 * 2] if self.mixup is not None else batch

    def mix(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch and the targets the loss sees (soft class targets under mixup)."""
        return self.mixup(x, y) if self.mixup is not None else (x, y)

    def clip(self, net: nn.Module) -> None:
        if self.clip_grad > 0:
            if not self._params:
                self._params = [p for p in net.parameters() if p.requires_grad]
            timm.utils.dispatch_clip_grad(self._params, self.clip_grad, mode=self.clip_mode)

    def stepped(self, net: nn.Module) -> None:
        """After `optimizer.step()`: the EMA follows the weights, the per-step lr moves on."""
        self.step += 1
        if self.ema is not None:
            self.ema.update(net, step=self.step)
        if self.scheduler is not None:
            self.scheduler.step_update(num_updates=self.step)


def erasing(net: nn.Module, cfg: Train, task) -> Erasing | None:
    """`augment.erase` of `net` (a `models.Normalised`, on its device): off at 0."""
    if not cfg.augment.erase or not task.erases:
        return None
    device = net.mean.device
    eraser = RandomErasing(probability=cfg.augment.erase, mode=cfg.augment.erase_mode,
                           device=device)
    return Erasing(eraser, net.mean, net.std)


def create(net: nn.Module, cfg: Train, task, scheduler) -> Recipe:
    """The recipe of params.yaml's `train` section for `net` (already on its device)."""
    mix, ema = cfg.mixup, cfg.ema
    mixup = None
    if task.mixes and mix.prob > 0 and (
            mix.mixup_alpha > 0 or mix.cutmix_alpha > 0):
        # label smoothing stays with the loss (cross_entropy smooths soft targets the same way)
        mixup = timm.data.Mixup(mixup_alpha=mix.mixup_alpha,
                                cutmix_alpha=mix.cutmix_alpha, prob=mix.prob,
                                switch_prob=mix.switch_prob, mode="batch",
                                label_smoothing=0.0, num_classes=task.num_outputs)
    average = None
    if ema.decay > 0:
        average = timm.utils.ModelEmaV3(net, decay=ema.decay, use_warmup=ema.warmup)
    return Recipe(erasing=erasing(net, cfg, task), mixup=mixup, ema=average,
                  clip_grad=cfg.clip_grad, clip_mode=cfg.clip_mode,
                  scheduler=scheduler if getattr(scheduler, "t_in_epochs", True) is False else None)
