"""The distilled network's run (what the distill stage runs when on): trained by the folds' own
loop inside an MLflow run under the pipeline's parent (killed, it resumes from its last epoch),
exported as a one-network program, checked against itself run eagerly, and its submission
written from the program's predictions (the speed stage times it beside the exported bag)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

import mlflow
import numpy as np
import torch

from foldwise import tracking
from foldwise.data.cache import load_truth
from foldwise.deploy import mlmodel, program, single, soft_targets
from foldwise.deploy.student import MODEL, STUDENT_SEED, DistillPaths, Teacher, flat_figures
from foldwise.files import project_root, write_csv, write_json
from foldwise.params import Params
from foldwise.train.progress import REPLAYED
from foldwise.train.train import resume_file
from foldwise.train.loader import Joined, open_cache
from foldwise.train.loop import Around, FitData, FoldResult, Settings, train_fold

def train_and_ship(job: single.Job, cfg, student_task, teacher: Teacher) -> dict:
    """Train the student (`cfg`: its training settings) against `teacher`'s rows, ship it into
    `paths.out` and write its figures and history. Returns the figures."""
    params, paths = job.params, job.paths
    images, test_images = (open_cache(paths.processed / f"{n}.npy") for n in ("train", "test"))
    net, weights, seed = single.seeded_network(job, cfg, images.shape[-1], STUDENT_SEED)
    key = student_key(params, teacher, paths)
    resume = resume_file(project_root(), key, "distilled")
    run_id = start_run(params, paths, key, weights, teacher)
    with mlflow.start_run(run_id=run_id):
        tracking.log_params(params, teacher=teacher.name, train_images=len(images),
                            student_epochs=cfg.epochs)
        result = train_fold(net, student_task, Settings(cfg, params.lr, seed, job.device),
                            student_data(images, test_images, teacher, params.distill.test),
                            Around(log_epoch, resume))
        figures, loaded = ship_student(job, teacher, net, result)
        figures["epochs_run"], figures["best_epoch"] = len(result.history), result.best_epoch
        figures["mlflow_run_id"] = run_id
        mlflow.log_metrics(flat_figures(figures))
    write_json(figures, paths.out_json)
    write_csv(result.history, paths.history_csv)
    figures["mlflow_model"] = mlmodel.log(paths.out / MODEL, np.asarray(test_images[:2]), run_id,
                                          name="distilled", loaded=loaded)
    resume.unlink(missing_ok=True)
    return figures


def log_epoch(row: dict) -> None:
    """An epoch's figures into the active MLflow run (rows replayed on resuming are not)."""
    mlflow.log_metrics({k: v for k, v in row.items() if k not in ("epoch", REPLAYED)},
                       step=int(row["epoch"]))


def student_data(images, test_images, teacher: Teacher, with_test: bool) -> FitData:
    """The student's rows: every training image against the teacher's OOF row and, with
    `distill.test`, every test image after them against the teacher's test row (one joined
    view, nothing copied). It validates on the test images against the teacher either way:
    held out without `distill.test`, in-sample with it."""
    x, y = images, teacher.train
    if with_test:
        x, y = Joined(images, test_images), np.concatenate([teacher.train, teacher.test])
    return FitData(x, y, test_images, teacher.test, test_images)


def fidelity_key(params: Params) -> str:
    """The name `metrics/distill.json` gives the student's figures against the teacher on the
    test images: `test_fidelity` where they are held out, else `test_fidelity_not_held_out`."""
    return "test_fidelity_not_held_out" if params.distill.test else "test_fidelity"


def student_key(params: Params, teacher: Teacher, paths: DistillPaths) -> str:
    """Everything that shapes the student: the pipeline's training params and data (the folds'
    key), the distill section and the teacher's rows."""
    h = hashlib.sha1(tracking.pipeline_key(params, paths.processed / "meta.json").encode())
    h.update(json.dumps(asdict(params.distill), sort_keys=True).encode())
    for rows in (teacher.train, teacher.test):
        h.update(np.ascontiguousarray(rows, dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


def start_run(params: Params, paths: DistillPaths, key: str, weights: str, teacher: Teacher) -> str:
    """The student's MLflow run under the parent that holds the folds."""
    return single.start_child_run(params, paths.models, "distilled", f"distilled {params.distill.model}",
                                  {"foldwise.pipeline_key": key, "foldwise.teacher": teacher.name,
                                   "foldwise.weights": weights})


def ship_student(job: single.Job, teacher: Teacher, net, result: FoldResult) -> single.Shipped:
    """Export the kept network, check the program against it run eagerly, write the folder
    (program + submission) and score it: fidelity on test, in-sample figures on train."""
    params, task, processed = job.params, job.task, job.paths.processed
    # exported from the CPU in the default layout, as the bag's networks are loaded
    net = net.cpu().to(memory_format=torch.contiguous_format).eval()
    shipped = single.shipped_meta(job.meta, teacher.decision, {"hflip": False, "shift": 0.0, "scale": 0.0},
                                  1.0, distilled={"model": params.distill.model, "teacher": teacher.name})
    got, loaded, check = single.ship(job, program.Bagged([net], task.head(), "arithmetic"), shipped,
                                     result.test_preds)
    in_sample = program.run_model(loaded[0], open_cache(processed / "train.npy"),
                                  device=job.device, desc="student on train")
    figures = {"model": params.distill.model, "teacher": teacher.name,
               "kept_weights": result.weights,
               fidelity_key(params): soft_targets.fidelity(teacher.test, got),
               "train_not_out_of_fold": task.score(load_truth(processed), in_sample),
               "teacher_oof": teacher_figures(task, teacher),
               "export_max_abs_vs_eager": check.worst}
    return single.Shipped(figures, loaded)


def teacher_figures(task, teacher: Teacher) -> dict:
    """The teacher's OOF figures as shipped: calibrated where a temperature is in the bag."""
    oof = teacher.oof
    return {task.monitor: float(oof.get(f"{task.monitor}_calibrated", oof[task.monitor])),
            **{k: float(v) for k, v in oof.items() if k == "accuracy"}}
