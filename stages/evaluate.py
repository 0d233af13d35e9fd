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

from foldwise import params as P, stage
from foldwise.ensemble.evaluate import evaluate
from foldwise.tasks import create_task


def main():
    bagged, processed, models, out = stage.arguments(
        __doc__, ("bagged_dir", "bag's output (oof.csv)"),
        ("processed_dir", "the preprocess cache (train.npy, labels, meta.json)"),
        ("models_dir", "folder of the fold_k outputs (run.json, history.csv)"),
        ("metrics_dir", "where the metrics and reports go"))
    params = P.load()
    task = create_task(json.loads((Path(processed) / "meta.json").read_text()), params)
    summary = evaluate(params, task, bagged, processed, models, out)
    print("out-of-fold: " + ", ".join(f"{k} {v:.4f}" for k, v in summary.items()
                                      if isinstance(v, float)))


if __name__ == "__main__":
    stage.run(main)
