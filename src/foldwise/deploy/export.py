"""The export stage: the bagged folds exported as one program (`program`), checked against the
folds (`verify`), the submission written from what the shipped program predicts (so
`foldwise-predict` reproduces it), and the program logged as the pipeline's MLflow model."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import nn

from foldwise import tracking
from foldwise.data.cache import Decode, read_meta
from foldwise.data.sources import get_source
from foldwise.deploy import mlmodel, program, setlevel
from foldwise.deploy.verify import TOLERANCE, Verified, check_export
from foldwise.files import write_json
from foldwise.ensemble import calibration, dashboard, stack_model
from foldwise.models import load_checkpoint
from foldwise.train import outputs, tta
from foldwise.train.loader import open_cache
from foldwise.params import Params
from foldwise.tasks import create_task


def log_to_mlflow(params, task, runs, loaded, score: float, paths: Paths) -> dict:
    """The exported bag (`loaded`: its module and meta) as an MLflow model of the pipeline's
    parent run (the one evaluate finished), loadable with mlflow.pyfunc.load_model; with
    `mlflow.register`, a version of the registered model of this task and data set
    (`mlmodel.registered_name`), tagged with `score` (`served_score`), the task, the metric
    and the training table's digest, the alias `champion` on the best version of those.
    Returns what was logged (`mlflow_line` words it): model (its URI, or "" with `not_logged`
    saying why), registered (models:/NAME/VERSION or ""), champion (its version or "")."""
    logged = {"model": "", "not_logged": "", "registered": "", "champion": ""}
    differs = program.set_level(loaded[1])
    if differs:  # a served model would not be the submission: none is logged or registered
        return {**logged, "not_logged": f"the submission also applies {'; '.join(differs)}, "
                                        "outside the program, so a served model would differ from it"}
    experiment = tracking.open_experiment(params.mlflow)
    parent = tracking.evaluated_parent(experiment, runs)
    if parent is None:
        raise RuntimeError("no MLflow parent run holds these folds: run the evaluate stage")
    example = np.asarray(open_cache(paths.processed / "test.npy")[:2])
    logged["model"] = mlmodel.log(paths.model_dir, example, parent, loaded=loaded)
    if not params.mlflow.register:
        return logged
    name = mlmodel.registered_name(params.mlflow.experiment, params.data.source, params.data.root,
                                   params.mlflow.model_name)
    group = {"foldwise.task": params.data.source, "foldwise.metric": f"oof_{task.monitor}",
             "foldwise.data": dashboard.data_digest(paths.processed)}
    version, champion = mlmodel.register(logged["model"], name, score, group,
                                         sample=mlmodel.is_sample(params.data.root))
    return {**logged, "registered": f"models:/{name}/{version}", "champion": champion}


def mlflow_line(logged: dict) -> str:
    if not logged["model"]:
        return f"not logged: {logged['not_logged']}"
    if not logged["registered"]:
        return logged["model"]
    return (f"{logged['model']}, registered as {logged['registered']} "
            f"(@{mlmodel.CHAMPION}: version {logged['champion']})")


def served_score(task, metrics_json, stacked) -> float:
    """The OOF figure of what the exported program computes: the second-level model's where it
    is a layer of it, else the bag's, calibrated where a temperature is in the program."""
    if stacked is not None and stacked.layer is not None:
        return float(stacked.oof[task.monitor])
    oof = json.loads(Path(metrics_json).read_text())["oof"]
    return float(oof.get(f"{task.monitor}_calibrated", oof[task.monitor]))


@dataclass(frozen=True)
class Stacking:
    """The stack stage's second-level model as export uses it: `layer` where it is a layer of
    the exported program (`stack_model.linear_form`), else None; `weights` (W, b) where it is
    logistic over neighbour features (shipped as `setlevel.STACK_FILE`), else None; neither:
    applied in the submission only."""
    model: object
    name: str
    neighbours: int
    oof: dict  # its cross-fitted OOF figures, for its decision (the two-class clip)
    layer: nn.Module | None
    weights: tuple | None = None

    def meta(self) -> dict:
        return {"model": self.name, "neighbours": self.neighbours,
                "in_program": self.layer is not None, "weights": self.weights is not None}


@dataclass(frozen=True)
class Shipping:
    """What ships beside the folds' networks, all fit out of fold: the task's decision (clip
    bound, tag thresholds: the stack's where one is on, else fit on OOF predictions averaged
    over neighbours where those are on, as the submission is), evaluate's temperature, the
    neighbours' k and the second-level model."""
    decision: dict
    temperature: float
    k: int
    stacked: Stacking | None


def shipping(task, paths: Paths) -> Shipping:
    oof = json.loads(paths.metrics_json.read_text())["oof"]
    near = json.loads(paths.neighbours_json.read_text())
    stacked = stacking(task, paths.stack_dir, paths.stack_json)
    decision = task.decision(stacked.oof if stacked else near["oof"] if near["k"] else oof)
    return Shipping(decision, oof.get("temperature", 1.0), near["k"], stacked)


def stacking(task, stack_dir, stack_json) -> Stacking | None:
    """The stack stage's model, or None where the stage is off."""
    model = stack_model.load_model(stack_dir)
    if model is None:
        return None
    summary = json.loads(Path(stack_json).read_text())
    n = summary["neighbours"]
    form = stack_model.linear_weights(model, task.num_outputs)
    return Stacking(model, summary["model"], n, summary["oof"],
                    program.LinearStack(*form) if form is not None and not n else None,
                    form if n else None)


def build_bag(params, task, meta, nets, ship: Shipping) -> program.Bagged:
    """The folds' networks, each under its own test-time views, in one module; the
    second-level model after them where it is a layer."""
    return program.Bagged([tta.wrap(net, params.tta, task, meta["hflip_safe"]) for net in nets],
                          task.head(), params.bag.mean, task.tempering(ship.temperature),
                          ship.stacked.layer if ship.stacked else None)


def export_bag(params, meta, bag, nets, ship: Shipping, paths: Paths) -> None:
    """The bag's program and meta.json into `paths.model_dir`, with the feature program (and
    the stack's weights) where the submission has set-level steps (`setlevel`)."""
    images = open_cache(paths.processed / "test.npy")
    example = torch.zeros((2, *images.shape[1:]), dtype=torch.uint8)  # batch size stays dynamic
    stacked = ship.stacked
    shipped = {**{key: meta[key] for key in program.TASK_KEYS}, "bag_mean": params.bag.mean,
               "folds": len(bag.nets), "decision": ship.decision,
               "neighbours": ship.k,  # set-level: a graph over the images predicted together
               "stack": stacked.meta() if stacked else {"model": ""},
               "tta": asdict(params.tta), "temperature": ship.temperature,
               "preprocess": Decode.of(meta).record()}
    beside = None
    if setlevel.wanted(shipped):
        def beside(folder):
            setlevel.save(folder, nets, example, stacked.weights if stacked else None)
    program.save(bag, example, shipped, paths.model_dir, beside)


def reference(test, task, ship: Shipping) -> np.ndarray:
    """The folds' own bagged test predictions, tempered, and stacked where the program holds
    the second-level model: what the program should reproduce up to precision."""
    bagged = test[task.columns].to_numpy()
    if ship.temperature != 1.0:
        bagged = calibration.temper(bagged, ship.temperature)
    stacked = ship.stacked
    if stacked and stacked.layer is not None:
        empty: np.ndarray = np.zeros((len(bagged), 0), dtype=np.int64)
        bagged = stack_model.predict(stacked.model, stack_model.features(bagged, empty, empty, 0),
                               task.num_outputs)
    return bagged


def verified(bag, reference_preds, test_images, runs, device, model_dir) -> Verified:
    """The shipped program's test predictions, once `verify` has accepted them against the
    same networks run eagerly here (and measured the drift from the folds' own)."""
    model, shipped_meta = program.load(model_dir, device)
    got = program.run_model(model, test_images, device=device, desc="exported")
    eager = program.run_model(bag.to(device).eval(), test_images, device=device, desc="eager bag")
    return Verified(got, (model, shipped_meta), check_export(got, eager, reference_preds, runs))


class Submitted(NamedTuple):
    preds: np.ndarray  # the submission's predictions, before the task's decision
    graph_agreement: float | None  # the share of the shipped features' test graph that is
    # the neighbours stage's (None: no graph built)


def submitted(got, loaded, test_images, stacked: Stacking | None, paths: Paths,
              device) -> Submitted:
    """The submission's predictions from the shipped program's `got`: as they are, or with the
    set-level steps computed from the shipped files as foldwise-predict computes them (its
    test graph checked against the neighbours stage's), or, for a stack the export cannot
    hold, that model applied to them and their neighbours' in the stage's graph. With the
    share of the shipped features' test graph that is the stage's (None: no graph built)."""
    meta = loaded[1]
    if not program.unreproducible(meta) and not setlevel.wanted(meta):
        return Submitted(got, None)
    stage_graph = np.load(paths.neighbours_dir / "graph.npz")
    if program.unreproducible(meta):
        assert stacked is not None  # only a stack outside the program is unreproducible
        x = stack_model.features(got, stage_graph["idx"], stage_graph["sim"], stacked.neighbours)
        return Submitted(stack_model.predict(stacked.model, x, got.shape[1]), None)
    features = program.run_model(setlevel.load_features(paths.model_dir, device), test_images,
                                 device=device, desc="features")
    graph = setlevel.graph(features, meta)
    same = float(np.mean(graph[0] == stage_graph["idx"])) if graph[0].size else 1.0
    return Submitted(setlevel.apply(got, graph, meta, paths.model_dir), same)


@dataclass(frozen=True)
class Paths:
    root: Annotated[Path, "the data set (some submissions follow its lookup table)"]
    models: Annotated[Path, "folder of the fold_k checkpoints"]
    processed: Annotated[Path, "the preprocess cache"]
    bagged: Annotated[Path, "bag's output (test.csv)"]
    metrics_json: Annotated[Path, "evaluate's metrics.json"]
    neighbours_dir: Annotated[Path, "the neighbours stage's test graph"]
    neighbours_json: Annotated[Path, "the neighbours stage's scores"]
    stack_dir: Annotated[Path, "the stack stage's model"]
    stack_json: Annotated[Path, "the stack stage's scores"]
    submission: Annotated[Path, "the competition file to write"]
    model_dir: Annotated[Path, "the exported bag's folder"]
    checks: Annotated[Path, "what the export checked and logged (JSON, for foldwise-report)"]


def run(params: Params, paths: Paths) -> str:
    """The export stage: export, verify, write the submission and log the MLflow model.
    Returns a one-line account."""
    meta = read_meta(paths.processed)
    task = create_task(meta, params)
    ship = shipping(task, paths)
    nets = [load_checkpoint(outputs.checkpoint_path(paths.models, f)) for f in params.folds]
    bag = build_bag(params, task, meta, nets, ship)
    export_bag(params, meta, bag, nets, ship, paths)
    runs = [outputs.read_run(paths.models, f) for f in params.folds]
    test = pd.read_csv(paths.bagged / "test.csv", dtype={"id": str})
    test_images, device = open_cache(paths.processed / "test.npy"), program.default_device()
    got, loaded, check = verified(bag, reference(test, task, ship), test_images, runs, device,
                                  paths.model_dir)
    final, same = submitted(got, loaded, test_images, ship.stacked, paths, device)
    get_source(meta["source"]).write_submission(test["id"], task.postprocess(final, ship.decision),
                                                {**meta, "root": paths.root}, paths.submission)
    served = served_score(task, paths.metrics_json, ship.stacked)
    logged = log_to_mlflow(params, task, runs, loaded, served, paths)
    record = checks(check, same, f"oof_{task.monitor}", served, logged, loaded[1])
    write_json(record, paths.checks)
    return account(record, ship.stacked, ship.temperature, ship.decision)


def checks(check, same, metric: str, served: float, logged: dict, meta: dict) -> dict:
    """export/checks.json: what the export stage checked and shipped, as the report's model
    card reads it."""
    return {"exported_vs_eager": check.worst, "tolerance": TOLERANCE,
            "drift_p99": check.drift, "drift_max": check.drift_max,
            "test_graph_agreement": same, "metric": metric, "served_figure": served,
            "outside_program": program.set_level(meta),  # reproduced by foldwise-predict
            "predict_refuses": program.unreproducible(meta),
            "folds": meta["folds"], "stack": meta["stack"].get("model", ""), **logged}


def account(record: dict, stacked: Stacking | None, temperature: float, decision) -> str:
    """The export stage's line."""
    where = "" if not stacked else (
        " with the second-level model" if stacked.layer is not None else
        "; the second-level model beside it" if stacked.weights is not None else
        "; the second-level model in the submission only")
    graph = ("" if record["test_graph_agreement"] is None else
             f"; the test graph from the shipped features: {record['test_graph_agreement']:.1%} "
             "of the neighbours stage's")
    return (f"exported {record['folds']} fold models{where}; max |exported - eager| = "
            f"{record['exported_vs_eager']:.2e}, vs the folds' predictions {record['drift_p99']:.2e} "
            f"(99th percentile); temperature {temperature:.4g}, decision {decision}{graph}; "
            f"MLflow model {mlflow_line(record)}")
