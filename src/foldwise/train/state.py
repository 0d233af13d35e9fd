"""The training loop's state between epochs, and the resume file that keeps it.

`LoopState.to_file` and `LoopState.from_file` are the whole format of the loop's part of a
resume file (`save_resume` adds the network's, optimiser's, moving average's and random
generators' states beside it): a field added here is saved and restored with no other change,
and a file without it (an older format) is refused and training starts over. Like a
checkpoint, the file holds tensors and plain data only and is written atomically.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field

import logging
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from foldwise.train import distributed
from foldwise.train.checkpoints import load, save

log = logging.getLogger(__name__)


@dataclass
class LoopState:
    best: float = math.inf  # the kept epoch's validation figure (task.monitor; lower is better)
    best_epoch: int = -1
    best_state: dict | None = None  # the kept epoch's weights (the network's or its EMA's)
    best_val: np.ndarray | None = None  # ... and its validation predictions
    weights: str | None = None  # "raw" or "ema": which of the two was kept
    stale: int = 0  # epochs since the last better one (past the warm-up)
    history: list[dict] = field(default_factory=list)  # one row per finished epoch
    seen: int = 0  # training images seen, for the throughput
    train_time: float = 0.0  # seconds spent training (not validating)
    step: int = 0  # optimiser updates: the per-step schedule's and the EMA warm-up's clock

    def keep(self, epoch: int, monitored: float, val_preds, module: torch.nn.Module,
             weights: str) -> None:
        """This epoch is the best so far: keep its weights and predictions."""
        self.best, self.best_epoch, self.stale = monitored, epoch, 0
        self.best_val, self.weights = val_preds, weights
        self.best_state = copy.deepcopy(module.state_dict())

    def to_file(self) -> dict:
        """Tensors and plain data only, so the file loads with `weights_only=True`."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if self.best_val is not None:
            out["best_val"] = torch.from_numpy(np.asarray(self.best_val))
        return out

    @classmethod
    def from_file(cls, saved: dict) -> "LoopState":
        """The state `to_file` wrote; a KeyError when a field is missing (another format)."""
        values = {f.name: saved[f.name] for f in dataclasses.fields(cls)}
        if values["best_val"] is not None:
            values["best_val"] = values["best_val"].numpy()
        return cls(**values)


def rng_states() -> list:
    """Every rank's own random number states (CPU, and each CUDA device's), in rank order: a
    collective call under DDP, so every rank makes it."""
    mine = (torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])
    return distributed.gather_objects(mine)


def restore_rng(states: list) -> None:
    """This rank's states from `rng_states`' list, when the launch has as many ranks."""
    if len(states) != distributed.world():
        log.warning("the resume file holds the random states of %d rank(s), this launch has %d: "
                    "the remaining epochs draw other dropout masks", len(states), distributed.world())
        return
    cpu, cuda = states[distributed.rank()]
    torch.set_rng_state(cpu)
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


@dataclass(frozen=True)
class Trainable:
    """What a resume file keeps besides the loop's state: the network, its optimiser, the
    generator of the draws every rank shares, and timm's moving average of the weights (None
    when off)."""
    net: torch.nn.Module
    optimizer: Any
    gen: torch.Generator
    ema: Any = None


class Resumed(NamedTuple):
    state: LoopState
    optimizer: dict  # the optimiser's state, loaded by the caller once its schedule replayed


def save_resume(path, parts: Trainable, state: LoopState, rngs: list) -> None:
    """Everything a killed fold needs to continue as if it never stopped: the loop's state in
    its own format, the rest beside; `rngs`: every rank's random states (`rng_states`)."""
    ema = parts.ema
    save({"loop": state.to_file(), "net": parts.net.state_dict(),
          "optimizer": parts.optimizer.state_dict(),
          "ema": None if ema is None else ema.module.state_dict(),
          "generator": parts.gen.get_state(), "rng": rngs}, path)


def load_resume(path, parts: Trainable) -> Resumed | None:
    """Restore the network, moving average, generator and RNG states saved by `save_resume`;
    return the loop's state and the optimizer's (the caller loads that once its scheduler has
    replayed the finished epochs). None when there is nothing (usable) to resume from."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        saved = load(path)  # on the CPU: RNG states must be CPU tensors, the rest follows net
        state = LoopState.from_file(saved["loop"])
        parts.net.load_state_dict(saved["net"])
        if parts.ema is not None:
            parts.ema.module.load_state_dict(saved["ema"])
        rngs = saved["rng"]
    except Exception as err:  # noqa: BLE001 - any unreadable resume file means: start over
        log.warning("ignoring resume file %s (%s: %s); training this fold from the start",
                    path, type(err).__name__, err)
        return None
    parts.gen.set_state(saved["generator"])
    restore_rng(rngs)
    log.info("resumed from %s after epoch %d", path, len(state.history) - 1)
    return Resumed(state, saved["optimizer"])
