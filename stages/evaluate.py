"""evaluate: out-of-fold scores as the competition computes them, per fold and per class.

usage: python stages/evaluate.py BAGGED_DIR PROCESSED_DIR MODELS_DIR METRICS_DIR
writes METRICS_DIR/{metrics.json, per_class.csv, confusion.csv}; logs the bagged metrics to
the pipeline's MLflow parent run and finishes it.
"""
import json
import sys
from pathlib import Path

import _src  # noqa: F401
import pandas as pd

from foldwise import metrics, params as P, stage, tracking
from foldwise.files import write_csv, write_json


def main():
    bagged, processed, models, out = (Path(a) for a in sys.argv[1:5])
    params = P.load()
    meta = json.loads((processed / "meta.json").read_text())
    classes = meta["classes"]
    oof = pd.read_csv(bagged / "oof.csv", dtype={"id": str, "group": str})
    labels, probs = oof["label"].to_numpy(), oof[classes].to_numpy()

    scores = {"logloss": metrics.multiclass_logloss(labels, probs),
              "accuracy": metrics.accuracy(labels, probs)}
    per_fold = {}
    for k, part in oof.groupby("fold"):
        p = part[classes].to_numpy()
        per_fold[str(k)] = {"logloss": metrics.multiclass_logloss(part["label"], p),
                            "accuracy": metrics.accuracy(part["label"], p), "images": len(part)}
    write_json({"oof": scores, "folds": per_fold, "images": len(oof)}, out / "metrics.json")
    per_class = pd.DataFrame(metrics.per_class(labels, probs, classes))
    write_csv(per_class, out / "per_class.csv", float_format="%.6g")
    confusion = pd.DataFrame({"actual": [classes[i] for i in labels],
                              "predicted": [classes[i] for i in probs.argmax(1)]})
    write_csv(confusion, out / "confusion.csv")

    runs = [json.loads((models / f"fold_{k}" / "run.json").read_text()) for k in P.get(params, "folds")]
    parent = runs[-1]["parent_run_id"]
    tracking.open_experiment(P.get(params, "mlflow"))
    flat = {f"oof_{k}": v for k, v in scores.items()}
    flat.update({f"fold{k}_{m}": v for k, f in per_fold.items() for m, v in f.items() if m != "images"})
    tracking.finish_parent(runs[-1]["experiment_id"], parent, flat,
                           [out / "metrics.json", out / "per_class.csv"])
    print(f"out-of-fold log loss {scores['logloss']:.4f}, accuracy {scores['accuracy']:.4f}")


if __name__ == "__main__":
    stage.run(main)
