"""MLflow: one parent run per pipeline run, one child run per fold.

Folds train in separate DVC stages (separate processes, possibly days apart when a run is
resumed), so they meet their parent through a key: a hash of every param that shapes the
results plus the fold table and preprocessing stats. A fold joins the newest parent with its
key unless that parent is finished or already holds a finished run of the same fold (then this
is a new pipeline run, e.g. `dvc repro -f`). A pipeline that died part-way therefore resumes
under its old parent. The evaluate stage logs the bagged out-of-fold metrics to the parent and
finishes it.

The store defaults to `sqlite:///<project root>/mlflow.db`; queued DVC experiments run in
copies under `<project root>/.dvc/tmp/exps/`, and are pointed back at the project's store.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Iterator

import mlflow
from mlflow.tracking import MlflowClient

from foldwise.files import project_root
from foldwise.params import Mlflow, Params, flatten

# params that shape a fold's results; tracking settings themselves are not among them
RESULT_KEYS = ("seed", "lr", "folds", "data", "preprocess", "train", "pseudo", "tta")
# how foldwise-search tells the pipelines it runs which study run and trial they belong to
STUDY, STUDY_RUN, TRIAL = "FOLDWISE_STUDY", "FOLDWISE_STUDY_RUN", "FOLDWISE_TRIAL"
# MLflow's own experiment tag for which UI an experiment opens in (training, not GenAI)
KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"


def run_name(params: Params) -> str:
    """What tells pipeline runs apart in the UI: the DVC experiment, else model and lr."""
    return os.environ.get("DVC_EXP_NAME") or f"{params.train.model} lr {params.lr:g}"


def source_tags() -> dict:
    """The code a run ran: the git commit (MLflow's Source column) and the DVC experiment."""
    import subprocess
    tags = {"mlflow.source.name": "dvc.yaml", "mlflow.source.type": "PROJECT"}
    res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project_root(), capture_output=True,
                         text=True)
    if res.returncode == 0:
        tags["mlflow.source.git.commit"] = res.stdout.strip()
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc.experiment"] = os.environ["DVC_EXP_NAME"]
    return tags


def tracking_uri(cfg: Mlflow | None = None) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI") or (cfg.tracking_uri if cfg else "")
    return uri or f"sqlite:///{project_root() / 'mlflow.db'}"


@contextlib.contextmanager
def _lock(uri: str | None = None) -> Iterator[None]:
    """Serialise store creation and parent lookup: two processes creating one SQLite store
    at the same moment corrupt it. The lock file lies beside a SQLite store, so processes in
    other checkouts of the same machine (fold workers) that share the store share the lock."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or tracking_uri()
    path = Path(uri[len("sqlite:///"):] + ".lock") if uri.startswith("sqlite:///") else \
        project_root() / "mlflow.db.lock"
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def open_experiment(cfg: Mlflow) -> str:
    """Point MLflow at the store (created here, under the lock) and return the experiment id."""
    # MLflow's SQL store uses a loader strategy SQLAlchemy deprecates: nothing a user can change
    warnings.filterwarnings("ignore", message=".*``noload`` loader strategy is deprecated")
    # artifacts beside the default store, not in ./mlruns of a temporary experiment copy
    own_store = not (os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking_uri)
    artifacts = (project_root() / "mlartifacts").as_uri() if own_store else None
    # MLflow's own handler prints its table creation on a new store: nothing to act on
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    with _lock(tracking_uri(cfg)):
        mlflow.set_tracking_uri(tracking_uri(cfg))  # also exports MLFLOW_TRACKING_URI
        exp = mlflow.get_experiment_by_name(cfg.experiment) or \
            _create_experiment(cfg.experiment, artifacts)
        if exp.tags.get(KIND_TAG) != MODEL_TRAINING:  # open on the model-training pages
            MlflowClient().set_experiment_tag(exp.experiment_id, KIND_TAG, MODEL_TRAINING)
        return exp.experiment_id


def _create_experiment(name: str, artifacts: str | None):
    """A new experiment, or the one another project created since we looked: the lock is a
    file of this project's, and projects on other machines may share a tracking server."""
    from mlflow.exceptions import MlflowException
    try:
        return mlflow.get_experiment(mlflow.create_experiment(name, artifact_location=artifacts))
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    return mlflow.get_experiment_by_name(name)


def pipeline_key(params: Params, *fingerprint_files) -> str:
    """Names one pipeline run: what shapes its results, and the DVC experiment it belongs to.
    Two queued experiments with the same training params run at once in separate copies;
    with the experiment's name in the key they never share a parent run or a resume file. A
    killed experiment resumes when it is run again under the same name (`dvc exp run -n`)."""
    values = params.as_dict()
    payload = {k: values[k] for k in RESULT_KEYS}
    payload["dvc_experiment"] = os.environ.get("DVC_EXP_NAME", "")
    h = hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode())
    for path in fingerprint_files:
        h.update(Path(path).read_bytes())
    return h.hexdigest()[:16]


def parent_for_fold(experiment_id: str, key: str, fold: int, params: Params, role: str = "fold") -> str:
    """The parent run this fold belongs to, created when this fold starts a new pipeline run
    (`role`: the fold's round 1, `fold`, or its pseudo-label rounds, `pseudo`)."""
    client = MlflowClient()
    with _lock():
        found = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`foldwise.pipeline_key` = '{key}' and tags.`foldwise.role` = 'parent'",
            order_by=["attributes.start_time DESC"], max_results=1)
        if found and found[0].info.status != "FINISHED":
            parent = found[0].info.run_id
            done = client.search_runs(
                [experiment_id],
                filter_string=f"tags.mlflow.parentRunId = '{parent}' and tags.`foldwise.fold` = '{fold}'"
                              f" and tags.`foldwise.role` = '{role}' and attributes.status = 'FINISHED'",
                max_results=1)
            if not done:
                return parent
        return _create_parent(client, experiment_id, key, params)


def close_killed_attempts(experiment_id: str, parent_id: str, fold, tag: str = "foldwise.fold",
                          role: str | None = None) -> list[str]:
    """Mark this fold's runs (those whose `tag` is `fold`, and whose `foldwise.role` is `role`
    where given: the distilled network's are `foldwise.role` = distilled) that are still
    RUNNING under `parent_id` as KILLED: they are attempts whose process died (a fold is
    trained by one process at a time), and the attempt starting now resumes their work under
    a run of its own."""
    client = MlflowClient()
    of_role = f" and tags.`foldwise.role` = '{role}'" if role else ""
    stale = client.search_runs(
        [experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_id}' and tags.`{tag}` = '{fold}'"
                      f"{of_role} and attributes.status = 'RUNNING'")
    for run in stale:
        client.set_terminated(run.info.run_id, "KILLED")
    return [r.info.run_id for r in stale]


def study_tags() -> dict:
    """Under foldwise-search, a pipeline's parent is a child of the study's run, tagged with
    the study and trial (the search sets these for the DVC commands it runs)."""
    if not os.environ.get(STUDY_RUN):
        return {}
    return {"mlflow.parentRunId": os.environ[STUDY_RUN],
            "foldwise.study": os.environ.get(STUDY, ""), "foldwise.trial": os.environ.get(TRIAL, "")}


def _create_parent(client, experiment_id: str, key: str, params: Params, tags=None) -> str:
    tags = {"foldwise.pipeline_key": key, "foldwise.role": "parent", **source_tags(),
            **study_tags(), **(tags or {})}
    run = client.create_run(experiment_id, run_name=run_name(params), tags=tags)
    for batch in _chunks(sorted(flatten(params.as_dict()).items()), 100):
        client.log_batch(run.info.run_id, params=[mlflow.entities.Param(k, str(v)[:6000])
                                                  for k, v in batch])
    return run.info.run_id


def parent_for_evaluation(experiment_id: str, fold_runs: list[dict], params: Params) -> str:
    """The parent run that receives the bagged metrics: the folds' own, while it is open.

    Folds that DVC restored from its run-cache (or trained under several parents) point at
    parents of other pipeline runs: then the parent that this run's own folds opened, if some
    trained here (a twin experiment's folds come partly from its twin), else a new one, is
    tagged with the fold runs it bags (`foldwise.fold_runs`)."""
    client = MlflowClient()
    parents = {r["parent_run_id"] for r in fold_runs}
    if len(parents) == 1:
        try:
            if client.get_run(next(iter(parents))).info.status != "FINISHED":
                return next(iter(parents))
        except mlflow.exceptions.MlflowException:
            pass  # not in this store (deleted, or tracked elsewhere)
    tags = {"foldwise.fold_runs": ",".join(r["run_id"] for r in fold_runs),
            "foldwise.folds_restored": "true"}
    own = own_open_parent(client, parents)
    if own:  # some folds trained here, the others restored: the parent they opened takes them all
        for key, value in tags.items():
            client.set_tag(own, key, value)
        return own
    with _lock():
        return _create_parent(client, experiment_id, fold_runs[0].get("pipeline_key", ""), params,
                              tags)


def own_open_parent(client, parents) -> str | None:
    """The one unfinished parent among `parents` of this DVC experiment (its folds trained in
    this pipeline run), or None where there is none or more than one."""
    name = os.environ.get("DVC_EXP_NAME", "")
    own = []
    for run_id in parents:
        try:
            run = client.get_run(run_id)
        except mlflow.exceptions.MlflowException:
            continue
        if run.info.status != "FINISHED" and run.data.tags.get("dvc.experiment", "") == name:
            own.append(run_id)
    return own[0] if len(own) == 1 else None


def evaluated_parent(experiment_id: str, fold_runs: list[dict]) -> str | None:
    """The parent run that `parent_for_evaluation` gave these fold runs: the newest one
    tagged with exactly them, else their own parent when they share one."""
    ids = ",".join(r["run_id"] for r in fold_runs)
    found = MlflowClient().search_runs(
        [experiment_id], filter_string=f"tags.`foldwise.role` = 'parent' and "
                                       f"tags.`foldwise.fold_runs` = '{ids}'",
        order_by=["attributes.start_time DESC"], max_results=1)
    if found:
        return found[0].info.run_id
    parents = {r["parent_run_id"] for r in fold_runs}
    return next(iter(parents)) if len(parents) == 1 else None


def log_fold_inputs(table, train_rows, val_rows, fingerprint_files, name: str, source: str) -> None:
    """The fold's training and validation images (ids, labels, groups) as MLflow dataset
    inputs of the active run, so the UI's Dataset column names them. Each digest covers the
    rows, the fold table and the preprocess cache's listing and statistics
    (`fingerprint_files`)."""
    import mlflow.data
    base = hashlib.sha1()
    for path in fingerprint_files:
        base.update(Path(path).read_bytes())
    for context, rows in (("training", train_rows), ("validation", val_rows)):
        part = table.iloc[rows].reset_index(drop=True)
        digest = base.copy()
        digest.update(",".join(map(str, part["id"])).encode())
        with warnings.catch_warnings():  # MLflow's own: a path source it registers twice, and a
            # schema hint about integer columns of a table only displayed, never served
            warnings.filterwarnings("ignore", message=".*(interpreted in multiple ways|Inferred schema "
                                                      "contains integer)")
            dataset = mlflow.data.from_pandas(part, source=source, name=f"{name} {context}",
                                              targets="label" if "label" in part else None,
                                              digest=digest.hexdigest()[:10])
            mlflow.log_input(dataset, context=context)


def _chunks(items, size):
    return [items[i:i + size] for i in range(0, len(items), size)]


def log_params(params: Params, **extra) -> None:
    """Every param of the active run, flattened (`train.epochs`), and `extra` values."""
    flat = sorted({**flatten(params.as_dict()), **extra}.items())
    for batch in _chunks(flat, 100):
        mlflow.log_params({k: str(v)[:6000] for k, v in batch})


def learning_curve_png(history, path: str | Path, title: str, held: str = "val") -> None:
    """Each figure's training and `held` curves (`val`: validation; `insample`: a refit
    network's in-sample rows) by epoch, and the learning rate."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [c[len("train_"):] for c in history.columns if c.startswith("train_")
               and f"{held}_{c[len('train_'):]}" in history.columns]
    fig, axes = plt.subplots(1, len(metrics) + 1, figsize=(4.5 * (len(metrics) + 1), 3.5))
    for ax, m in zip(axes, metrics):
        ax.plot(history["epoch"], history[f"train_{m}"], label="train")
        ax.plot(history["epoch"], history[f"{held}_{m}"],
                label="validation" if held == "val" else "in-sample")
        ax.set_xlabel("epoch")
        ax.set_title(m)
        ax.legend()
    axes[-1].plot(history["epoch"], history["lr"])
    axes[-1].set_title("learning rate")
    axes[-1].set_xlabel("epoch")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def finish_parent(experiment_id: str, parent_id: str, metrics: dict, artifacts=()) -> None:
    client = MlflowClient()
    log_to_run(parent_id, metrics)
    for path in artifacts:
        client.log_artifact(parent_id, str(path))
    client.set_terminated(parent_id, "FINISHED")


def log_to_run(run_id: str, metrics: dict) -> None:
    """Metrics added to a run, finished or not (a stage after evaluate adding its figures)."""
    import time
    now = int(time.time() * 1000)
    MlflowClient().log_batch(run_id, metrics=[mlflow.entities.Metric(k, float(v), now, 0)
                                              for k, v in metrics.items()])
