"""evaluate: out-of-fold scores as the competition computes them, per fold, per class or
keypoint, and the worst-predicted training images.

usage: python stages/evaluate.py BAGGED_DIR PROCESSED_DIR MODELS_DIR METRICS_DIR
params: folds; train.label_smoothing (the task's settings); calibration.temperature (fit a
        temperature out-of-fold); mlflow (where the parent run is)
writes METRICS_DIR/{metrics.json, baseline.json, breakdown.csv, confusion.csv, calibration.csv,
curves.csv, hardest.csv, hardest.png};
logs the bagged metrics to the pipeline's MLflow parent run and finishes it.
"""
from foldwise import params as P, stage
from foldwise.ensemble import evaluate


def main():
    summary = evaluate.run(P.load(), stage.paths(__doc__, evaluate.Paths))
    print("out-of-fold: " + ", ".join(f"{k} {v:.4f}" for k, v in summary.items()
                                      if isinstance(v, float)))


if __name__ == "__main__":
    stage.run(main)
