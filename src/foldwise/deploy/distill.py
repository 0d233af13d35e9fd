"""The distill stage: one network (`distill.model`) trained against the teacher's class
probabilities on every training image, exported like the bag (`export/distilled/model`, one
network in the program), its submission written from what that program predicts, its run a
child of the pipeline's MLflow parent with the exported program as its MLflow model.

The teacher is what the pipeline ships: the second-level model where `stack.model` is set (its
cross-fitted OOF rows; on test, the saved model applied to the bag's tempered predictions and,
with `stack.neighbours`, their test neighbours'), else the bag (its OOF rows and test rows,
tempered with evaluate's temperature). Test-neighbour averaging (`neighbours.k` without a
stack) is a set-level step no single network holds: the teacher is the bag before it.

Honest figures (`metrics/distill.json`): every training image is a target, so the student's
figures against the training labels are in-sample and stored as `train_not_out_of_fold`; what
is held out is the test set, where the student is scored against the teacher's predictions
(`test_fidelity`: cross-entropy and top-class agreement), which also keeps its epoch. Its
accuracy against labels it never saw is a benchmark on held-out labels (docs/benchmarks.md).
With `distill.test` the test images train it too (against the teacher's test rows): the same
figure is then in-sample, and named `test_fidelity_not_held_out`.
Off (`distill.model: ''`), the stage writes an empty folder and imports nothing heavy.
"""
from __future__ import annotations

import json

import numpy as np

from foldwise.deploy.student import DistillPaths as Paths, Teacher
from foldwise.errors import InputError
from foldwise.files import write_csv, write_json, write_off
from foldwise.names import timm_with_ours
from foldwise.params import Params, evolve


def run(params: Params, paths: Paths) -> dict:
    """Train, export, verify and score the distilled network for the task preprocess recorded;
    write its folder, figures and history. Returns the figures (`{"model": ""}` when off)."""
    if not params.distill.model:
        write_off(paths.out, "distill.model: ''")
        write_json({"model": ""}, paths.out_json)
        write_csv(_empty_history(), paths.history_csv)
        return {"model": ""}
    from foldwise.deploy import soft_targets
    from foldwise.data.cache import read_meta
    from foldwise.tasks import create_task
    meta = read_meta(paths.processed)
    task = create_task(meta, params)
    student_task = soft_targets.Distilled(task)  # a task without class probabilities stops here
    cfg = student_settings(params)
    teacher = read_teacher(params, task, paths)
    from foldwise.deploy import distill_train, program, single
    job = single.Job(params, task, meta, paths, program.default_device())
    return distill_train.train_and_ship(job, cfg, student_task, teacher)


def _empty_history():
    import pandas as pd
    return pd.DataFrame({"epoch": [], "val_metric": []})


def student_settings(params: Params):
    """params.yaml's `train` section with the student's network and epochs: one device (the
    student is one run), and no weights file unless the student is the folds' own architecture
    (a file for another network would not load)."""
    name = params.distill.model
    if not timm_with_ours().is_model(name):
        raise InputError(f"params.yaml: distill.model={name!r} is not a timm model name "
                         "(timm.list_models() lists them)")
    changes = {"model": name, "devices": 1,
               "epochs": params.distill.epochs or params.train.epochs}
    if name != params.train.model:
        changes.update(weights_file="", model_kwargs={})
    return evolve(params.train, changes)


def read_teacher(params: Params, task, paths: Paths) -> Teacher:
    """The teacher's training targets and test predictions (see the module's text)."""
    import pandas as pd

    from foldwise.deploy.soft_targets import teacher_predictions
    train_ids = pd.read_csv(paths.processed / "train.csv", dtype={"id": str})["id"]
    bag_train, bag_test = teacher_predictions(task, paths.bagged, paths.metrics_json, train_ids)
    if not params.stack.model:
        oof = json.loads(paths.metrics_json.read_text())["oof"]
        return Teacher("bag", bag_train, bag_test, oof, task.decision(oof))
    return stack_teacher(task, paths, bag_test, train_ids)


def stack_teacher(task, paths: Paths, bag_test: np.ndarray, train_ids) -> Teacher:
    import pandas as pd

    from foldwise.ensemble import stack_model
    from foldwise.ensemble.stack import graph
    model = stack_model.load_model(paths.stack)
    summary = json.loads(paths.stack_json.read_text())
    if model is None:
        raise InputError(f"{paths.stack}: no second-level model: rerun the stack stage")
    oof = pd.read_csv(paths.stack / "oof.csv", dtype={"id": str})
    if not oof["id"].equals(pd.Series(list(train_ids), dtype=str, name="id")):
        raise InputError(f"{paths.stack / 'oof.csv'} and the training table list different "
                         "images: rerun the stack stage")
    idx, sim, n = graph(paths.neighbours / "graph.npz", summary["neighbours"])
    test = stack_model.predict(model, stack_model.features(bag_test, idx, sim, n), task.num_outputs)
    return Teacher("stack", oof[task.columns].to_numpy(), test, summary["oof"],
                   task.decision(summary["oof"]))
