"""evaluate: out-of-fold scores as the competition computes them, per fold, per class or
keypoint, and the worst-predicted training images.

usage: python stages/evaluate.py BAGGED_DIR PROCESSED_DIR MODELS_DIR METRICS_DIR
params: folds; train.label_smoothing (the task's settings); calibration.temperature (fit a
        temperature out-of-fold); mlflow (where the parent run is)
writes METRICS_DIR/{metrics.json, baseline.json, breakdown.csv, confusion.csv, calibration.csv,
curves.csv, hardest.csv, hardest.png};
logs the bagged metrics to the pipeline's MLflow parent run and finishes it.
"""
import json
from pathlib import Path

import _src  # noqa: F401
import numpy as np
import pandas as pd

from foldwise import calibration, params as P, report, stage, tracking
from foldwise.cache import load_truth
from foldwise.files import write_csv, write_json
from foldwise.tasks import create_task

HARDEST = 24


def calibrate(task, oof, truth) -> dict:
    """The temperature for the test set (fit on all OOF rows), the OOF log loss after
    calibration (cross-fitted, so honest), and for two classes the clip bound chosen again on
    the calibrated predictions, since export applies it after the temperature."""
    preds = oof[task.columns].to_numpy()
    tempered, per_fold = calibration.cross_fitted(preds, truth, oof["fold"].to_numpy())
    after, _ = task.report(truth, tempered)
    out = {"temperature": calibration.fit(preds, truth), "logloss_calibrated": after["logloss"]}
    out.update({k: after[k] for k in ("clip", "logloss_clipped") if k in after})
    print("temperature per fold (each fit on the other folds): "
          + ", ".join(f"{k}: {t:.3f}" for k, t in per_fold.items()))
    return out


def main():
    bagged, processed, models, out = (Path(a) for a in stage.arguments(
        __doc__, ("bagged_dir", "bag's output (oof.csv)"),
        ("processed_dir", "the preprocess cache (train.npy, labels, meta.json)"),
        ("models_dir", "folder of the fold_k outputs (run.json, history.csv)"),
        ("metrics_dir", "where the metrics and reports go")))
    params = P.load()
    meta = json.loads((processed / "meta.json").read_text())
    task = create_task(meta, params)
    oof = pd.read_csv(bagged / "oof.csv", dtype={"id": str, "group": str})
    truth = load_truth(processed)  # the OOF table is in training order too

    summary, per_fold, breakdown = report.evaluate(task, oof, truth)
    if P.get(params, "calibration.temperature") and task.kind == "classification":
        summary.update(calibrate(task, oof, truth))
    runs = [json.loads((models / f"fold_{k}" / "run.json").read_text()) for k in P.get(params, "folds")]
    # what stays the same across experiments goes beside the metrics, not among them
    baseline = {"images": len(oof), **{k: summary.pop(k) for k in task.baselines if k in summary},
                "fold_images": {k: f.pop("images") for k, f in per_fold.items()}}
    for k, run in zip(P.get(params, "folds"), runs):
        per_fold[str(k)].update(best_epoch=run["best_epoch"],
                                train_images_per_s=round(run["train_images_per_s"], 1))
    write_json({"oof": summary, "folds": per_fold}, out / "metrics.json")
    write_json(baseline, out / "baseline.json")
    write_csv(breakdown, out / "breakdown.csv", float_format="%.6g")
    write_csv(report.confusion(task, oof, truth), out / "confusion.csv")
    write_csv(report.reliability(task, oof, truth), out / "calibration.csv", float_format="%.6g")
    write_csv(report.curves({k: pd.read_csv(models / f"fold_{k}" / "history.csv")
                             for k in P.get(params, "folds")}), out / "curves.csv", float_format="%.6g")
    worst = report.hardest(task, oof, truth, HARDEST)
    write_csv(worst, out / "hardest.csv", float_format="%.6g")
    report.contact_sheet(np.load(processed / "train.npy", mmap_mode="r"), worst, out / "hardest.png")

    experiment = tracking.open_experiment(P.get(params, "mlflow"))
    flat = {f"oof_{k}": v for k, v in summary.items()}
    flat.update({f"fold{k}_{m}": v for k, f in per_fold.items() for m, v in f.items()})
    flat.update({k: v for k, v in baseline.items() if k in task.baselines})
    parent = tracking.parent_for_evaluation(experiment, runs, params)
    tracking.finish_parent(experiment, parent, flat,
                           [out / "metrics.json", out / "baseline.json", out / "breakdown.csv", out / "hardest.csv",
                            out / "hardest.png"])
    print("out-of-fold: " + ", ".join(f"{k} {v:.4f}" for k, v in summary.items()))


if __name__ == "__main__":
    stage.run(main)
