"""The refit stage (AutoGluon's `refit_full`): one network of the folds' own recipe (`train.*`,
`seed`, `lr`) trained on every training image with its labels, exported as the bag is
(`export/refit/model`: the one network under the bag's test-time views, temperature and
decision, all three fit out of fold on the folds' models), its submission written from what
that program predicts, its run a child of the pipeline's MLflow parent with its history,
learning curve and the program as its MLflow model.

How long: `refit.epochs` epochs, or with `auto` the median over the folds of the epochs their
kept weights had trained (`best_epoch + 1` in each fold's run.json, round 1), the schedule
stretched over them as the folds' was over theirs. An epoch of the refit network covers all the
images, k/(k-1) times a fold's. It keeps its last epoch's weights: the moving average's
(`train.ema`) where most folds kept theirs, else the network's own. Nothing is held out to
choose on.

Honest figures (`metrics/refit.json`): every training image trained it, so it has no
out-of-fold figure (`oof: null`, and `no_oof` says why). Each epoch is scored on a fixed subset
of the training images, in-sample (`insample_*` columns, never `val_*`), to show the fit; the
test images are held out, and the network is compared with the bag there (`vs_bag_on_test`:
the same predictions or not, no labels). Its accuracy on labels it never saw is a benchmark's
(docs/benchmarks.md). Off (`refit.epochs: 0`) the stage writes an empty folder and imports
nothing heavy.
"""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from foldwise.errors import InputError
from foldwise.files import write_csv, write_json, write_off
from foldwise.params import Params
from foldwise.train import outputs

HELD = "insample"  # its epochs' figures: `insample_logloss`, never `val_logloss`


@dataclass(frozen=True)
class RefitPaths:
    """The stage's arguments by what they hold."""
    root: Path  # the data set (some submissions follow its lookup table)
    models: Path  # the folds' runs: their kept epochs and the MLflow parent
    processed: Path
    bagged: Path  # the bag's test predictions, to compare with
    metrics_json: Path  # evaluate's figures: the temperature and the decision
    out: Path
    out_json: Path
    history_csv: Path


@dataclass(frozen=True)
class Plan:
    epochs: int
    why: str  # where the epochs came from
    weights: str  # "raw" or "ema": which of the last epoch's weights it keeps


def run(params: Params, meta: dict, paths: RefitPaths) -> dict:
    """Plan, train, export, verify and write the refit network for the task preprocess recorded
    (`meta`). Returns its figures (`{"epochs": 0}` when off)."""
    if not params.refit.epochs:
        write_off(paths.out, "refit.epochs: 0")
        write_json({"epochs": 0}, paths.out_json)
        import pandas as pd
        write_csv(pd.DataFrame({"epoch": [], f"{HELD}_metric": []}), paths.history_csv)
        return {"epochs": 0}
    from foldwise.deploy import refit_train
    return refit_train.train_and_ship(params, meta, paths, plan(params, paths.models))


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
