"""The stack stage: a second-level model (`stack_model`'s functions) fit on the bag's out-of-fold
predictions, optionally with their neighbours', its OOF score cross-fitted over the folds, the
model saved for export to apply to the test predictions. Off (`stack.model: ''`), it writes an
empty folder and imports nothing heavy."""
from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np

from foldwise.errors import InputError
from foldwise.files import atomic_dir, write_csv, write_json, write_off
from foldwise.params import Params, flatten


@dataclass(frozen=True)
class Paths:
    models: Annotated[Path, "folder of the fold_k runs"]
    processed: Annotated[Path, "the preprocess cache"]
    bagged: Annotated[Path, "bag's output (oof.csv)"]
    metrics_json: Annotated[Path, "evaluate's metrics.json"]
    neighbours: Annotated[Path, "the neighbours stage's graphs"]
    out: Annotated[Path, "the model and its OOF"]
    out_json: Annotated[Path, "its OOF figures"]


def run(params: Params, paths: Paths) -> dict:
    """Fit, score and save the second-level model (`out`/model.pkl, `out`/oof.csv) and write its
    OOF figures beside the bag's (`out_json`), for the task preprocess recorded. Returns the
    summary."""
    settings, out, out_json = params.stack, paths.out, paths.out_json
    if not settings.model:
        write_off(out, "stack.model: ''")
        write_json({"model": ""}, out_json)
        return {"model": ""}
    from foldwise.data.cache import read_meta
    from foldwise.tasks import create_task
    task = create_task(read_meta(paths.processed), params)
    models, processed, bagged = paths.models, paths.processed, paths.bagged
    metrics_json, neighbours_dir = paths.metrics_json, paths.neighbours
    if not task.probabilities:
        raise InputError(f"params.yaml: stack.model={settings.model!r}: a second-level model "
                         f"needs class probabilities (this task's outputs are not)")
    import pandas as pd

    from foldwise.data.cache import load_truth
    from foldwise.ensemble import stack_model

    oof = pd.read_csv(Path(bagged) / "oof.csv", dtype={"id": str, "group": str})
    truth, folds = load_truth(Path(processed)), oof["fold"].to_numpy()
    x = stack_model.features(bag_predictions(oof, task, metrics_json, truth),
                             *graph(Path(neighbours_dir) / "oof_graph.npz", settings.neighbours))

    def make():
        return stack_model.make_model(settings.model, settings.c, params.seed)

    stacked = stack_model.cross_fitted(x, truth, folds, make)
    summary = {"model": settings.model, "neighbours": settings.neighbours,
               "features": int(x.shape[1]), "oof": task.report(truth, stacked, folds)[0],
               **shipped_bag(task, truth, folds, metrics_json, Path(neighbours_dir))}
    table = pd.DataFrame(stacked, columns=task.columns)
    table.insert(0, "fold", folds)
    table.insert(0, "id", oof["id"])
    with atomic_dir(out) as tmp:
        (tmp / stack_model.MODEL_FILE).write_bytes(pickle.dumps(stack_model.fit(x, truth, make)))
        write_csv(table, tmp / "oof.csv", float_format="%.8g")
    write_json(summary, out_json)
    log_to_parent(params, Path(models), summary)
    return summary


def shipped_probabilities(table, task, metrics_json) -> np.ndarray:
    """A bag table's probabilities as export's program gives them: tempered with evaluate's
    temperature (fit on every OOF row) where calibration ran."""
    from foldwise.ensemble import calibration
    preds = table[task.columns].to_numpy()
    temperature = json.loads(Path(metrics_json).read_text())["oof"].get("temperature", 1.0)
    return calibration.temper(preds, temperature) if temperature != 1.0 else preds


def bag_predictions(oof, task, metrics_json, truth) -> np.ndarray:
    """The bag's OOF probabilities as export's program gives the test set's: tempered where
    calibration ran, each fold's rows with the temperature fit on the other folds' rows (the
    temperature fit on every row, export's, has seen the labels these features are scored on)."""
    from foldwise.ensemble import calibration
    preds = oof[task.columns].to_numpy()
    if "temperature" not in json.loads(Path(metrics_json).read_text())["oof"]:
        return preds
    return calibration.cross_fitted(preds, truth, oof["fold"].to_numpy())[0]


def shipped_bag(task, truth, folds, metrics_json, neighbours_dir: Path) -> dict:
    """What the stack is measured against (`oof_bag`): the OOF figures of the submission
    without it, i.e. the bag calibrated (cross-fitted) where calibration ran and averaged over
    its neighbours where they are on; `oof_bag_is` says which."""
    import pandas as pd
    averaged = neighbours_dir / "oof.csv"  # the neighbours stage's, calibrated as evaluate did
    oof = json.loads(Path(metrics_json).read_text())["oof"]
    calibrated = "logloss_calibrated" in oof
    if averaged.is_file():
        preds = pd.read_csv(averaged)[task.columns].to_numpy()
        figures = task.report(truth, preds, folds)[0]
        return {"oof_bag": figures, "oof_bag_is": "bag" + (", calibrated" if calibrated else "")
                + ", averaged over neighbours"}
    if calibrated:
        return {"oof_bag": {**oof, "logloss": oof["logloss_calibrated"]},
                "oof_bag_is": "bag, calibrated (cross-fitted)"}
    return {"oof_bag": oof, "oof_bag_is": "bag"}


def graph(path: Path, n: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(idx, sim, n) of the neighbours stage's graph at `path`; empty ones for n = 0."""
    if n == 0:
        return np.zeros((0, 0), dtype=np.int64), np.zeros((0, 0)), 0
    if not path.is_file():
        raise InputError(f"params.yaml: stack.neighbours={n} needs the neighbours stage's graph "
                         f"({path} is missing: set neighbours.k >= {n})")
    g = np.load(path)
    return g["idx"], g["sim"], n


def log_to_parent(params: Params, models: Path, summary: dict) -> None:
    """The second-level model's OOF figures on the pipeline's MLflow parent run."""
    from foldwise import tracking
    from foldwise.train import outputs
    runs = [outputs.read_run(models, f) for f in params.folds]
    parent = tracking.evaluated_parent(tracking.open_experiment(params.mlflow), runs)
    if parent is not None:
        tracking.log_to_run(parent, {f"stack_oof_{m}": v for m, v in flatten(summary["oof"]).items()})
