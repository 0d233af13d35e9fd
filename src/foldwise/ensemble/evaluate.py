"""The evaluate stage: out-of-fold scores as the competition computes them, per fold and per
class or keypoint, calibration fit out-of-fold, the worst-predicted images, DVC's plots and the
pipeline's MLflow parent run finished with the bagged figures."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd

from foldwise import tracking
from foldwise.data.cache import load_truth, read_meta
from foldwise.ensemble import calibration, scores
from foldwise.files import write_csv, write_json
from foldwise.train import outputs
from foldwise.params import Params, flatten

HARDEST = 24


def calibrate(task, oof, truth) -> dict:
    """The temperature for the test set (fit on all OOF rows), the OOF log loss after
    calibration (cross-fitted, so honest), and for two classes the clip bound chosen again on
    the calibrated predictions, since export applies it after the temperature."""
    preds = oof[task.columns].to_numpy()
    tempered, per_fold = calibration.cross_fitted(preds, truth, oof["fold"].to_numpy())
    after, _ = task.report(truth, tempered, oof["fold"].to_numpy())
    out = {"temperature": calibration.fit(preds, truth), "logloss_calibrated": after["logloss"]}
    out.update({k: after[k] for k in ("clip", "logloss_clipped") if k in after})
    print("temperature per fold (each fit on the other folds): "
          + ", ".join(f"{k}: {t:.3f}" for k, t in per_fold.items()))
    return out


def summarise(params: Params, task, oof: pd.DataFrame, truth, models):
    """(summary, per-fold figures, baseline, breakdown table): what stays the same across
    experiments (the data's own figures, image counts) goes to the baseline, not among the
    metrics."""
    summary, per_fold, breakdown = scores.evaluate(task, oof, truth)
    if params.calibration.temperature and task.probabilities:
        summary.update(calibrate(task, oof, truth))
    baseline = {"images": len(oof), **{k: summary.pop(k) for k in task.baselines if k in summary},
                "fold_images": {k: f.pop("images") for k, f in per_fold.items()}}
    for k in params.folds:
        run = outputs.read_run(models, k)
        per_fold[str(k)].update(best_epoch=run["best_epoch"],
                                train_images_per_s=round(run["train_images_per_s"], 1))
    return summary, per_fold, baseline, breakdown


def write_reports(task, oof, truth, breakdown, params, paths: Paths) -> None:
    """The tables and figures DVC plots: breakdown, confusion, reliability, curves, hardest."""
    processed, models, out = paths.processed, paths.models, paths.out
    write_csv(breakdown, out / "breakdown.csv", float_format="%.6g")
    write_csv(scores.confusion(task, oof, truth), out / "confusion.csv")
    write_csv(scores.reliability(task, oof, truth), out / "calibration.csv", float_format="%.6g")
    write_csv(scores.curves({k: outputs.read_history(models, k) for k in params.folds}),
              out / "curves.csv", float_format="%.6g")
    worst = scores.hardest(task, oof, truth, HARDEST)
    write_csv(worst, out / "hardest.csv", float_format="%.6g")
    scores.contact_sheet(np.load(processed / "train.npy", mmap_mode="r"), worst, out / "hardest.png")


def finish_parent(params, task, summary, per_fold, baseline, paths: Paths) -> None:
    """The pipeline's MLflow parent finished with the bagged figures and, as the folds'
    dashboard (`dashboard`), its note, the training table and every fold's curve on one chart;
    `out`/mlflow.json names it."""
    processed, models, out = paths.processed, paths.models, paths.out
    from mlflow.tracking import MlflowClient

    from foldwise.ensemble import dashboard
    experiment = tracking.open_experiment(params.mlflow)
    spread = fold_spread(task.monitor, per_fold)
    flat = {f"oof_{k}": v for k, v in flatten(summary).items()}  # per-tag thresholds: oof_thresholds.TAG
    flat.update({f"fold{k}_{m}": v for k, f in per_fold.items() for m, v in f.items()})
    flat.update({k: v for k, v in baseline.items() if k in task.baselines})
    flat.update(spread)
    runs = [outputs.read_run(models, k) for k in params.folds]
    parent = tracking.parent_for_evaluation(experiment, runs, params)
    client, digest = MlflowClient(), dashboard.data_digest(processed)
    commit = client.get_run(parent).data.tags.get("mlflow.source.git.commit", "")
    figures = dashboard.Figures(task.monitor, summary, per_fold, spread)
    table = dashboard.TrainingTable(pd.read_csv(processed / "train.csv", dtype={"id": str}),
                                    f"{params.data.source} training table", params.data.root, digest)
    dashboard.publish(client, parent, dashboard.description(params, figures, digest, commit), table)
    curves = dashboard.fold_curves_png({k: outputs.read_history(models, k) for k in params.folds},
                                       task.monitor, out / "fold_curves.png")
    tracking.finish_parent(experiment, parent, flat,
                           [out / n for n in ("metrics.json", "baseline.json", "breakdown.csv",
                                              "hardest.csv", "hardest.png")] + [curves])
    write_json(dashboard.lineage(experiment, parent, tracking.tracking_uri(params.mlflow)),
               out / "mlflow.json")


def fold_spread(metric: str, per_fold: dict) -> dict:
    """The folds' mean and standard deviation (n - 1) of `metric`, which MLflow cannot
    aggregate over child runs itself (mlflow#3762)."""
    values = np.array([f[metric] for f in per_fold.values() if metric in f], dtype=float)
    if not len(values):
        return {}
    return {f"folds_mean_{metric}": float(values.mean()),
            f"folds_std_{metric}": float(values.std(ddof=1)) if len(values) > 1 else 0.0}


@dataclass(frozen=True)
class Paths:
    bagged: Annotated[Path, "bag's output (oof.csv)"]
    processed: Annotated[Path, "the preprocess cache (train.npy, labels, meta.json)"]
    models: Annotated[Path, "folder of the fold_k outputs (run.json, history.csv)"]
    out: Annotated[Path, "where the metrics and reports go"]


def run(params: Params, paths: Paths) -> dict:
    """The evaluate stage: score the bag's OOF table (`bagged`/oof.csv) and write `out`'s
    metrics and reports; returns the summary."""
    from foldwise.tasks import create_task
    bagged, processed, models, out = paths.bagged, paths.processed, paths.models, paths.out
    task = create_task(read_meta(processed), params)
    oof = pd.read_csv(bagged / "oof.csv", dtype={"id": str, "group": str})
    truth = load_truth(processed)  # the OOF table is in training order too
    summary, per_fold, baseline, breakdown = summarise(params, task, oof, truth, models)
    # the folds' mean and spread beside the OOF figures: one column each in `dvc exp show`
    write_json({"oof": summary, "spread": fold_spread(task.monitor, per_fold), "folds": per_fold},
               out / "metrics.json")
    write_json(baseline, out / "baseline.json")
    write_reports(task, oof, truth, breakdown, params, paths)
    finish_parent(params, task, summary, per_fold, baseline, paths)
    return summary
