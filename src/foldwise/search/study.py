"""The Optuna study and its MLflow run.

The study lives where `search.yaml`'s `storage` (or `--storage`) says: by default the SQLite
file `.foldwise/search.db` beside the project; `server`: the PostgreSQL of the team's MLflow
server on this machine; else any SQLAlchemy URL, which several searchers on several machines
share (Optuna's own way to spread a study). Nothing switches it silently, and the command
prints where it is.

A search resumes where it was killed: trials that finished or were pruned stay done. Every
running trial beats Optuna's heartbeat; one whose searcher died (silent for 3 heartbeats) is
failed by `optuna.storages.fail_stale_trials` and queued once more with the same params and DVC
experiment name (Optuna's `RetryHeartbeatStaleTrialCallback`), so its folds resume; a live searcher's
trials are never touched. The study ends with exactly `trials` finished or pruned trials.

Each study holds an id of its own (`foldwise.id`, made when it is created): its trials' DVC
experiments are `<study>-<id>-NNN`, so a new study of the same name (its database deleted, or
another storage) never meets an earlier study's experiments.

The study's MLflow run (tagged `foldwise.role=study`) is the parent of every trial's pipeline
run; it holds the best value and params so far and Optuna's figures.
"""
from __future__ import annotations

import contextlib
import logging
import tempfile
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Iterator

import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from foldwise import tracking
from foldwise.errors import InputError
from foldwise.search.space import Search

log = logging.getLogger(__name__)
DONE = (TrialState.COMPLETE, TrialState.PRUNED)
ID = "foldwise.id"
GRACE = 3  # heartbeats a trial may miss before it counts as its searcher's death


def storage_url(search: Search, root: Path, flag: str | None = None) -> str:
    """`--storage`, else search.yaml's storage: '' is SQLite beside the project, `server` the
    PostgreSQL cluster `make mlflow-server` runs here (an error when it does not run)."""
    chosen = flag if flag is not None else search.storage
    if chosen == "server":
        from foldwise.scale.server import search_storage
        pgdata = root / ".foldwise" / "postgres"
        served = search_storage(pgdata)
        if not served:
            raise InputError(f"search.yaml: storage 'server' names the PostgreSQL of `make "
                             f"mlflow-server`, which is not running here ({pgdata})")
        return served
    if chosen:
        return chosen
    (root / ".foldwise").mkdir(exist_ok=True)
    return f"sqlite:///{root / '.foldwise' / 'search.db'}"


def shown(url: str) -> str:
    """The storage URL as printed: its password hidden."""
    import sqlalchemy
    return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)


def sampler(search: Search, done: int) -> optuna.samplers.BaseSampler:
    """search.yaml's sampler with every setting given, seeded by `seed` plus the trials the
    study holds already: a resumed search draws new points, not the first run's again."""
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=search.seed + done)
    with warnings.catch_warnings():  # `group` is marked experimental: nothing to act on
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=search.seed + done, **search.tpe)


def connect(url: str, **settings) -> optuna.storages.RDBStorage:
    """Optuna's storage at `url`. Searchers that start together on a new database race to make
    its tables; the one that loses finds them made when it tries again."""
    import sqlalchemy.exc
    for attempt in range(6):
        try:
            return optuna.storages.RDBStorage(url, **settings)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError):
            if attempt == 5:
                raise
            time.sleep(0.1 * 2 ** attempt)


def open_study(search: Search, url: str) -> optuna.Study:
    """The study at `url`. The searcher that creates it (the database lets one) gives it its id
    and queues search.yaml's starts; one that loads it waits for the id."""
    with warnings.catch_warnings():  # the heartbeat and its callback are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = connect(
            url, heartbeat_interval=search.heartbeat, grace_period=GRACE * search.heartbeat,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=1))
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=search.startup_trials)
              if search.pruner == "median" else optuna.pruners.NopPruner())
    try:
        study = optuna.create_study(study_name=search.study, storage=storage, pruner=pruner,
                                    sampler=sampler(search, 0), direction=search.direction)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=search.study, storage=storage, pruner=pruner)
        await_id(study)
    else:
        study.set_user_attr(ID, uuid.uuid4().hex[:6])
        for name, values in search.start:
            study.enqueue_trial(values, user_attrs={"start": name})
    study.sampler = sampler(search, len(study.get_trials(deepcopy=False)))
    return study


def await_id(study: optuna.Study, timeout: float = 30.0) -> None:
    """The id its creator gives a study just after creating it; made here if none comes (a
    creator that died in between)."""
    deadline = time.monotonic() + timeout
    while ID not in study.user_attrs:
        if time.monotonic() > deadline:
            study.set_user_attr(ID, uuid.uuid4().hex[:6])
            return
        time.sleep(0.1)


def ask(study: optuna.Study):
    """The next trial (a queued one first). Its heartbeat is beaten by `heartbeat`, as
    `study.optimize` would: Optuna's warning that it expects optimize says nothing here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used")
        return study.ask()


def experiment_name(study: optuna.Study, number: int) -> str:
    """The trial's DVC experiment: the study's name and id, and the trial's number."""
    return f"{study.study_name}-{study.user_attrs[ID]}-{number:03d}"


def fail_stale(study: optuna.Study) -> list[int]:
    """Trials whose searcher stopped beating: FAIL, and queued once more by the callback."""
    before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    failed = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
    return sorted(before & failed)


@contextlib.contextmanager
def heartbeat(study: optuna.Study, trial) -> Iterator[None]:
    """The trial's heartbeat in the study's storage while the block runs (Optuna's own
    `record_heartbeat`, as `study.optimize` beats it)."""
    storage, stop = study._storage, threading.Event()
    storage.record_heartbeat(trial._trial_id)

    def beat() -> None:
        while not stop.wait(storage.get_heartbeat_interval()):
            storage.record_heartbeat(trial._trial_id)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def others_running(study: optuna.Study, mine: set[int]) -> bool:
    """Whether trials of other searchers (or of this one's other workers) still run."""
    return any(t.number not in mine
               for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


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
    for key in ("objective", "direction", "sampler", "seed", "pruner", "trials", "epochs",
                "heartbeat"):
        client.log_param(run.info.run_id, key, getattr(search, key))
    for key, value in search.tpe.items():
        client.log_param(run.info.run_id, f"tpe.{key}", value)
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


def interrupted(search: Search, study: optuna.Study, experiment_id: str, run_id: str,
                mine: set[int]) -> None:
    """Ctrl-C: the MLflow runs of this searcher's trials still running end KILLED (their folds
    too), and so does the study's run unless another searcher's trials still run. The trials
    stay RUNNING in the study: their heartbeat stops, so the next searcher fails and retries
    them (`fail_stale`)."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.number in mine:
            close_trial_runs(search, experiment_id, t.user_attrs.get("experiment", ""), "KILLED",
                             t.number)
    if not others_running(study, mine):
        MlflowClient().set_terminated(run_id, "KILLED")


def finish(search: Search, study: optuna.Study, experiment_id: str, run_id: str) -> None:
    """The study has its trials: nothing of it is left RUNNING in MLflow (runs of trials killed
    and never retried included), save the runs of trials still running in the study (another
    searcher's, alive), and its run is FINISHED."""
    client = MlflowClient()
    running = {t.user_attrs.get("experiment")
               for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    for run in client.search_runs([experiment_id], filter_string=(
            f"tags.`foldwise.study` = '{search.study}' and attributes.status = 'RUNNING' "
            "and tags.`foldwise.role` = 'parent'")):
        if run.data.tags.get("dvc.experiment") in running:
            continue
        _kill_running_children(client, experiment_id, run.info.run_id)
        client.set_terminated(run.info.run_id, "KILLED")
    client.set_terminated(run_id, "FINISHED")
