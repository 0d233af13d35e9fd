"""The Optuna study and its MLflow run.

The study lives in a database (`search.yaml` storage; else the PostgreSQL cluster of the team's
MLflow server when it runs here; else `.foldwise/search.db` beside the project), so a search resumes where it was killed: trials that finished or were pruned stay
done, and a trial left RUNNING by a searcher of this machine that is gone is marked FAIL and
queued again with the same params and DVC experiment name (so its folds resume). The study ends
with exactly `trials` finished or pruned trials.

The study's MLflow run (tagged `foldwise.role=study`) is the parent of every trial's pipeline
run; it holds the best value and params so far and Optuna's figures.
"""
from __future__ import annotations

import logging
import os
import socket
import tempfile
from pathlib import Path

import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from foldwise import tracking
from foldwise.files import alive
from foldwise.search.space import Search

log = logging.getLogger(__name__)
DONE = (TrialState.COMPLETE, TrialState.PRUNED)
HOST = socket.gethostname()


def storage_url(search: Search, root: Path) -> str:
    """search.yaml's storage; else the team server's PostgreSQL when `make mlflow-server` runs
    its own cluster here (`.foldwise/postgres`); else SQLite beside the project."""
    if search.storage:
        return search.storage
    from foldwise.scale.server import search_storage
    served = search_storage(root / ".foldwise" / "postgres")
    if served:
        return served
    (root / ".foldwise").mkdir(exist_ok=True)
    return f"sqlite:///{root / '.foldwise' / 'search.db'}"


def open_study(search: Search, root: Path, workers: int = 1) -> optuna.Study:
    """The study, created the first time; TPE with the constant liar when trials run at once."""
    if search.sampler == "tpe":
        sampler = optuna.samplers.TPESampler(seed=search.seed, constant_liar=workers > 1)
    else:
        sampler = optuna.samplers.RandomSampler(seed=search.seed)
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=search.startup_trials)
              if search.pruner == "median" else optuna.pruners.NopPruner())
    study = optuna.create_study(study_name=search.study, storage=storage_url(search, root),
                                sampler=sampler, pruner=pruner, direction=search.direction,
                                load_if_exists=True)
    if not study.get_trials(deepcopy=False):  # a new study: search.yaml's starts go first
        for name, values in search.start:
            study.enqueue_trial(values, user_attrs={"start": name})
    return study


def claim(trial) -> None:
    """Mark the trial as this process's, so that a later search knows when it was killed."""
    trial.set_user_attr("owner", {"host": HOST, "pid": os.getpid()})


def retry_killed(study: optuna.Study) -> list[int]:
    """RUNNING trials whose searcher on this machine is gone: FAIL, and queued again with the
    same params and experiment name. Returns their numbers."""
    killed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.user_attrs.get("owner") or {}
        if owner.get("host") == HOST and owner.get("pid") != os.getpid() and not alive(owner["pid"]):
            study.tell(t.number, state=TrialState.FAIL)
            again = {k: t.user_attrs[k] for k in ("experiment", "start") if k in t.user_attrs}
            study.enqueue_trial(t.params, user_attrs={**again, "retry_of": t.number})
            killed.append(t.number)
    return killed


def left(study: optuna.Study, budget: int) -> int:
    """Trials still to start: the budget less the finished, pruned and running ones."""
    states = [t.state for t in study.get_trials(deepcopy=False)]
    return budget - sum(s in DONE or s == TrialState.RUNNING for s in states)


def study_run(search: Search, experiment_id: str) -> str:
    """The study's MLflow run: the one with its name if there is one, else a new one."""
    client = MlflowClient()
    found = client.search_runs([experiment_id], filter_string=(
        f"tags.`foldwise.role` = 'study' and tags.`foldwise.study` = '{search.study}'"),
        max_results=1)
    if found:
        if found[0].info.status != "RUNNING":
            client.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id
    run = client.create_run(experiment_id, run_name=f"study {search.study}", tags={
        "foldwise.role": "study", "foldwise.study": search.study, **tracking.source_tags()})
    for d in search.space:
        client.log_param(run.info.run_id, f"space.{d.key}",
                         list(d.choices) if d.choices else f"[{d.low:g}, {d.high:g}]"
                         + (" log" if d.log else ""))
    for key in ("objective", "direction", "sampler", "seed", "pruner", "trials", "epochs"):
        client.log_param(run.info.run_id, key, getattr(search, key))
    return run.info.run_id


def record(study: optuna.Study, search: Search, run_id: str) -> None:
    """The best trial so far on the study run (metric by trial number, params as tags), the
    trials table and Optuna's figures as artifacts."""
    client = MlflowClient()
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if complete:
        best = study.best_trial
        client.log_metric(run_id, f"best_{search.objective}", best.value, step=len(study.trials))
        client.set_tag(run_id, "best.trial", str(best.number))
        client.set_tag(run_id, "best.experiment", best.user_attrs.get("experiment", ""))
        for key, value in best.params.items():
            client.set_tag(run_id, f"best.{key}", str(value))
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "trials.csv"
        study.trials_dataframe().to_csv(table, index=False)
        client.log_artifact(run_id, str(table))
        for path in figures(study, Path(tmp)):
            client.log_artifact(run_id, str(path), "figures")


def figures(study: optuna.Study, out: Path) -> list[Path]:
    """Optuna's optimisation history, parameter importances and parallel coordinates, drawn
    where the trials allow (importances need two finished trials that differ)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as views
    written = []
    for name, draw in (("history", views.plot_optimization_history),
                       ("importances", views.plot_param_importances),
                       ("parallel", views.plot_parallel_coordinate)):
        try:
            ax = draw(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as err:
            log.info("no %s figure yet: %s", name, err)
            continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.set_size_inches(9, 5)
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=80)
        plt.close(fig)
        written.append(out / f"{name}.png")
    return written


def close_trial_runs(search: Search, experiment_id: str, name: str, state: str,
                     number: int | None = None) -> None:
    """The trial's MLflow runs end with the trial. Its parent (found by the DVC experiment name,
    which a retried trial keeps) is tagged with the trial's state and number; a pruned trial's
    parent, which evaluate never reached, FINISHED; a failed one's, and any fold run still
    RUNNING, KILLED."""
    client = MlflowClient()
    parents = client.search_runs([experiment_id], filter_string=(
        f"tags.`foldwise.study` = '{search.study}' and tags.`dvc.experiment` = '{name}' "
        "and tags.`foldwise.role` = 'parent'"))
    for parent in parents:
        client.set_tag(parent.info.run_id, "foldwise.trial_state", state)
        if number is not None:
            client.set_tag(parent.info.run_id, "foldwise.trial", str(number))
        _kill_running_children(client, experiment_id, parent.info.run_id)
        if parent.info.status == "RUNNING":
            client.set_terminated(parent.info.run_id, "FINISHED" if state == "PRUNED" else "KILLED")


def _kill_running_children(client, experiment_id: str, run_id: str) -> None:
    for child in client.search_runs([experiment_id], filter_string=(
            f"tags.mlflow.parentRunId = '{run_id}' and attributes.status = 'RUNNING'")):
        client.set_terminated(child.info.run_id, "KILLED")


def finish(search: Search, experiment_id: str, run_id: str) -> None:
    """The study has its trials: nothing of it is left RUNNING in MLflow (runs of trials killed
    and never retried included), and its run is FINISHED."""
    client = MlflowClient()
    for run in client.search_runs([experiment_id], filter_string=(
            f"tags.`foldwise.study` = '{search.study}' and attributes.status = 'RUNNING' "
            "and tags.`foldwise.role` = 'parent'")):
        _kill_running_children(client, experiment_id, run.info.run_id)
        client.set_terminated(run.info.run_id, "KILLED")
    client.set_terminated(run_id, "FINISHED")
