"""One fold's whole run: the torchrun relaunch for several devices, the MLflow run, the resume
file, the loop, and the fold's folder (`outputs`).

`run` is the train stage's body (round 1); the pseudo stage calls `fold_folder` with `after`
(the further pseudo-label rounds, from round 1's folder). Everything it reads comes from
params.yaml, the fold table, the preprocess cache and round 1's folder, everything it writes
goes to the fold's folder (and round 1's history CSV).
"""
from __future__ import annotations

import dataclasses
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import mlflow
import numpy as np
import pandas as pd
import torch

from foldwise import models, params as P, tracking
from foldwise.data.cache import load_truth, read_meta
from foldwise.errors import InputError
from foldwise.files import project_root, source_digest, write_csv
from foldwise.tasks import Task, create_task
from foldwise.train import augment, distributed, outputs, pseudo_labels, tta
from foldwise.train.loader import Rows, open_cache
from foldwise.train.loop import Around, FitData, FoldResult, Settings, train_fold
from foldwise.train.progress import REPLAYED, Progress

PACKAGE = Path(__file__).resolve().parents[1]  # foldwise's own code, as installed


@dataclass
class FoldData:
    """What one fold trains and predicts on: row numbers of the training table (`train.csv`)."""
    fold: int
    table: pd.DataFrame
    train_rows: np.ndarray
    val_rows: np.ndarray
    images: np.ndarray
    test_images: np.ndarray
    labels: np.ndarray
    test_ids: pd.Series


@dataclass(frozen=True)
class FoldPaths:
    """A fold folder's inputs and outputs. `after`: the models folder holding round 1 (the
    pseudo stage), else None (the train stage)."""
    folds_csv: Path
    processed: Path
    out: Path
    history_csv: Path | None
    after: Path | None = None

    @property
    def role(self) -> str:
        return "fold" if self.after is None else "pseudo"


@dataclass(frozen=True)
class FoldJob:
    """A fold being trained: the pipeline's params, the preprocess cache's meta.json, the
    fold's paths and rows, its pipeline key (what its MLflow parent and resume file are
    keyed by) and how it trains."""
    params: P.Params
    meta: dict
    paths: FoldPaths
    data: FoldData
    key: str
    settings: Settings


def fold_rows(folds_csv, processed: Path, fold: int):
    """The training table and this fold's train and validation rows, checked against the split."""
    folds = pd.read_csv(folds_csv, dtype={"id": str, "group": str})
    train_table = pd.read_csv(processed / "train.csv", dtype={"id": str, "group": str})
    if not folds["id"].equals(train_table["id"]):
        raise InputError(f"{folds_csv} and {processed / 'train.csv'} list different images: "
                         "rerun split and preprocess")
    if fold not in set(folds["fold"]):
        raise InputError(f"{folds_csv}: no fold {fold}; params.yaml folds and the split disagree")
    is_val = folds["fold"].to_numpy() == fold
    return train_table, np.flatnonzero(~is_val), np.flatnonzero(is_val)


def load_data(folds_csv, processed: Path, fold: int) -> FoldData:
    table, tr, va = fold_rows(folds_csv, processed, fold)
    return FoldData(fold, table, tr, va, open_cache(processed / "train.npy"),
                    open_cache(processed / "test.npy"), load_truth(processed),
                    pd.read_csv(processed / "test.csv", dtype={"id": str})["id"])


def resume_file(root: Path, key: str, fold: int | str, package: Path = PACKAGE) -> Path:
    """Where a fold killed mid-training keeps its state: keyed by everything that shapes the
    result, the code included, so a fold rerun after a fix to foldwise starts over instead of
    resuming the old code's weights, optimiser and history. `fold`: a fold's number, or the
    name of another run (`distilled`)."""
    name = f"fold{fold}" if isinstance(fold, int) else fold
    return Path(root) / ".foldwise" / "resume" / f"{key}-{source_digest(package)[:12]}-{name}.pt"


def summarise(result: FoldResult, task, y_val) -> dict:
    """The fold's figures for MLflow and run.json: the kept epoch's validation columns, and the
    scores of what the OOF table holds (the kept weights, with test-time augmentation)."""
    best = result.history.iloc[result.best_epoch]
    return {"best_epoch": result.best_epoch, "train_images_per_s": result.train_images_per_s,
            **{f"best_{k}": float(v) for k, v in best.items() if k.startswith("val_")},
            **{f"oof_{k}": float(v) for k, v in task.score(y_val, result.val_preds).items()}}


def prediction_tables(data: FoldData, result: FoldResult,
                      task: Task) -> tuple[pd.DataFrame, pd.DataFrame]:
    va = data.val_rows
    oof = outputs.oof_table(data.table["id"].iloc[va], data.table["group"].iloc[va], data.fold,
                            data.labels[va], result.val_preds, task.columns)
    return oof, outputs.prediction_table(data.test_ids, result.test_preds, task.columns)


def log_artifacts(result: FoldResult, out: Path, title: str) -> None:
    """The history, learning curve and checkpoint as artifacts of the active MLflow run."""
    with tempfile.TemporaryDirectory() as art:
        result.history.to_csv(Path(art) / "history.csv", index=False)
        tracking.learning_curve_png(result.history, Path(art) / "learning_curve.png", title)
        mlflow.log_artifacts(art)
    mlflow.log_artifact(str(out / "model.pt"))


def start_fold_run(params: P.Params, key: str, fold: int, weights: str, device, role: str = "fold"):
    """The fold's MLflow run (an active run, for `with`) under its pipeline's parent, with the
    parent's and experiment's ids; earlier attempts of this fold that died are marked KILLED
    and named in the new run's `foldwise.resumes` tag. `role`: round 1 (`fold`) or the
    pseudo-label rounds (`pseudo`), each a run of its own."""
    experiment = tracking.open_experiment(params.mlflow)
    parent = tracking.parent_for_fold(experiment, key, fold, params, role)
    killed = tracking.close_killed_attempts(experiment, parent, fold, role=role)
    tags = {"foldwise.fold": str(fold), "foldwise.pipeline_key": key, "foldwise.role": role,
            "foldwise.weights": weights, "foldwise.device": str(device),
            "foldwise.devices": str(distributed.world()), **tracking.source_tags()}
    if killed:
        tags["foldwise.resumes"] = ",".join(killed)
    mlflow.set_system_metrics_sampling_interval(2)
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # its start/stop lines
    name = f"fold {fold}" if role == "fold" else f"fold {fold} pseudo-labels"
    run = mlflow.start_run(experiment_id=experiment, run_name=name, parent_run_id=parent,
                           tags=tags, log_system_metrics=True)  # CPU, memory, GPU
    return run, parent, experiment


def log_inputs(params: P.Params, data: FoldData, paths: FoldPaths, meta: dict) -> None:
    tracking.log_params(params, fold=data.fold, train_images=len(data.train_rows),
                        val_images=len(data.val_rows))
    tracking.log_fold_inputs(data.table, data.train_rows, data.val_rows,
                             [paths.folds_csv, paths.processed / "train.csv",
                              paths.processed / "meta.json"],
                             f"{meta['source']} fold {data.fold}", params.data.root)


def tracked(job: FoldJob, fit, network: models.Network) -> dict:
    """Rank 0's run: the fold trained inside its MLflow run, its folder and history written."""
    params, meta, paths, data, key = job.params, job.meta, job.paths, job.data, job.key
    device = job.settings.device
    task, cfg = create_task(meta, params), params.train
    run, parent, experiment = start_fold_run(params, key, data.fold, network.weights, device, paths.role)
    with run:
        log_inputs(params, data, paths, meta)
        result = fit(on_epoch=lambda row: mlflow.log_metrics(
            {k: v for k, v in row.items() if k not in ("epoch", REPLAYED)}, step=int(row["epoch"])))
        summary = summarise(result, task, data.labels[data.val_rows])
        mlflow.log_metrics(summary)
        mlflow.set_tag("foldwise.kept_weights", result.weights)
        info = {"run_id": run.info.run_id, "parent_run_id": parent, "experiment_id": experiment,
                "pipeline_key": key, "weights": network.weights, "device": device.type,
                "devices": distributed.world(),
                "precision": "bfloat16" if job.settings.amp else "float32",
                "kept_weights": result.weights, **summary}
        if paths.after is not None:  # the round 1 these rounds started from (final_dir checks)
            info["round_1"] = outputs.round_1_digest(paths.after, data.fold)
        outputs.write(paths.out, {"spec": network.spec, "state_dict": result.state_dict,
                                  "fold": data.fold},
                      *prediction_tables(data, result, task), info, result.history)
        log_artifacts(result, paths.out, f"fold {data.fold}: {cfg.model}, lr {params.lr:g}")
        if paths.history_csv:
            write_csv(result.history, paths.history_csv)
    return {**summary, "monitor": task.monitor, "images_per_s": result.train_images_per_s}


def fitter(job: FoldJob, net, task, around: Around):
    """The training the stage does, as a call taking `on_epoch` (`around`: resuming and the
    test-time views): round 1 (`train_fold`), or with `paths.after` (the models folder holding
    round 1) the further pseudo-label rounds from its kept weights and predictions, round 1's
    history replayed to `on_epoch` first."""
    params, data, after = job.params, job.data, job.paths.after
    rows = FitData(Rows(data.images, data.train_rows), data.labels[data.train_rows],
                   Rows(data.images, data.val_rows), data.labels[data.val_rows], data.test_images)
    if after is None:
        def fit(on_epoch=lambda row: None):
            return train_fold(net, task, job.settings, rows, dataclasses.replace(around, on_epoch=on_epoch))
        return shown(fit, Progress(f"fold {data.fold}", params.train.epochs, task.monitor,
                                   folds_after(params, data.fold)))
    first = pseudo_labels.first_round(after, data.fold, task, data.table["id"],
                                      data.table["id"].iloc[data.val_rows], data.test_ids)
    net.load_state_dict(first.state_dict)
    rounds = pseudo_labels.Rounds(params.pseudo, first, replay=True)

    def further(on_epoch=lambda row: None):
        return pseudo_labels.further_rounds(net, task, job.settings, rows, rounds,
                                            dataclasses.replace(around, on_epoch=on_epoch))
    planned = len(first.history) + params.pseudo.rounds * params.pseudo.epochs
    return shown(further, Progress(f"fold {data.fold} pseudo-labels", planned, task.monitor,
                                   folds_after(params, data.fold)))


def folds_after(params: P.Params, fold: int) -> int:
    """How many folds `folds` lists after this one (the pipeline's training still ahead)."""
    return len(params.folds) - params.folds.index(fold) - 1 if fold in params.folds else 0


def shown(fit, progress: Progress):
    """`fit` with each epoch's row also printed as one readable line (`progress`), by the
    lead process only (under torchrun every rank trains)."""
    def fit_shown(on_epoch=lambda row: None):
        lead = distributed.is_lead()
        return fit(on_epoch=lambda row: (on_epoch(row), lead and progress(row)))
    return fit_shown


@dataclass(frozen=True)
class Paths:
    """The train stage's arguments."""
    fold: Annotated[int, "which fold to validate on (0..k-1)"]
    folds_csv: Annotated[Path, "split's fold table"]
    processed: Annotated[Path, "the preprocess cache"]
    out: Annotated[Path, "the fold's outputs"]
    history_csv: Annotated[Path, "per-epoch history (DVC plots it)"]


def run(params: P.Params, paths: Paths) -> int:
    """The train stage: fold `paths.fold`'s round 1 into its folder (`fold_folder`)."""
    return fold_folder(params, paths.fold, FoldPaths(paths.folds_csv, paths.processed, paths.out,
                                                     paths.history_csv))


def fold_folder(params: P.Params, fold: int, paths: FoldPaths) -> int:
    """Train fold `fold` and write its folder: round 1, or with `paths.after` (the models
    folder holding it) its further pseudo-label rounds (the pseudo stage calls it when there
    are any). Returns the exit status (torchrun's, when this process relaunched itself on
    several devices)."""
    meta = read_meta(paths.processed)
    check(params, meta)
    if not distributed.launched():  # an unreachable server fails here, not in DDP's set-up
        tracking.open_experiment(params.mlflow)
    code = distributed.relaunch(params.train.devices)  # this command, once per device, by torchrun
    if code is not None:
        return code
    device = distributed.setup()
    data = load_data(paths.folds_csv, paths.processed, fold)
    seed = params.seed * 1000 + fold
    torch.manual_seed(seed)  # before the model exists: its random init is part of the result
    task = create_task(meta, params)
    network = models.create_network(params.train, task.num_outputs, data.images.shape[-1],
                                    meta["mean"], meta["std"], task.fp32_head)
    key = tracking.pipeline_key(params, paths.folds_csv, paths.processed / "meta.json")
    resume = resume_file(project_root(), key, fold if paths.after is None else f"pseudo{fold}")
    job = FoldJob(params, meta, paths, data, key, Settings(params.train, params.lr, seed, device))
    fit = fitter(job, network.net, task,
                 Around(resume=resume, wrap=lambda n: tta.wrap(n, params.tta, task, meta["hflip_safe"])))
    if not distributed.is_lead():  # another device's rank: trains its share (resuming with rank 0
        fit()                       # from its file), logs and writes nothing
        distributed.close()
        return 0
    done = tracked(job, fit, network)
    for r in range(1, params.pseudo.rounds + 2):
        stale = pseudo_labels.round_resume(resume, r)
        if stale is not None:
            stale.unlink(missing_ok=True)
    distributed.close()
    print(f"fold {fold}: best epoch {done['best_epoch']}, val {done['monitor']} "
          f"{done['best_val_' + done['monitor']]:.4f}, {done['images_per_s']:.0f} train images/s "
          f"on {device}")
    return 0


def check(params: P.Params, meta: dict) -> None:
    """Settings refused before anything trains, naming the key."""
    asks = params.pseudo.rounds or params.train.augment.erase  # what the task has a say in
    task = create_task(meta, params) if asks else None
    augment.check(params.train.augment, meta["hflip_safe"], task is None or task.erases)
    models.check_weights_location(params.train.weights_file)
    tta.views(params.tta, meta["hflip_safe"])
    pseudo_labels.check(params.pseudo, task if params.pseudo.rounds else None)
