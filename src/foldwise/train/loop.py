"""Training one fold: the loop, early stopping and the kept checkpoint chosen on validation loss.

Data arrive as uint8 arrays (N, H, W, C), usually memory-mapped from the preprocess cache;
`loader.device_batches` gathers them ahead of the step, so the loop only computes. Losses and
training outputs stay on the device until the epoch ends: nothing in the step waits for the
device, except a progress-bar refresh about once a second.
"""
from __future__ import annotations

import copy
import logging
import math
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
from tqdm import tqdm

from foldwise.train import augment, checkpoints, distributed, recipe
from foldwise.errors import InputError
from foldwise.train.loader import device_batches, predict_array, to_float

log = logging.getLogger(__name__)


@dataclass
class FoldResult:
    state_dict: dict
    history: pd.DataFrame
    best_epoch: int
    weights: str  # "raw" or "ema": which of the two the kept state is
    val_preds: np.ndarray
    test_preds: np.ndarray
    train_images_per_s: float


def create_scheduler(optimizer, cfg: dict, lr: float, updates_per_epoch: int = 1):
    """timm's scheduler by name; the warm-up start, floor, decay step and rate come from
    params.yaml as fractions of `lr` or epochs. `plateau` decays when the validation loss
    (lower is better) has not improved for `decay_epochs`; every other schedule moves the lr
    after each optimiser update when `lr_per_step` is true (timm's `step_on_epochs=False`)."""
    per_step = bool(cfg["lr_per_step"]) and cfg["scheduler"] != "plateau"
    scheduler, _ = timm.scheduler.create_scheduler_v2(
        optimizer, sched=cfg["scheduler"], num_epochs=int(cfg["epochs"]),
        warmup_epochs=int(cfg["warmup_epochs"]), warmup_lr=lr * float(cfg["warmup_lr"]),
        min_lr=lr * float(cfg["min_lr"]), decay_epochs=float(cfg["decay_epochs"]),
        decay_rate=float(cfg["decay_rate"]), patience_epochs=int(cfg["decay_epochs"]),
        plateau_mode="min", step_on_epochs=not per_step, updates_per_epoch=updates_per_epoch)
    return scheduler


def forward_fn(net: nn.Module, task, channels_last: bool, amp: bool):
    """uint8 device batch -> activated outputs: the one forward pass of every prediction."""
    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            return task.activate(net(to_float(x, channels_last)))
    return forward


def predict(net: nn.Module, images, task, batch_size: int, device: torch.device,
            channels_last: bool = False, amp: bool = False, desc: str = "predict") -> np.ndarray:
    """Activated outputs (probabilities for classification) as float64, in input order. Under
    DDP each rank predicts its shard of the rows and every rank gets them all."""
    net.eval()
    out = predict_array(forward_fn(net, task, channels_last, amp), distributed.shard(images),
                        batch_size, device, desc)
    return distributed.gather(out if len(out) else np.zeros((0, task.num_outputs)))


def batches_of(n: int, size: int) -> int:
    """Optimiser updates in an epoch of `n` images (a last batch too small to give every rank
    two images is dropped: BatchNorm cannot train on one)."""
    return n // size + (1 if n % size >= 2 * distributed.world() else 0)


def train_epoch(net, optimizer, task, cfg, x_train, targets, gen, device, channels_last, amp,
                rec: recipe.Recipe, desc: str):
    """One pass over the training rows in a random order. Returns (summed loss, image count,
    targets, activated outputs) of this rank's parts of the batches (all of each batch on one
    device), the last three on the device until the caller reads them."""
    net.train()
    order = torch.randperm(len(x_train), generator=gen).numpy()
    rec.start_epoch(gen)
    size, ranks = int(cfg["batch_size"]), distributed.world()
    # sorted within a batch: sequential reads from the memory map; a batch of one cannot
    # train BatchNorm, so a last batch with fewer than two images per rank is dropped
    batches = [np.sort(order[i:i + size]) for i in range(0, len(order), size)
               if len(order[i:i + size]) >= 2 * ranks]
    parts = [distributed.part(len(b)) for b in batches]  # this rank's share of each batch
    mine = [rec.even(b[p]) for b, p in zip(batches, parts)]
    total = sum(len(b) for b in mine)
    aspect = x_train.shape[2] / x_train.shape[1]
    loss_sum = torch.zeros((), device=device)
    seen_y = seen_p = None  # filled in place: thousands of small tensors kept for an epoch
    #                         fragment the heap (measured: +3.6 GB over State Farm's 22,424)
    bar = tqdm(total=total, desc=desc, unit="img", disable=None, leave=False)
    shown, at = time.perf_counter(), 0
    for whole, p, idx, images in zip(batches, parts, mine, device_batches(x_train, mine, device)):
        # the whole batch's draws on every rank: the generator stays in step, and each image
        # is augmented as it would be on one device
        draw = augment.draw(len(whole), cfg["augment"], gen, aspect).rows(
            slice(p.start, p.start + len(idx)))
        x = augment.apply(to_float(images, channels_last), draw.to(device), cfg["augment"])
        y = task.augment_targets(targets[idx], draw.theta)
        y = (y.pin_memory() if device.type == "cuda" else y).to(device, non_blocking=True)
        x, y_loss = rec.mix(x, y)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            outputs = net(x)
        loss = task.loss(outputs.float(), y_loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        rec.clip(net)
        optimizer.step()
        rec.stepped(net)
        loss_sum += loss.detach() * len(idx)
        p = task.activate(outputs.detach())
        if seen_p is None:
            seen_y = torch.empty((total, *y.shape[1:]), dtype=y.dtype, device=device)
            seen_p = torch.empty((total, *p.shape[1:]), dtype=p.dtype, device=device)
        seen_y[at:at + len(idx)] = y
        seen_p[at:at + len(idx)] = p
        at += len(idx)
        bar.update(len(idx))
        if not bar.disable and time.perf_counter() - shown > 1.0:  # the only read in the loop
            bar.set_postfix(loss=f"{loss_sum.item() / bar.n:.4f}", refresh=False)
            shown = time.perf_counter()
    bar.close()
    return loss_sum, total, seen_y, seen_p


def prepare(net: nn.Module, cfg: dict, lr: float, device: torch.device, task, n_train: int):
    """The network on `device` (channels_last if asked), the module the loop calls (compiled
    if asked; it shares `net`'s parameters), timm's optimiser and scheduler, and the rest of
    the recipe (mixup, clipping, EMA)."""
    net = net.to(device)
    if distributed.world() > 1 and device.type == "cuda" and cfg["sync_bn"]:
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)  # statistics of the whole batch
    if cfg["channels_last"]:
        net = net.to(memory_format=torch.channels_last)
    model = distributed.wrap(net, device)  # DDP over several devices
    model = torch.compile(model) if cfg["compile"] else model
    optimizer = timm.optim.create_optimizer_v2(net, opt=cfg["optimizer"], lr=lr,
                                               weight_decay=cfg["weight_decay"],
                                               momentum=cfg["momentum"])
    scheduler = create_scheduler(optimizer, cfg, lr, batches_of(n_train, int(cfg["batch_size"])))
    return net, model, optimizer, scheduler, recipe.create(net, cfg, task, scheduler)


def validate(model, net, ema, task, x_val, y_val, batch, device, channels_last, amp):
    """The epoch's validation: scores of the weights and, with an EMA, of their moving average
    (history columns `val_*`, `ema_val_*`). The better of the two (lower `task.monitor`) is the
    epoch's candidate: returns (columns, its figure, its predictions, the module holding its
    weights, "raw" or "ema")."""
    preds = predict(model, x_val, task, batch, device, channels_last, amp, "validate")
    scores = task.score(y_val, preds)
    columns = {f"val_{k}": float(v) for k, v in scores.items()}
    best = (float(scores[task.monitor]), preds, net, "raw")
    if ema is not None:
        ema_preds = predict(ema.module, x_val, task, batch, device, channels_last, amp, "validate ema")
        ema_scores = task.score(y_val, ema_preds)
        columns.update({f"ema_val_{k}": float(v) for k, v in ema_scores.items()})
        if ema_scores[task.monitor] < best[0]:
            best = (float(ema_scores[task.monitor]), ema_preds, ema.module, "ema")
    return columns, *best


def history_row(epoch, lr_now, train_loss, train_scores, val_columns, monitored, weights, n,
                seconds) -> dict:
    row = {"epoch": epoch, "lr": lr_now, "train_loss": train_loss,
           **{f"train_{k}": float(v) for k, v in train_scores.items()}, **val_columns,
           "val_metric": monitored,  # one column name for every task: the candidate's figure
           "images_per_s": n / max(seconds, 1e-9)}
    if any(k.startswith("ema_") for k in val_columns):
        row["val_is_ema"] = float(weights == "ema")  # 1: the moving average validated better
    return row


def keep_best(s: dict, epoch: int, monitored: float, train_loss: float, val_preds, module,
              weights: str, cfg: dict) -> None:
    """Early-stopping bookkeeping in the loop state `s`: a better (finite) validation figure
    keeps this epoch's weights (`module`'s: the network's or its moving average's) and
    predictions; otherwise the epoch counts as stale (past the warm-up, whose loss spikes are
    no signal); a non-finite training loss stops the fold."""
    if math.isfinite(monitored) and monitored < s["best"]:
        s.update(best=monitored, best_epoch=epoch, stale=0, best_val=val_preds, weights=weights,
                 best_state=copy.deepcopy(module.state_dict()))
    elif epoch >= int(cfg["warmup_epochs"]) or not math.isfinite(train_loss):
        s["stale"] += 1
    if not math.isfinite(train_loss):
        log.warning("epoch %d: training loss is %s; stopping this fold", epoch, train_loss)
        s["stale"] = int(cfg["patience"])


def train_fold(net: nn.Module, task, lr: float, cfg: dict, seed: int,
               x_train, y_train: np.ndarray, x_val, y_val: np.ndarray,
               x_test, device: torch.device,
               on_epoch: Callable[[dict], None] = lambda row: None,
               resume: str | Path | None = None,
               wrap: Callable[[nn.Module], nn.Module] = lambda net: net) -> FoldResult:
    """Train `net` on one fold; keep the epoch with the lowest validation `task.monitor`.

    `cfg` is params.yaml's `train` section. `on_epoch` receives each epoch's history row
    (for tracking) as it completes. With `resume`, the complete training state is saved there
    after every epoch, and a run killed part-way continues from its last finished epoch.
    The kept weights predict validation and test through `wrap(net)` (test-time augmentation,
    `tta.wrap`); epochs are chosen on plain validation.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    amp, channels_last = bool(cfg["amp"]) and device.type == "cuda", bool(cfg["channels_last"])
    net, model, optimizer, scheduler, rec = prepare(net, cfg, lr, device, task, len(x_train))
    batch, epochs, patience = int(cfg["batch_size"]), int(cfg["epochs"]), int(cfg["patience"])
    targets = task.targets(y_train)
    s = checkpoints.load_resume(resume, net, optimizer, gen, rec.ema) if resume else None
    s = s or {"best": float("inf"), "best_epoch": -1, "best_state": None, "best_val": None,
              "weights": None, "stale": 0, "history": [], "seen": 0, "train_time": 0.0, "step": 0}
    rec.step = s["step"]
    for row in s["history"]:  # the schedule replays the finished epochs, the rows are re-reported
        scheduler.step(row["epoch"] + 1, metric=row["val_metric"])
        on_epoch(row)
    if "optimizer" in s:
        optimizer.load_state_dict(s.pop("optimizer"))  # after the replay: the saved lr wins
    last = epochs if s["stale"] < patience else len(s["history"])  # it may have stopped early

    for epoch in range(len(s["history"]), last):
        lr_now, t0 = optimizer.param_groups[0]["lr"], time.perf_counter()
        loss_sum, n, seen_y, seen_p = train_epoch(model, optimizer, task, cfg, x_train, targets, gen,
                                                  device, channels_last, amp, rec, f"epoch {epoch}")
        loss_sum, n, seen_y, seen_p = distributed.epoch_totals(loss_sum, n, seen_y, seen_p)
        train_loss = loss_sum.item() / max(n, 1)  # the epoch's one wait for the device
        epoch_time = time.perf_counter() - t0
        s["seen"], s["train_time"] = s["seen"] + n, s["train_time"] + epoch_time
        s["step"] = rec.step
        train_scores = task.score(task.values(seen_y), seen_p.double().cpu().numpy())
        distributed.sync_buffers(net, rec.ema.module if rec.ema else None)  # rank 0's BatchNorm statistics
        columns, monitored, val_preds, module, weights = validate(
            model, net, rec.ema, task, x_val, y_val, batch * 2, device, channels_last, amp)
        row = history_row(epoch, lr_now, train_loss, train_scores, columns, monitored, weights, n,
                          epoch_time)
        s["history"].append(row)
        on_epoch(row)
        log.info("epoch %d: %s", epoch, {k: round(v, 4) for k, v in row.items()})
        scheduler.step(epoch + 1, metric=monitored)
        keep_best(s, epoch, monitored, train_loss, val_preds, module, weights, cfg)
        if resume and distributed.is_lead():
            checkpoints.save_resume(resume, net, optimizer, gen, s, rec.ema)
        if s["stale"] >= patience:
            log.info("stopped after epoch %d (best %d)", epoch, s["best_epoch"])
            break

    return kept_result(s, net, model, wrap, task, x_val, x_test, batch * 2, device, channels_last, amp)


def kept_result(s: dict, net, model, wrap, task, x_val, x_test, batch, device, channels_last,
                amp) -> FoldResult:
    """The fold's result from the loop state `s`: the kept epoch's weights in `net`, which
    predict validation (again only with test-time views, `wrap`) and test."""
    if s["best_state"] is None:
        last_loss = s["history"][-1]["train_loss"] if s["history"] else float("nan")
        raise InputError(f"training diverged: validation {task.monitor} was never finite in "
                         f"{len(s['history'])} epoch(s) (last training loss {last_loss:.4g}); "
                         "lower lr in params.yaml, or check the data")
    net.load_state_dict(s["best_state"])
    final = wrap(net)
    if final is net:  # no test-time views: the best epoch's predictions stand
        final, val_preds = model, np.asarray(s["best_val"])
    else:
        val_preds = predict(final, x_val, task, batch, device, channels_last, amp, "validate tta")
    return FoldResult(
        state_dict={k: v.detach().cpu().contiguous() for k, v in s["best_state"].items()},
        history=pd.DataFrame(s["history"]),
        best_epoch=s["best_epoch"],
        weights=s["weights"],
        val_preds=val_preds,
        test_preds=predict(final, x_test, task, batch, device, channels_last, amp, "test"),
        train_images_per_s=s["seen"] / max(s["train_time"], 1e-9) if s["seen"] else float("nan"),
    )
