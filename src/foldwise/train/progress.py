"""One readable line per epoch, for a person watching `dvc repro` (or reading its log).

    fold 0  epoch  3/12  loss 0.4120  val logloss 0.3880 *  accuracy 0.9100  lr 1.2e-03  820 img/s  fold 1m10s left, up to 2 more folds ~6m

The monitored validation figure is marked `*` when it is the best so far (the weights kept),
and `(ema)` when it is the moving average's weights that scored it (EMA on, `val_is_ema`);
the time left is this fold's remaining epochs at the pace of its epochs so far (early stopping
may end it sooner), and the folds listed after it in `folds` at the same pace (a fold DVC
finds unchanged is not trained again: hence "up to").
Within an epoch, tqdm draws a bar where a terminal is attached (plain lines in logs and CI).
Epochs trained before a resume (rows marked `REPLAYED` by the loop) are shown as they were,
marked `(resumed)`, and are no pace.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

REPLAYED = "replayed"  # the key the loop adds to a row it reports again after a resume


def duration(seconds: float) -> str:
    """12s, 3m05s, 1h02m."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def figure(value: float) -> str:
    return f"{value:.4f}" if math.isfinite(value) and abs(value) >= 1e-3 else f"{value:.3g}"


@dataclass
class Progress:
    """Prints each history row (`loop.history_row`) as one line; call it with the row."""
    label: str              # "fold 0", "fold 0 pseudo-labels"
    epochs: int             # epochs planned for this run (all rounds)
    monitor: str            # the task's monitored figure: "logloss", "rmse"
    folds_after: int = 0    # folds of the pipeline still to train after this one
    held: str = "val"       # what the rows' val_* figures are of: "in-sample" for a refit
    #                         network (then no mark: it keeps its last epoch, not its best)
    best: float = math.inf
    last: float = field(default_factory=time.monotonic)
    trained: list = field(default_factory=list)  # seconds of each epoch trained in this process

    def __call__(self, row: dict) -> None:
        print(self.line(row), flush=True)

    def line(self, row: dict) -> str:
        now, replayed = time.monotonic(), bool(row.get(REPLAYED))
        if not replayed:
            self.trained.append(now - self.last)
        self.last = now
        monitored = row["val_metric"]
        mark = " *" if monitored < self.best and self.held == "val" else ""
        self.best = min(self.best, monitored)
        epoch = int(row["epoch"]) + 1
        others = [f"{k[4:]} {figure(v)}" for k, v in row.items() if k.startswith("val_")
                  and k not in ("val_metric", f"val_{self.monitor}", "val_is_ema")]
        ema = " (ema)" if row.get("val_is_ema") else ""  # the moving average's weights validated
        parts = [f"{self.label}  epoch {epoch:>{len(str(self.epochs))}}/{self.epochs}",
                 f"loss {figure(row['train_loss'])}",
                 f"{self.held} {self.monitor} {figure(monitored)}{ema}{mark}", *others[:2],
                 f"lr {row['lr']:.1e}", f"{row['images_per_s']:.0f} img/s"]
        return "  ".join(parts + (["(resumed)"] if replayed else self.left(epoch)))

    def left(self, epoch: int) -> list[str]:
        """The time-left parts, once an epoch has been timed."""
        if not self.trained:
            return []
        pace = sum(self.trained) / len(self.trained)
        run = self.label.split()[0]  # "fold", "refit"
        out = [f"{run} {duration(pace * (self.epochs - epoch))} left"] if epoch < self.epochs else []
        if self.folds_after:
            out.append(f"up to {self.folds_after} more fold{'s' if self.folds_after > 1 else ''} "
                       f"~{duration(pace * self.epochs * self.folds_after)}")
        return [", ".join(out)] if out else []
