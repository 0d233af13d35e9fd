"""The training loop's state between epochs, and the resume file's format.

`LoopState.to_file` and `LoopState.from_file` are the whole format of the loop's part of a
resume file (`checkpoints.save_resume` adds the network's, optimiser's, moving average's and
random generators' states beside it): a field added here is saved and restored with no other
change, and a file without it (an older format) is refused and training starts over.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
import torch


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
