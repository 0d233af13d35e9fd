"""The refit network's run (the refit stage's heavy half, `refit.py` says what it is): trained by
the folds' own loop on every training image inside an MLflow run under the pipeline's parent
(killed, it resumes from its last epoch), exported as a one-network program under the bag's
test-time views, temperature and decision, checked against itself run eagerly, and its
submission written from the program's predictions."""
from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import asdict
from pathlib import Path
import mlflow
import numpy as np
import torch

from foldwise import tracking
from foldwise.data.cache import load_truth
from foldwise.deploy import mlmodel, program, single
from foldwise.deploy.refit_plan import HELD, Plan, RefitPaths
from foldwise.deploy.student import MODEL, flat_figures
from foldwise.errors import InputError
from foldwise.files import project_root, write_csv, write_json
from foldwise.metrics import fidelity
from foldwise.params import Params, evolve
from foldwise.tasks import create_task, of_classes
from foldwise.train import tta
from foldwise.train.train import resume_file
from foldwise.train.loader import Rows, open_cache
from foldwise.train.loop import Around, FitData, FoldResult, Settings, train_fold
from foldwise.train.progress import REPLAYED, Progress

INSAMPLE_ROWS = 2048  # training images scored after each epoch (in-sample)
REFIT_SEED = 998  # the refit network's seed: params.seed * 1000 + this (folds: + fold)


def train_and_ship(params: Params, meta: dict, paths: RefitPaths, plan: Plan) -> dict:
    """Train the refit network (`plan`), ship it into `paths.out` and write its figures and
    history. Returns the figures."""
    task, device = create_task(meta, params), program.default_device()
    job = single.Job(params, task, meta, paths, device)
    cfg = evolve(params.train, {"epochs": plan.epochs, "patience": plan.epochs, "devices": 1})
    images = open_cache(paths.processed / "train.npy")
    net, weights, seed = single.seeded_network(job, cfg, images.shape[-1], REFIT_SEED)
    key = refit_key(params, plan, paths)
    resume = resume_file(project_root(), key, "refit")
    run_id = single.start_child_run(params, paths.models, "refit", f"refit {cfg.model}",
                                    {"foldwise.pipeline_key": key, "foldwise.weights": weights,
                                     "foldwise.refit_epochs": str(plan.epochs)})
    show = Progress("refit", plan.epochs, task.monitor, held="in-sample")

    def shown_and_logged(row: dict) -> None:
        show(row)
        log_epoch(row)

    with mlflow.start_run(run_id=run_id):
        tracking.log_params(params, train_images=len(images), refit_epochs=plan.epochs,
                            refit_epochs_from=plan.why, refit_keeps=plan.weights)
        result = train_fold(net, task, Settings(cfg, params.lr, seed, device, keep=plan.weights),
                            fit_data(paths.processed, images),
                            Around(shown_and_logged, resume, views(params, task, meta)))
        figures, loaded = ship_refit(job, net, result)
        figures.update(epochs=plan.epochs, epochs_from=plan.why, mlflow_run_id=run_id,
                       train_images_per_s=result.train_images_per_s)
        mlflow.log_metrics(flat_figures(figures))
        history = result.history.rename(columns=renamed)
        log_artifacts(history, f"refit: {cfg.model}, {plan.epochs} epochs on every image")
    write_json(figures, paths.out_json)
    write_csv(history, paths.history_csv)
    figures["mlflow_model"] = mlmodel.log(paths.out / MODEL, np.asarray(open_cache(
        paths.processed / "test.npy")[:2]), run_id, name="refit", loaded=loaded)
    resume.unlink(missing_ok=True)
    return figures


def refit_tta(params: Params):
    """The refit network's test-time views: the bag's (`tta.*`), or none (`refit.tta: false`)."""
    return params.tta if params.refit.tta else evolve(params.tta, {"hflip": False, "shift": 0.0,
                                                                   "scale": 0.0})


def views(params: Params, task, meta: dict):
    """A network wrapped in the refit network's test-time views."""
    return lambda net: tta.wrap(net, refit_tta(params), task, meta["hflip_safe"])


def renamed(column: str) -> str:
    """A history column named for what it is: the epochs' "validation" rows are in-sample."""
    return column.replace("val_", f"{HELD}_", 1) if "val_" in column else column


def log_epoch(row: dict) -> None:
    mlflow.log_metrics({renamed(k): v for k, v in row.items() if k not in ("epoch", REPLAYED)},
                       step=int(row["epoch"]))


def log_artifacts(history, title: str) -> None:
    """The history and its learning curve as artifacts of the active MLflow run."""
    with tempfile.TemporaryDirectory() as art:
        history.to_csv(Path(art) / "history.csv", index=False)
        tracking.learning_curve_png(history, Path(art) / "learning_curve.png", title, held=HELD)
        mlflow.log_artifacts(art)


def insample_rows(n: int) -> np.ndarray:
    """A fixed, evenly spread subset of the training rows, scored after each epoch."""
    return np.unique(np.linspace(0, n - 1, min(n, INSAMPLE_ROWS)).round().astype(np.int64))


def fit_data(processed: Path, images) -> FitData:
    """Every training image with its label; the in-sample subset as the loop's "validation"
    rows; the test images."""
    labels, rows = np.array(load_truth(processed)), insample_rows(len(images))  # writable
    return FitData(images, labels, Rows(images, rows), labels[rows],
                   open_cache(processed / "test.npy"))


def refit_key(params: Params, plan: Plan, paths: RefitPaths) -> str:
    """Everything that shapes the refit network: the pipeline's training params and data (the
    folds' key) and its plan."""
    h = hashlib.sha1(tracking.pipeline_key(params, paths.processed / "meta.json").encode())
    h.update(json.dumps(asdict(plan), sort_keys=True).encode())
    return h.hexdigest()[:16]


def ship_refit(job: single.Job, net, result: FoldResult) -> single.Shipped:
    """Export the kept network under the bag's views, temperature and decision, check and write
    its folder, and its figures: in-sample on the training images, and beside the bag on the
    held-out test images."""
    params, task, meta, paths = job.params, job.task, job.meta, job.paths
    oof = json.loads(paths.metrics_json.read_text())["oof"]
    temperature, decision = float(oof.get("temperature", 1.0)), task.decision(oof)
    # exported from the CPU in the default layout, as the bag's networks are loaded
    net = net.cpu().to(memory_format=torch.contiguous_format).eval()
    tempering = task.tempering(temperature)
    bagged = program.Bagged([views(params, task, meta)(net)], task.head(), "arithmetic", tempering)
    shipped = single.shipped_meta(meta, decision, asdict(refit_tta(params)), temperature,
                                  refit={"model": params.train.model, "epochs": len(result.history)})
    expected = result.test_preds if tempering is None else \
        tempering(torch.as_tensor(result.test_preds)).numpy()
    got, loaded, check = single.ship(job, bagged, shipped, expected)
    train_preds = program.run_model(loaded[0], open_cache(paths.processed / "train.npy"),
                                    device=job.device, desc="refit on train")
    figures = {"model": params.train.model, "kept_weights": result.weights, "oof": None,
               "no_oof": "every training image trained it: no image is out of its fold",
               "train_not_out_of_fold": task.score(load_truth(paths.processed), train_preds),
               "vs_bag_on_test": beside_bag(task, paths.bagged, paths.processed, tempering, got),
               "export_max_abs_vs_eager": check.worst}
    return single.Shipped(figures, loaded)


def beside_bag(task, bagged: Path, processed: Path, tempering, got: np.ndarray) -> dict:
    """The refit network's test predictions against the bag's (tempered as the exported bag
    tempers them, before the decision): their mean absolute difference and, for class
    probabilities, the refit's cross-entropy against the bag's and the share of images whose
    top classes agree."""
    import pandas as pd
    test = pd.read_csv(Path(bagged) / "test.csv", dtype={"id": str})
    ids = pd.read_csv(Path(processed) / "test.csv", dtype={"id": str})["id"]
    if not test["id"].equals(ids):
        raise InputError(f"{Path(bagged) / 'test.csv'} and {Path(processed) / 'test.csv'} list "
                         "different images: rerun the bag stage")
    bag = test[task.columns].to_numpy(dtype=np.float64)
    if tempering is not None:
        bag = tempering(torch.as_tensor(bag)).double().numpy()
    out = {"mean_abs_diff": float(np.abs(got - bag).mean())}
    if of_classes(task):
        out.update(fidelity(bag / bag.sum(axis=1, keepdims=True), got))  # rows of 8 digits
    return out
