"""`foldwise-search`: an Optuna study over params.yaml keys (search.yaml), each trial a DVC
experiment and an MLflow run, pruned after its first fold, resumable after a kill, N at once.

    foldwise-search                      # search.yaml's study, one worker
    foldwise-search --workers 2          # two trials at once, each on its own GPU where there are
    foldwise-search --apply              # ... then the best trial's params into params.yaml
    foldwise-search --storage URL        # the study's database (search.yaml's storage otherwise)

A trial that fails (any error) is marked FAIL, its log named, and the study goes on; the
command then exits non-zero, saying how many trials failed and why.
"""
from __future__ import annotations

import logging
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

from foldwise import params as P
from foldwise import presets, tracking
from foldwise.errors import InputError
from foldwise.files import project_root
from foldwise.scale.parallel import devices, gpu_count
from foldwise.search import checkouts, space, study as S, trial as T

log = logging.getLogger("foldwise.search")
MAX_FAILURES_IN_A_ROW = 3


@dataclass
class Shared:
    """What the workers share: the study, its settings and runs, and a lock for the budget."""
    study: optuna.Study
    search: space.Search
    root: Path
    experiment_id: str
    run_id: str
    budget: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    failures: list = field(default_factory=list)  # (trial number, error) of every failed trial
    in_a_row: int = 0                             # failures since the last trial that did not
    mine: set = field(default_factory=set)        # this process's trials


def committed_params(root: Path) -> P.Params:
    """HEAD's params.yaml: the trials' base (the workspace's, if it differs, is not used)."""
    text = checkouts.git(root, "show", "HEAD:params.yaml").stdout
    if (root / "params.yaml").read_text() != text:
        log.warning("params.yaml differs from HEAD's: the trials start from the committed one")
    sample = checkouts.git(root, "show", f"HEAD:{P.SAMPLE_FILE}").stdout
    return P.parse(yaml.safe_load(text), yaml.safe_load(sample), "params.yaml (HEAD)",
                   f"{P.SAMPLE_FILE} (HEAD)")


def work(checkout: checkouts.Checkout, shared: Shared) -> None:
    """Trials in `checkout` until the study has its budget of them and no other searcher's
    trial runs (one that dies is then failed and retried here)."""
    while True:
        with shared.lock:
            for number in S.fail_stale(shared.study):
                log.warning("trial %d: its searcher stopped beating; failed, and queued again",
                            number)
            if shared.in_a_row >= MAX_FAILURES_IN_A_ROW:
                return
            trial = None
            if S.left(shared.study, shared.budget) > 0:
                trial = S.ask(shared.study)
                shared.mine.add(trial.number)
            elif not S.others_running(shared.study, shared.mine):
                return
        if trial is None:  # the budget is started: wait for the others' trials to end
            time.sleep(min(2, shared.search.heartbeat))
            continue
        with S.heartbeat(shared.study, trial):
            one_trial(checkout, trial, shared)


def one_trial(checkout: checkouts.Checkout, trial, shared: Shared) -> None:
    search = shared.search
    try:
        outcome = T.run(checkout, trial, search, shared.run_id, shared.root)
    except Exception as err:  # noqa: BLE001 - any failure is the trial's, and the study goes on
        shared.study.tell(trial, state=TrialState.FAIL)
        name = trial.user_attrs.get("experiment", "")
        S.close_trial_runs(search, shared.experiment_id, name, "FAIL")
        with shared.lock:
            shared.failures.append((trial.number, f"{type(err).__name__}: {err}"))
            shared.in_a_row += 1
        log.error("trial %d (%s) failed: %s: %s", trial.number, name, type(err).__name__, err)
        return
    except BaseException:
        shared.study.tell(trial, state=TrialState.FAIL)
        raise
    with shared.lock:
        shared.in_a_row = 0
    name = trial.user_attrs["experiment"]
    if outcome.state == "pruned":
        shared.study.tell(trial, state=TrialState.PRUNED)
    else:
        shared.study.tell(trial, outcome.value)
    S.close_trial_runs(search, shared.experiment_id, name, outcome.state.upper(), trial.number)
    with shared.lock:
        S.record(shared.study, search, shared.run_id)
    log.info("trial %d (%s) %s: %s %s", trial.number, name, outcome.state, search.objective,
             f"{outcome.value:.5g}" if outcome.value is not None else "-")


def run_search(config: Path, workers: int, trials: int | None, storage: str | None = None) -> Shared:
    root = project_root()
    base = committed_params(root)
    search_ = space.load(config, base)
    experiment_id = tracking.open_experiment(base.mlflow)  # exports MLFLOW_TRACKING_URI
    url = S.storage_url(search_, root, storage)
    study = S.open_study(search_, url)
    print(f"study {search_.study!r} (id {study.user_attrs[S.ID]}) in {S.shown(url)}: "
          f"{len(study.trials)} trials so far", flush=True)
    shared = Shared(study, search_, root, experiment_id, S.study_run(search_, experiment_id),
                    trials or search_.trials)
    slots = [checkouts.prepare(root, k, d) for k, d in enumerate(devices(workers, gpu_count()))]
    threads = [threading.Thread(target=work, args=(c, shared), daemon=True) for c in slots]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join()
    except KeyboardInterrupt:  # nothing of this searcher left RUNNING in MLflow
        S.interrupted(search_, study, experiment_id, shared.run_id, shared.mine)
        raise
    if shared.in_a_row < MAX_FAILURES_IN_A_ROW:
        S.finish(search_, study, experiment_id, shared.run_id)
    return shared


def failure_report(shared: Shared) -> str:
    """How many trials failed and why, one line each (the log is named in each error)."""
    stopped = (f"; the search stopped after {MAX_FAILURES_IN_A_ROW} failures in a row"
               if shared.in_a_row >= MAX_FAILURES_IN_A_ROW else "")
    lines = [f"trial {n}: {why.splitlines()[0]}" for n, why in shared.failures]
    return f"{len(shared.failures)} trial(s) failed{stopped}:\n  " + "\n  ".join(lines)


def apply_best(shared: Shared) -> None:
    """The best trial's searched params into the workspace's params.yaml."""
    best = shared.study.best_trial
    presets.rewrite(shared.root / "params.yaml", P.nested(best.params))
    search = shared.search
    again = ("`dvc repro` restores its results from DVC's run-cache" if not search.epochs
             else f"`dvc repro` trains it at params.yaml's epochs (the search ran {search.epochs})")
    if search.until and not search.epochs:
        again += f" up to {search.until} and runs the stages after it"
    print(f"params.yaml: trial {best.number} ({best.user_attrs.get('experiment')}) applied; {again}")


def table(study: optuna.Study) -> str:
    rows = [f"{'trial':>5}  {'state':8}  {'experiment':14}  {'start':10}  {'value':>9}  "
            f"{'fold 0':>9}  params"]
    for t in sorted(study.trials, key=lambda t: t.number):
        first = t.intermediate_values.get(0)
        rows.append(f"{t.number:>5}  {t.state.name:8}  {t.user_attrs.get('experiment', ''):14}  "
                    f"{t.user_attrs.get('start', ''):10}  "
                    f"{t.value if t.state == TrialState.COMPLETE else float('nan'):>9.5g}  "
                    f"{first if first is not None else float('nan'):>9.5g}  "
                    + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                for k, v in t.params.items()))
    return "\n".join(rows)


def main() -> None:
    from foldwise import stage
    ap = stage.parser(__doc__)
    ap.add_argument("--config", type=Path, default=Path("search.yaml"),
                    help="the study's settings and search space (default search.yaml)")
    ap.add_argument("--storage", help="the study's database, an SQLAlchemy URL or `server` "
                    "(default: search.yaml's storage, else .foldwise/search.db)")
    ap.add_argument("--workers", type=int, default=1, help="trials at once (each its own GPU)")
    ap.add_argument("--trials", type=int, help="the study's size (search.yaml's trials)")
    ap.add_argument("--apply", action="store_true", help="the best trial's params into params.yaml")
    args = ap.parse_args()

    def go() -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # the figures' functions are marked experimental since Optuna 2.2: nothing to act on
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        shared = run_search(args.config, max(1, args.workers), args.trials, args.storage)
        print(table(shared.study))
        if args.apply:
            apply_best(shared)
        if shared.failures:
            raise InputError(failure_report(shared))
    stage.run(go)


if __name__ == "__main__":
    main()
