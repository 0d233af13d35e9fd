"""train: one fold. Trains on the other folds, keeps the epoch with the best validation loss.

usage: python stages/train.py FOLD FOLDS_CSV PROCESSED_DIR OUT_DIR HISTORY_CSV
params: seed, lr, train.* (model, weights, optimiser, schedule, epochs, augmentation, EMA,
        mixup, devices, ...), tta (test-time views of validation and test), mlflow (where the
        fold's run is logged)
writes OUT_DIR/{model.pt, oof.csv, test.csv, run.json, history.csv} and the per-epoch HISTORY_CSV;
logs the fold as a child run in MLflow. With train.devices N > 1 the fold trains on N devices
(DDP, N processes started by torchrun; foldwise.distributed), rank 0 logging and writing.
"""
import json
import logging
import sys
import tempfile
from pathlib import Path

import _src  # noqa: F401
import mlflow
import numpy as np
import pandas as pd
import torch

from foldwise import augment, checkpoints, distributed, params as P, stage, tracking, tta
from foldwise.cache import load_truth
from foldwise.errors import InputError
from foldwise.files import atomic_dir, project_root, write_csv
from foldwise.loader import Rows, open_cache
from foldwise.models import Normalised, create_backbone, input_normalisation
from foldwise.tasks import create_task
from foldwise.training import train_fold


def prediction_table(ids, preds, columns, **extra) -> pd.DataFrame:
    df = pd.DataFrame(preds, columns=columns)
    for i, (name, values) in enumerate({"id": ids, **extra}.items()):
        df.insert(i, name, np.asarray(values))
    return df


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


def build_net(cfg: dict, task, meta: dict, in_chans: int):
    """timm's model with its input normalisation inside; also where its weights came from and
    the normalisation, for the checkpoint's spec."""
    backbone, weights = create_backbone(cfg["model"], task.num_outputs, in_chans,
                                        cfg["pretrained"], cfg["weights_file"], cfg["weights_match"],
                                        cfg["pretrained_fallback"], cfg["model_kwargs"])
    mean, std = input_normalisation(backbone, weights, meta["mean"], meta["std"])
    return Normalised(backbone, mean, std), weights, {"model": cfg["model"], "mean": mean, "std": std,
                                                      "num_outputs": task.num_outputs,
                                                      "in_chans": in_chans,
                                                      "model_kwargs": cfg["model_kwargs"]}


def summarise(result, task, y_val) -> dict:
    """The fold's figures for MLflow and run.json: the kept epoch's validation columns, and the
    scores of what the OOF table holds (the kept weights, with test-time augmentation)."""
    best = result.history.iloc[result.best_epoch]
    return {"best_epoch": result.best_epoch, "train_images_per_s": result.train_images_per_s,
            **{f"best_{k}": float(v) for k, v in best.items() if k.startswith("val_")},
            **{f"oof_{k}": float(v) for k, v in task.score(y_val, result.val_preds).items()}}


def fold_tables(train_table, va, labels, fold: int, result, task, processed: Path):
    """The fold's OOF table (ids, group, fold, label when there is one, predictions) and its
    test table (ids, predictions)."""
    extra = {"group": train_table["group"].iloc[va], "fold": np.full(len(va), fold)}
    if labels.ndim == 1:
        extra["label"] = labels[va]
    oof = prediction_table(train_table["id"].iloc[va], result.val_preds, task.columns, **extra)
    test = prediction_table(pd.read_csv(processed / "test.csv", dtype={"id": str})["id"],
                            result.test_preds, task.columns)
    return oof, test


def write_outputs(out, fold, result, spec, oof, test, run_info: dict, title: str) -> None:
    """The fold's folder (checkpoint, predictions, run.json) in one atomic write; the history,
    learning curve and checkpoint as artifacts of the active MLflow run."""
    with atomic_dir(out) as tmp:
        checkpoints.save({"spec": spec, "state_dict": result.state_dict, "fold": fold},
                         tmp / "model.pt")
        write_csv(oof, tmp / "oof.csv", float_format="%.8g")
        write_csv(test, tmp / "test.csv", float_format="%.8g")
        (tmp / "run.json").write_text(json.dumps(run_info, indent=2) + "\n")
        write_csv(result.history, tmp / "history.csv")
        with tempfile.TemporaryDirectory() as art:
            result.history.to_csv(Path(art) / "history.csv", index=False)
            tracking.learning_curve_png(result.history, Path(art) / "learning_curve.png", title)
            mlflow.log_artifacts(art)
        mlflow.log_artifact(str(tmp / "model.pt"))


def start_fold_run(params: dict, key: str, fold: int, weights: str, device):
    """The fold's MLflow run (an active run, for `with`) under its pipeline's parent, with the
    parent's and experiment's ids; earlier attempts of this fold that died are marked KILLED
    and named in the new run's `foldwise.resumes` tag."""
    experiment = tracking.open_experiment(P.get(params, "mlflow"))
    parent = tracking.parent_for_fold(experiment, key, fold, params)
    killed = tracking.close_killed_attempts(experiment, parent, fold)
    tags = {"foldwise.fold": str(fold), "foldwise.pipeline_key": key, "foldwise.role": "fold",
            "foldwise.weights": weights, "foldwise.device": str(device),
            "foldwise.devices": str(distributed.world()), **tracking.source_tags()}
    if killed:
        tags["foldwise.resumes"] = ",".join(killed)
    mlflow.set_system_metrics_sampling_interval(2)
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # its start/stop lines
    run = mlflow.start_run(experiment_id=experiment, run_name=f"fold {fold}", parent_run_id=parent,
                           tags=tags, log_system_metrics=True)  # CPU, memory, GPU
    return run, parent, experiment


def main():
    fold, folds_csv, processed, out, history_csv = stage.arguments(
        __doc__, ("fold", "which fold to validate on (0..k-1)"), ("folds_csv", "split's fold table"),
        ("processed_dir", "the preprocess cache"), ("out_dir", "the fold's outputs"),
        ("history_csv", "per-epoch history (DVC plots it)"))
    fold, processed = int(fold), Path(processed)
    params = P.load()
    cfg = P.get(params, "train")
    meta = json.loads((processed / "meta.json").read_text())
    augment.check(cfg["augment"], meta["hflip_safe"])
    tta.views(P.get(params, "tta"), meta["hflip_safe"])  # a refused view stops before training
    code = distributed.relaunch(int(cfg["devices"]))  # this command, once per device, by torchrun
    if code is not None:
        sys.exit(code)
    device = distributed.setup()
    train_table, tr, va = fold_rows(folds_csv, processed, fold)
    images = open_cache(processed / "train.npy")
    test_images = open_cache(processed / "test.npy")
    labels = load_truth(processed)

    seed = int(P.get(params, "seed")) * 1000 + fold
    torch.manual_seed(seed)  # before the model exists: its random init is part of the result
    task = create_task(meta, params)
    net, weights, spec = build_net(cfg, task, meta, images.shape[-1])
    lr = float(P.get(params, "lr"))

    def fit(on_epoch=lambda row: None, resume=None):
        return train_fold(net, task, lr, cfg, seed, Rows(images, tr), labels[tr], Rows(images, va),
                          labels[va], test_images, device, on_epoch=on_epoch, resume=resume,
                          wrap=lambda n: tta.wrap(n, P.get(params, "tta"), meta))

    key = tracking.pipeline_key(params, folds_csv, processed / "meta.json")
    # survives a crash mid-fold; keyed by everything that shapes the result
    resume = project_root() / ".foldwise" / "resume" / f"{key}-fold{fold}.pt"
    if not distributed.is_lead():  # another device's rank: trains its share (resuming with rank 0
        fit(resume=resume)          # from its file), logs and writes nothing
        distributed.close()
        return

    run, parent, experiment = start_fold_run(params, key, fold, weights, device)
    with run:
        tracking.log_params({**params, "fold": fold, "train_images": len(tr), "val_images": len(va)})
        tracking.log_fold_inputs(train_table, tr, va, [folds_csv, processed / "train.csv",
                                                       processed / "meta.json"],
                                 f"{meta['source']} fold {fold}", P.get(params, "data.root"))
        result = fit(on_epoch=lambda row: mlflow.log_metrics(
            {k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"])), resume=resume)
        summary = summarise(result, task, labels[va])
        mlflow.log_metrics(summary)
        mlflow.set_tag("foldwise.kept_weights", result.weights)

        oof, test = fold_tables(train_table, va, labels, fold, result, task, processed)
        amp = bool(cfg["amp"]) and device.type == "cuda"
        write_outputs(out, fold, result, spec, oof, test,
                      {"run_id": run.info.run_id, "parent_run_id": parent,
                       "experiment_id": experiment, "pipeline_key": key, "weights": weights,
                       "device": device.type, "devices": distributed.world(),
                       "precision": "bfloat16" if amp else "float32",
                       "kept_weights": result.weights,
                       **summary},
                      f"fold {fold}: {cfg['model']}, lr {lr:g}")
        write_csv(result.history, history_csv)
    resume.unlink(missing_ok=True)
    distributed.close()
    print(f"fold {fold}: best epoch {result.best_epoch}, "
          f"val {task.monitor} {summary['best_val_' + task.monitor]:.4f}, "
          f"{result.train_images_per_s:.0f} train images/s on {device}")


if __name__ == "__main__":
    stage.run(main)
