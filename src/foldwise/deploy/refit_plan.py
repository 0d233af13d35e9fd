"""The refit network's plan and the refit stage's paths: light (no torch), so the stage's
body (`refit.py`, which checks the off switch first) and the training (`refit_train.py`) both
read them here and neither imports the other. What the refit network is: `refit.py`."""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from foldwise.errors import InputError
from foldwise.params import Params
from foldwise.train import outputs

HELD = "insample"  # its epochs' figures: `insample_logloss`, never `val_logloss`


@dataclass(frozen=True)
class RefitPaths:
    """The refit stage's arguments by what they hold."""
    root: Annotated[Path, "the data set (some submissions follow its lookup table)"]
    models: Annotated[Path, "folder of the fold_k runs (their kept epochs, the MLflow parent)"]
    processed: Annotated[Path, "the preprocess cache"]
    bagged: Annotated[Path, "the bag's test predictions"]
    metrics_json: Annotated[Path, "evaluate's metrics.json (temperature, decision)"]
    out: Annotated[Path, "the refit network's folder"]
    out_json: Annotated[Path, "its figures"]
    history_csv: Annotated[Path, "per-epoch history (DVC plots it)"]


@dataclass(frozen=True)
class Plan:
    epochs: int
    why: str  # where the epochs came from
    weights: str  # "raw" or "ema": which of the last epoch's weights it keeps


def plan(params: Params, models: Path) -> Plan:
    """The refit network's epochs and kept weights, from params.yaml and the folds' run.json
    (round 1's: the refit trains on labels only)."""
    runs = []
    for fold in params.folds:
        path = outputs.fold_dir(models, fold) / "run.json"
        if not path.is_file():
            raise InputError(f"{path}: not found; the refit stage reads every fold's run "
                             "(dvc repro trains them)")
        runs.append(json.loads(path.read_text()))
    ema = sum(r.get("kept_weights") == "ema" for r in runs) * 2 > len(runs)
    weights = "ema" if ema and params.train.ema.decay > 0 else "raw"
    if params.refit.epochs != "auto":
        return Plan(int(params.refit.epochs), f"refit.epochs: {params.refit.epochs}", weights)
    kept = [int(r["best_epoch"]) + 1 for r in runs]
    epochs = max(1, math.floor(statistics.median(kept) + 0.5))
    return Plan(epochs, f"auto: the median of the folds' kept epochs {kept}", weights)
