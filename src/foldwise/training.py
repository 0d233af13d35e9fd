"""Training one fold: the loop, early stopping and the kept checkpoint chosen on validation loss.

Data arrive as uint8 arrays (N, H, W, C), usually memory-mapped from the preprocess cache;
batches are gathered by index, so nothing is decoded here.
"""
from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import timm.optim
import timm.scheduler
import torch
from torch import nn

from foldwise.augment import augment

log = logging.getLogger(__name__)


@dataclass
class FoldResult:
    state_dict: dict
    history: pd.DataFrame
    best_epoch: int
    val_preds: np.ndarray
    test_preds: np.ndarray
    train_images_per_s: float


class Rows:
    """Rows `index` of a (memory-mapped) array, indexable like an array of its own."""

    def __init__(self, array, index):
        self.array, self.index = array, np.asarray(index)

    def __len__(self):
        return len(self.index)

    def __getitem__(self, i):
        return self.array[self.index[i]]


def to_batch(images: np.ndarray, device: torch.device, channels_last: bool) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float (N, C, H, W) in [0, 1] on `device`."""
    x = torch.from_numpy(np.ascontiguousarray(images))
    if device.type == "cuda":
        x = x.pin_memory().to(device, non_blocking=True)
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


@torch.no_grad()
def predict(net: nn.Module, images: np.ndarray, task, batch_size: int, device: torch.device,
            channels_last: bool = False, amp: bool = False) -> np.ndarray:
    """Activated outputs (probabilities for classification) as float64, in input order."""
    net.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = to_batch(images[start:start + batch_size], device, channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out.append(task.activate(net(x)).double().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, task.num_outputs))


def train_fold(net: nn.Module, task, lr: float, cfg: dict, seed: int,
               x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
               x_test: np.ndarray, device: torch.device,
               on_epoch: Callable[[dict], None] = lambda row: None,
               resume: str | Path | None = None) -> FoldResult:
    """Train `net` on one fold; keep the epoch with the lowest validation `task.monitor`.

    `cfg` is params.yaml's `train` section. `on_epoch` receives each epoch's history row
    (for tracking) as it completes. With `resume`, the complete training state is saved there
    after every epoch, and a run killed part-way continues from its last finished epoch.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    cuda = device.type == "cuda"
    amp = bool(cfg["amp"]) and cuda
    channels_last = bool(cfg["channels_last"])
    net = net.to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizer = timm.optim.create_optimizer_v2(net, opt=cfg["optimizer"], lr=lr,
                                               weight_decay=cfg["weight_decay"],
                                               momentum=cfg["momentum"])
    scheduler, _ = timm.scheduler.create_scheduler_v2(
        optimizer, sched=cfg["scheduler"], num_epochs=cfg["epochs"],
        warmup_epochs=cfg["warmup_epochs"], warmup_lr=lr * 0.1, min_lr=lr * 0.01)
    batch_size = int(cfg["batch_size"])
    targets = task.targets(y_train)
    best, best_epoch, best_state, stale = float("inf"), -1, None, 0
    history, seen, train_time, start = [], 0, 0.0, 0
    if resume and Path(resume).is_file():
        state = torch.load(resume, map_location=device, weights_only=False)
        net.load_state_dict(state["net"])
        optimizer.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        best, best_epoch, best_state, stale = state["best"], state["best_epoch"], state["best_state"], state["stale"]
        history, start = state["history"], len(state["history"])
        scheduler.step(start)
        for row in history:
            on_epoch(row)
        log.info("resumed from %s after epoch %d", resume, start - 1)
        if stale >= int(cfg["patience"]):
            start = int(cfg["epochs"])  # it had already stopped early

    for epoch in range(start, int(cfg["epochs"])):
        net.train()
        lr_now = optimizer.param_groups[0]["lr"]
        order = torch.randperm(len(x_train), generator=gen).numpy()
        # drop a last batch of one: BatchNorm cannot train on it
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)
                   if len(order[i:i + batch_size]) > 1]
        t0, loss_sum, train_outputs = time.perf_counter(), 0.0, []
        for idx in batches:
            idx = np.sort(idx)  # sequential reads from the memory map
            x = to_batch(x_train[idx], device, channels_last)
            x, theta = augment(x, cfg["augment"], gen)
            y_cpu = task.augment_targets(targets[idx], theta.cpu())
            y = y_cpu.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                outputs = net(x)
                loss = task.loss(outputs.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(idx)
            train_outputs.append((task.values(y_cpu), task.activate(outputs.detach()).double().cpu().numpy()))
        if cuda:
            torch.cuda.synchronize()
        epoch_time = time.perf_counter() - t0
        n = sum(len(i) for i in batches)
        seen += n
        train_time += epoch_time
        train_scores = task.score(np.concatenate([t for t, _ in train_outputs]),
                                  np.concatenate([p for _, p in train_outputs]))
        val_preds = predict(net, x_val, task, batch_size * 2, device, channels_last, amp)
        val_scores = task.score(y_val, val_preds)
        row = {"epoch": epoch, "lr": lr_now, "train_loss": loss_sum / max(n, 1),
               **{f"train_{k}": v for k, v in train_scores.items()},
               **{f"val_{k}": v for k, v in val_scores.items()},
               "images_per_s": n / max(epoch_time, 1e-9)}
        history.append(row)
        on_epoch(row)
        log.info("epoch %d: %s", epoch, {k: round(v, 4) for k, v in row.items()})
        scheduler.step(epoch + 1)
        if val_scores[task.monitor] < best:
            best, best_epoch, stale = val_scores[task.monitor], epoch, 0
            best_state = copy.deepcopy(net.state_dict())
        elif epoch >= int(cfg["warmup_epochs"]):  # a loss spike while warming up is no signal
            stale += 1
        if resume:
            _save_resume(resume, {"net": net.state_dict(), "optimizer": optimizer.state_dict(),
                                  "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
                                  "best": best, "best_epoch": best_epoch, "best_state": best_state,
                                  "stale": stale, "history": history})
        if stale >= int(cfg["patience"]):
            log.info("early stop after epoch %d (best %d)", epoch, best_epoch)
            break

    net.load_state_dict(best_state)
    state = {k: v.detach().cpu().contiguous() for k, v in best_state.items()}
    return FoldResult(
        state_dict=state,
        history=pd.DataFrame(history),
        best_epoch=best_epoch,
        val_preds=predict(net, x_val, task, batch_size * 2, device, channels_last, amp),
        test_preds=predict(net, x_test, task, batch_size * 2, device, channels_last, amp),
        train_images_per_s=seen / max(train_time, 1e-9) if seen else float("nan"),
    )


def _save_resume(path, state: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
