"""Training one fold: the loop, early stopping and the kept checkpoint chosen on validation loss.

Data arrive as uint8 arrays (N, H, W, C), usually memory-mapped from the preprocess cache;
`loader.device_batches` gathers them ahead of the step, so the loop only computes. Losses and
training outputs stay on the device until the epoch ends: nothing in the step waits for the
device, except a progress-bar refresh about once a second.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import timm.optim
import timm.scheduler
import torch
from torch import nn
from tqdm import tqdm

from foldwise.train import augment, compiled, distributed, recipe, state
from foldwise.train.progress import REPLAYED
from foldwise.errors import InputError
from foldwise.train.loader import device_batches, predict_array, to_float
from foldwise.params import Train

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


@dataclass(frozen=True)
class Settings:
    """How one fold trains: params.yaml's `train` section, the learning rate, the fold's seed
    and the device; `keep`: which weights the run keeps, "best" (the epoch with the best
    validation figure, raw or moving average, whichever validated better), or the last
    epoch's "raw" or "ema" weights (a refit network, whose validation rows are in-sample:
    nothing to choose on)."""
    cfg: Train
    lr: float
    seed: int
    device: torch.device
    keep: str = "best"

    @property
    def amp(self) -> bool:
        """bfloat16 autocast: asked for, on a CUDA device that has it natively."""
        return self.cfg.amp and distributed.bf16_native(self.device)

    @property
    def channels_last(self) -> bool:
        return self.cfg.channels_last

    @property
    def inference(self) -> Inference:
        """How the fold predicts: batches twice the training batch, the same device and layout."""
        return Inference(self.cfg.batch_size * 2, self.device, self.channels_last, self.amp)


@dataclass(frozen=True)
class Inference:
    """How a network predicts: images per forward pass, the device, channels_last memory
    layout and bfloat16 autocast."""
    batch_size: int
    device: torch.device
    channels_last: bool = False
    amp: bool = False


def _unwrapped(net: nn.Module) -> nn.Module:
    return net


@dataclass(frozen=True)
class Around:
    """What a caller adds around a fold's loop: `on_epoch` receives each epoch's history row as
    it completes (tracking); with `resume`, the training state is saved there after every
    epoch and a killed run continues from its last finished one; `wrap(net)` gives the kept
    weights their test-time views (`tta.wrap`) for the validation and test predictions."""
    on_epoch: Callable[[dict], None] = lambda row: None
    resume: str | Path | None = None
    wrap: Callable[[nn.Module], nn.Module] = _unwrapped


@dataclass(frozen=True)
class FitData:
    """One fold's rows: uint8 images (arrays or `loader.Rows`) and their labels or targets."""
    x_train: Any  # an array or a loader.Rows
    y_train: np.ndarray
    x_val: Any
    y_val: np.ndarray
    x_test: Any


@dataclass
class Parts:
    """What a fold's epochs share: the network, the module the loop calls (compiled or wrapped
    for several devices; the network's own parameters), timm's optimiser and scheduler, the
    rest of the recipe (mixup, clipping, EMA) and the generator of the draws every rank shares."""
    net: nn.Module
    model: nn.Module
    optimizer: Any
    scheduler: Any
    rec: recipe.Recipe
    gen: torch.Generator

    def trainable(self) -> state.Trainable:
        """What a resume file keeps of them."""
        return state.Trainable(self.net, self.optimizer, self.gen, self.rec.ema)


@dataclass(frozen=True)
class Trained:
    """An epoch's training pass on this rank: its summed loss and image count, and the
    targets and activated outputs it saw (on the device until read)."""
    loss_sum: torch.Tensor
    images: int
    targets: Any
    outputs: Any


@dataclass(frozen=True)
class Candidate:
    """An epoch's validation: its history columns and the better of the weights and their
    moving average (lower `task.monitor`): its figure, predictions, the module holding it
    (None: the network's own) and which it is, "raw" or "ema"."""
    columns: dict
    monitored: float
    preds: np.ndarray
    module: nn.Module | None
    weights: str


@dataclass(frozen=True)
class Epoch:
    """One trained and validated epoch: its history row, the candidate (`module` holds its
    weights), the training loss, and the images trained on in how many seconds."""
    row: dict
    candidate: Candidate
    module: nn.Module
    train_loss: float
    images: int
    seconds: float


def create_scheduler(optimizer, cfg: Train, lr: float, updates_per_epoch: int = 1):
    """timm's scheduler by name; the warm-up start, floor, decay step and rate come from
    params.yaml as fractions of `lr` or epochs. `plateau` decays when the validation loss
    (lower is better) has not improved for `decay_epochs`; every other schedule moves the lr
    after each optimiser update when `lr_per_step` is true (timm's `step_on_epochs=False`)."""
    per_step = cfg.lr_per_step and cfg.scheduler != "plateau"
    scheduler, _ = timm.scheduler.create_scheduler_v2(
        optimizer, sched=cfg.scheduler, num_epochs=cfg.epochs,
        warmup_epochs=cfg.warmup_epochs, warmup_lr=lr * cfg.warmup_lr,
        min_lr=lr * cfg.min_lr, decay_epochs=cfg.decay_epochs,
        decay_rate=cfg.decay_rate, patience_epochs=cfg.decay_epochs,
        plateau_mode="min", step_on_epochs=not per_step, updates_per_epoch=updates_per_epoch)
    return scheduler


def forward_fn(net: nn.Module, task, channels_last: bool, amp: bool):
    """uint8 device batch -> activated outputs: the one forward pass of every prediction."""
    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            return task.activate(net(to_float(x, channels_last)))
    return forward


def predict(net: nn.Module, images, task, how: Inference, desc: str = "predict") -> np.ndarray:
    """Activated outputs (probabilities for classification) as float64, in input order. Under
    DDP each rank predicts its shard of the rows and every rank gets them all."""
    net.eval()
    out = predict_array(forward_fn(net, task, how.channels_last, how.amp), distributed.shard(images),
                        how.batch_size, how.device, desc)
    return distributed.gather(out if len(out) else np.zeros((0, task.num_outputs)))


def batches_of(n: int, size: int) -> int:
    """Optimiser updates in an epoch of `n` images (a last batch too small to give every rank
    two images is dropped: BatchNorm cannot train on one)."""
    return n // size + (1 if n % size >= 2 * distributed.world() else 0)


def epoch_batches(n: int, size: int, gen: torch.Generator, rec: recipe.Recipe):
    """The epoch's batches in a random order (each sorted: sequential reads from the memory
    map), this rank's part of each, and the rows it trains on. A batch with fewer than two
    images per rank is dropped: BatchNorm cannot train on one."""
    order = torch.randperm(n, generator=gen).numpy()
    batches = [np.sort(order[i:i + size]) for i in range(0, n, size)
               if len(order[i:i + size]) >= 2 * distributed.world()]
    parts = [distributed.part(len(b)) for b in batches]  # this rank's share of each batch
    return batches, parts, [rec.even(b[p]) for b, p in zip(batches, parts)]


def train_epoch(parts: Parts, task, run: Settings, x_train, targets, desc: str) -> Trained:
    """One pass over the training rows in a random order, with this rank's parts of the
    batches (all of each batch on one device)."""
    net, optimizer, gen, rec = parts.model, parts.optimizer, parts.gen, parts.rec
    net.train()
    device, cfg = run.device, run.cfg
    batches, shares, mine = epoch_batches(len(x_train), cfg.batch_size, gen, rec)
    rec.start_epoch(gen)
    total = sum(len(b) for b in mine)
    aspect = x_train.shape[2] / x_train.shape[1]
    loss_sum = torch.zeros((), device=device)
    seen_y = seen_p = None  # filled in place: thousands of small tensors kept for an epoch
    #                         fragment the heap (measured: +3.6 GB over State Farm's 22,424)
    bar = tqdm(total=total, desc=desc, unit="img", disable=None, leave=False)
    shown, at = time.perf_counter(), 0
    for whole, p, idx, images in zip(batches, shares, mine, device_batches(x_train, mine, device)):
        # the whole batch's draws on every rank: the generator stays in step, and each image
        # is augmented as it would be on one device
        draw = augment.draw(len(whole), cfg.augment, gen, aspect).rows(
            slice(p.start, p.start + len(idx)))
        x = augment.apply(to_float(images, run.channels_last), draw.to(device), cfg.augment)
        x = rec.erase(x)  # timm's random erasing, where augment.erase asks for it
        y = task.augment_targets(targets[idx], draw.theta)
        y = (y.pin_memory() if device.type == "cuda" else y).to(device, non_blocking=True)
        x, y_loss = rec.mix(x, y)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=run.amp):
            outputs = net(x)
        loss = task.loss(outputs.float(), y_loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        rec.clip(net)
        optimizer.step()
        rec.stepped(net)
        loss_sum += loss.detach() * len(idx)
        p = task.activate(outputs.detach())
        if seen_p is None or seen_y is None:
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
    return Trained(loss_sum, total, seen_y, seen_p)


def prepare(net: nn.Module, run: Settings, task, n_train: int) -> Parts:
    """The network on its device (channels_last if asked), the module the loop calls (compiled
    if asked; it shares `net`'s parameters), timm's optimiser and scheduler, and the rest of
    the recipe (mixup, clipping, EMA)."""
    cfg = run.cfg
    net = net.to(run.device)
    if distributed.world() > 1 and run.device.type == "cuda" and cfg.sync_bn:
        net = distributed.sync_batchnorm(net)  # statistics of the whole batch
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    model = distributed.wrap(net, run.device)  # DDP over several devices
    model = torch.compile(model) if cfg.compile else model
    optimizer = timm.optim.create_optimizer_v2(net, opt=cfg.optimizer, lr=run.lr,
                                               weight_decay=cfg.weight_decay,
                                               momentum=cfg.momentum)
    scheduler = create_scheduler(optimizer, cfg, run.lr, batches_of(n_train, cfg.batch_size))
    return Parts(net, model, optimizer, scheduler, recipe.create(net, cfg, task, scheduler),
                 torch.Generator().manual_seed(run.seed))  # the draws every rank shares


def first_batch(x_train, run: Settings) -> torch.Tensor:
    """The first training rows, as the step sees them (float, on the device)."""
    rows = torch.from_numpy(np.ascontiguousarray(x_train[:run.cfg.batch_size]))
    return to_float(rows.to(run.device), run.channels_last)


def validate(model, ema, task, x_val, y_val, run: Settings) -> Candidate:
    """The epoch's validation: scores of the weights and, with an EMA, of their moving average
    (history columns `val_*`, `ema_val_*`); the better of the two (or the one `run.keep` asks
    for) is the epoch's candidate."""
    preds = predict(model, x_val, task, run.inference, "validate")
    scores = task.score(y_val, preds)
    columns = {f"val_{k}": float(v) for k, v in scores.items()}
    best: tuple = (float(scores[task.monitor]), preds, None, "raw")
    if ema is not None:
        ema_preds = predict(ema.module, x_val, task, run.inference, "validate ema")
        ema_scores = task.score(y_val, ema_preds)
        columns.update({f"ema_val_{k}": float(v) for k, v in ema_scores.items()})
        if run.keep == "ema" or (run.keep == "best" and ema_scores[task.monitor] < best[0]):
            best = (float(ema_scores[task.monitor]), ema_preds, ema.module, "ema")
    return Candidate(columns, *best)


def history_row(epoch: int, lr_now: float, train_loss: float, train_scores: dict,
                candidate: Candidate, images_per_s: float) -> dict:
    row = {"epoch": epoch, "lr": lr_now, "train_loss": train_loss,
           **{f"train_{k}": float(v) for k, v in train_scores.items()}, **candidate.columns,
           "val_metric": candidate.monitored,  # one column name for every task: the candidate's
           "images_per_s": images_per_s}
    if any(k.startswith("ema_") for k in candidate.columns):
        row["val_is_ema"] = float(candidate.weights == "ema")  # 1: the moving average was better
    return row


def keep_best(s: state.LoopState, epoch: int, done: Epoch, cfg: Train, last: bool = False) -> None:
    """Early-stopping bookkeeping: a better (finite) validation figure keeps this epoch's
    weights (`done.module`'s: the network's or its moving average's) and predictions (every
    epoch's with `last`); otherwise the epoch counts as stale (past the warm-up, whose loss
    spikes are no signal); a non-finite training loss stops the fold."""
    monitored, train_loss = done.candidate.monitored, done.train_loss
    if last or (math.isfinite(monitored) and monitored < s.best):
        s.keep(epoch, monitored, done.candidate.preds, done.module, done.candidate.weights)
    elif epoch >= cfg.warmup_epochs or not math.isfinite(train_loss):
        s.stale += 1
    if not math.isfinite(train_loss):
        log.warning("epoch %d: training loss is %s; stopping this fold", epoch, train_loss)
        s.stale = cfg.patience


def resumed(parts: Parts, resume, on_epoch) -> state.LoopState:
    """The loop's state: from the resume file when there is one (the schedule replays the
    finished epochs, their rows are reported again, then the saved optimiser state wins), else
    a fresh one."""
    saved = state.load_resume(resume, parts.trainable()) if resume else None
    if saved is None:
        return state.LoopState()
    s, optimizer_state = saved
    parts.rec.step = s.step
    for row in s.history:
        parts.scheduler.step(row["epoch"] + 1, metric=row["val_metric"])
        on_epoch({**row, REPLAYED: 1.0})  # shown as done before, not logged as a figure
    parts.optimizer.load_state_dict(optimizer_state)
    return s


def one_epoch(epoch: int, parts: Parts, task, run: Settings, data: FitData, targets) -> Epoch:
    """Train and validate one epoch."""
    net, rec = parts.net, parts.rec
    lr_now, t0 = parts.optimizer.param_groups[0]["lr"], time.perf_counter()
    mine = train_epoch(parts, task, run, data.x_train, targets, f"epoch {epoch}")
    loss_sum, n, seen_y, seen_p = distributed.epoch_totals(mine.loss_sum, mine.images,
                                                           mine.targets, mine.outputs)
    train_loss = loss_sum.item() / max(n, 1)  # the epoch's one wait for the device
    seconds = time.perf_counter() - t0
    train_scores = task.score(task.values(seen_y), seen_p.double().cpu().numpy())
    distributed.sync_buffers(net, rec.ema.module if rec.ema else None)  # rank 0's BatchNorm statistics
    # the network itself predicts, never its compiled module: every figure is about the weights
    # that are kept, exported and shipped (docs/gpu.md: a compiled module's predictions did not)
    candidate = validate(net, rec.ema, task, data.x_val, data.y_val, run)
    row = history_row(epoch, lr_now, train_loss, train_scores, candidate,
                      n / max(seconds, 1e-9))
    return Epoch(row, candidate, net if candidate.module is None else candidate.module,
                 train_loss, n, seconds)


def train_fold(net: nn.Module, task, run: Settings, data: FitData,
               around: Around = Around()) -> FoldResult:
    """Train `net` on one fold; keep the epoch with the lowest validation `task.monitor`
    (chosen on plain validation; `around`: tracking, resuming and the kept weights' test-time
    views).
    """
    on_epoch, resume = around.on_epoch, around.resume
    torch.manual_seed(distributed.rank_seed(run.seed))  # this rank's masks
    parts = prepare(net, run, task, len(data.x_train))
    net, targets = parts.net, task.targets(data.y_train)
    s = resumed(parts, resume, on_epoch)
    if hasattr(parts.model, "_orig_mod"):  # compiled: trusted once its first step matches eager's
        parts.model = compiled.checked(net, parts.model, first_batch(data.x_train, run), run.amp)
    patience = run.cfg.patience
    last = run.cfg.epochs if s.stale < patience else len(s.history)  # it may have stopped early
    for epoch in range(len(s.history), last):
        counted = compiled.batchnorm_counts(net) if hasattr(parts.model, "_orig_mod") else None
        done = one_epoch(epoch, parts, task, run, data, targets)
        expected = batches_of(len(data.x_train), run.cfg.batch_size)
        if counted is not None and not compiled.statistics_moved(net, counted, expected):
            parts.model = parts.model._orig_mod  # the rest train uncompiled (under DDP still)
        s.seen, s.train_time = s.seen + done.images, s.train_time + done.seconds
        s.step = parts.rec.step
        s.history.append(done.row)
        on_epoch(done.row)
        log.debug("epoch %d: %s", epoch, done.row)  # the readable line: progress.Progress
        parts.scheduler.step(epoch + 1, metric=done.candidate.monitored)
        keep_best(s, epoch, done, run.cfg, last=run.keep != "best")
        if resume:
            rngs = state.rng_states()  # every rank's: a collective call
            if distributed.is_lead():
                state.save_resume(resume, parts.trainable(), s, rngs)
        if s.stale >= patience:
            log.info("stopped after epoch %d (best %d)", epoch, s.best_epoch)
            break
    return kept_result(s, net, around.wrap, task, data, run)


def kept_result(s: state.LoopState, net, wrap, task, data: FitData,
                run: Settings) -> FoldResult:
    """The fold's result from the loop state: the kept epoch's weights in `net`, which predict
    validation (again only with test-time views, `wrap`) and test."""
    if s.best_state is None:
        last_loss = s.history[-1]["train_loss"] if s.history else float("nan")
        raise InputError(f"training diverged: validation {task.monitor} was never finite in "
                         f"{len(s.history)} epoch(s) (last training loss {last_loss:.4g}); "
                         "lower lr in params.yaml, or check the data")
    net.load_state_dict(s.best_state)
    final = wrap(net)
    if final is net:  # no test-time views: the best epoch's predictions stand
        val_preds = np.asarray(s.best_val)
    else:
        val_preds = predict(final, data.x_val, task, run.inference, "validate tta")
    assert s.best_state is not None and s.weights is not None  # an epoch was kept (checked above)
    return FoldResult(
        state_dict={k: v.detach().cpu().contiguous() for k, v in s.best_state.items()},
        history=pd.DataFrame(s.history), best_epoch=s.best_epoch, weights=s.weights,
        val_preds=val_preds,
        test_preds=predict(final, data.x_test, task, run.inference, "test"),
        train_images_per_s=s.seen / max(s.train_time, 1e-9) if s.seen else float("nan"))
