"""One network shipped as the bag is (the distilled student, the refit network): its MLflow run
a child of the pipeline's parent, its program exported and checked against itself run eagerly,
and its submission written from what the program predicts, so that `foldwise-predict` and its
MLflow model reproduce it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import mlflow
import numpy as np
import pandas as pd
import torch

from foldwise import models, tracking
from foldwise.data.cache import Decode
from foldwise.data.sources import get_source
from foldwise.deploy import program
from foldwise.deploy.student import MODEL, SUBMISSION
from foldwise.deploy.verify import Verified, check_export
from foldwise.files import atomic_dir
from foldwise.params import Params
from foldwise.tasks import Task
from foldwise.train import outputs
from foldwise.train.loader import open_cache


@dataclass(frozen=True)
class Job:
    """What a one-network run (refit, distilled) works from: the pipeline's params, its task,
    the preprocess cache's meta.json, the stage's paths (`root`, `processed`, `out`, `models`
    and the stage's own) and the device it trains and checks on."""
    params: Params
    task: Task
    meta: dict
    paths: Any
    device: torch.device


class Seeded(NamedTuple):
    net: torch.nn.Module
    weights: str  # where its initial weights came from (models.create_network)
    seed: int


class Shipped(NamedTuple):
    figures: dict  # what metrics/<name>.json holds of the shipped network
    loaded: tuple  # its program loaded back: (module, meta)


def seeded_network(job: Job, cfg, channels: int, offset: int) -> Seeded:
    """The one network, created after seeding with `params.seed * 1000 + offset` (its random
    init is part of the result; the folds use + fold)."""
    seed = job.params.seed * 1000 + offset
    torch.manual_seed(seed)
    net, weights, _ = models.create_network(cfg, job.task.num_outputs, channels, job.meta["mean"],
                                            job.meta["std"], job.task.fp32_head)
    return Seeded(net, weights, seed)


def start_child_run(params: Params, models, role: str, run_name: str, tags: dict) -> str:
    """A run (role `role`) under the MLflow parent that holds the folds (an earlier attempt of
    the same role still RUNNING is a dead process's: KILLED, and named in `foldwise.resumes`).
    Returns its id."""
    experiment = tracking.open_experiment(params.mlflow)
    runs = [outputs.read_run(models, f) for f in params.folds]
    parent = tracking.evaluated_parent(experiment, runs)
    if parent is None:
        raise RuntimeError("no MLflow parent run holds these folds: run the evaluate stage")
    killed = tracking.close_killed_attempts(experiment, parent, role, tag="foldwise.role")
    tags = {"foldwise.role": role, "mlflow.parentRunId": parent, **tags, **tracking.source_tags()}
    if killed:
        tags["foldwise.resumes"] = ",".join(killed)
    return mlflow.MlflowClient().create_run(experiment, run_name=run_name, tags=tags).info.run_id


def shipped_meta(meta: dict, decision: dict, tta: dict, temperature: float, **extra) -> dict:
    """A one-network export's meta.json, as the bag's: what `foldwise-predict` and the MLflow
    model need."""
    return {**{key: meta[key] for key in program.TASK_KEYS}, "bag_mean": "arithmetic", "folds": 1,
            "decision": decision, "neighbours": 0, "stack": {"model": ""}, "tta": tta,
            "temperature": temperature, **extra,
            "preprocess": Decode.of(meta).record()}


def ship(job: Job, bagged: program.Bagged, shipped: dict, expected: np.ndarray) -> Verified:
    """Export `bagged` (one network, with its views and tempering; `shipped` its meta.json) into
    `paths.out/model`, check it against itself run eagerly (and its drift from `expected`, the
    training loop's own test predictions), and write `paths.out/submission.csv` from the
    program's predictions."""
    task, meta, device = job.task, job.meta, job.device
    root, processed, out = job.paths.root, job.paths.processed, job.paths.out
    test_images = open_cache(processed / "test.npy")
    test_ids = pd.read_csv(processed / "test.csv", dtype={"id": str})["id"]
    with atomic_dir(out) as tmp:
        example = torch.zeros((2, *test_images.shape[1:]), dtype=torch.uint8)
        program.save(bagged, example, shipped, tmp / MODEL)
        loaded = program.load(tmp / MODEL, device)
        got = program.run_model(loaded[0], test_images, device=device, desc="exported")
        eager = program.run_model(bagged.to(device), test_images, device=device, desc="eager")
        check = check_export(got, eager, expected, [{"device": device.type}])
        get_source(meta["source"]).write_submission(
            test_ids, task.postprocess(got, shipped["decision"]), {**meta, "root": str(root)},
            tmp / SUBMISSION)
    return Verified(got, loaded, check)
