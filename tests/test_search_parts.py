"""foldwise-search's parts without a pipeline: search.yaml's checks (one line naming the key at
fault, before anything trains), the objective read from evaluate's figures, the folds' spread
on every parent run, a killed trial found and queued again, the budget, the workers' paths."""
import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml

from foldwise import params as P
from foldwise.ensemble.evaluate import fold_spread
from foldwise.errors import InputError
from foldwise.files import project_root
from foldwise.search import space, study as S, trial as T

ROOT = Path(__file__).resolve().parents[1]
BASE = P.load(ROOT / "params.yaml")


def config(tmp_path, **changes) -> Path:
    raw = {"study": "s", "trials": 4, "space": {"lr": {"low": 1e-4, "high": 1e-2, "log": True}}}
    raw.update(changes)
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(raw))
    (tmp_path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())  # until's stages
    return path


def test_the_projects_own_search_yaml_is_valid():
    search = space.load(ROOT / "search.yaml", BASE)
    assert search.trials >= 1 and {d.key for d in search.space} >= {"lr"}


def test_a_good_space_is_read_with_types_ranges_and_choices(tmp_path):
    path = config(tmp_path, epochs=2, until="evaluate", space={
        "lr": {"low": 1e-4, "high": 1e-2, "log": True},
        "train.batch_size": {"low": 8, "high": 32},
        "train.model": {"choices": ["test_resnet", "resnet10t"]},
        "train.ema.decay": {"low": 0.9, "high": 0.999},
        "calibration.temperature": {"choices": [True, False]}})
    search = space.load(path, BASE)
    dims = {d.key: d for d in search.space}
    assert search.until == "evaluate"
    assert dims["train.batch_size"].value_type is int and dims["lr"].log
    assert dims["train.model"].choices == ("test_resnet", "resnet10t")
    fixed = optuna.trial.FixedTrial({"lr": 1e-3, "train.batch_size": 16, "train.model": "resnet10t",
                                     "train.ema.decay": 0.99, "calibration.temperature": False})
    changes = search.changes(fixed)
    assert changes["train.epochs"] == 2 and changes["train.batch_size"] == 16
    # the changes make valid params
    evolved = P.evolve(BASE, P.nested(changes))
    assert evolved.train.model == "resnet10t" and evolved.train.ema.decay == 0.99


@pytest.mark.parametrize("change, message", [
    ({"stdy": "x"}, "unknown key(s) stdy"),
    ({"space": {"train.modle": {"choices": ["resnet18"]}}}, "space.train.modle: not a key of params.yaml"),
    ({"space": {"train": {"choices": [1]}}}, "space.train: not a key of params.yaml"),
    ({"space": {"folds": {"choices": [[0, 1]]}}}, "space.folds: folds, split, sample, data stay fixed"),
    ({"space": {"sample.statefarm.drivers": {"low": 4, "high": 8}}}, "space.sample.statefarm.drivers"),
    ({"space": {"lr": {"low": 0.01, "high": 0.001}}}, "space.lr: empty range: low 0.01 is not below high 0.001"),
    ({"space": {"lr": {"low": 0.0, "high": 0.1, "log": True}}}, "space.lr: log must be true or false, and a log range above 0"),
    ({"space": {"train.model": {"choices": ["resnet18", "resnet999"]}}}, "space.train.model: 'resnet999' is not a timm model"),
    ({"space": {"train.model": {"choices": []}}}, "space.train.model: choices must be a non-empty list"),
    ({"space": {"train.batch_size": {"low": 8.5, "high": 32}}}, "space.train.batch_size: low and high must be ints"),
    ({"space": {"train.optimizer": {"low": 1, "high": 2}}}, "space.train.optimizer: a str key takes choices"),
    ({"space": {"train.amp": {"choices": [True, "yes"]}}}, "space.train.amp: 'yes' is not a valid value"),
    ({"space": {"lr": {"low": 1e-4, "hi": 1e-2}}}, "space.lr: give {low: , high: [, log: true]} or {choices: [...]}"),
    ({"direction": "down"}, "direction='down' must be one of minimize, maximize"),
    ({"trials": 0}, "trials must be >= 1"),
    ({"space": {}}, "space must map params.yaml keys"),
    ({"start": {"defaults": {"train.epochs": 3}}}, "start.defaults.train.epochs: not a key of space"),
    ({"start": {"defaults": {"lr": 0.5}}}, "start.defaults.lr: 0.5 is outside its space"),
    ({"start": [{"lr": 0.001}]}, "start must map names to settings"),
    ({"until": "train"}, "until='train' must be '' (the whole pipeline) or a stage that has the "
                         "objective: evaluate, neighbours, stack, export"),
])
def test_bad_input_is_one_line_naming_the_key(tmp_path, change, message):
    with pytest.raises(InputError) as err:
        space.load(config(tmp_path, **change), BASE)
    assert message in str(err.value) and "search.yaml" in str(err.value)
    assert "\n" not in str(err.value)


def test_the_objective_is_the_calibrated_figure_where_calibration_ran(tmp_path):
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"oof": {"logloss": 0.5, "logloss_calibrated": 0.4, "accuracy": 0.9}}))
    assert T.objective(metrics, "logloss") == 0.4
    assert T.objective(metrics, "accuracy") == 0.9
    assert T.objective(metrics, "logloss_calibrated") == 0.4
    with pytest.raises(InputError, match="objective 'rmse' is not among .*logloss, logloss_calibrated, accuracy"):
        T.objective(metrics, "rmse")


def test_the_first_folds_score_is_its_kept_epochs_validation_figure(tmp_path):
    (tmp_path / "fold_0").mkdir()
    (tmp_path / "fold_0" / "run.json").write_text(json.dumps({"best_val_logloss": 0.7, "best_val_accuracy": 0.6}))
    assert T.first_fold_score(tmp_path, 0, "logloss_calibrated") == 0.7
    assert T.first_fold_score(tmp_path, 0, "accuracy") == 0.6
    assert T.first_fold_score(tmp_path, 0, "f2_thresholds") is None  # not pruned on it


def test_the_pruner_reads_this_trials_round_1_not_a_pseudo_folder_left_by_the_last_trial(tmp_path):
    """A worker checkout: the previous trial had pseudo-labels on (models/pseudo_0 scored 0.25),
    this one ran only `dvc repro train@0` (0.90). The pruner read 0.25."""
    for name, value in (("fold_0", 0.90), ("pseudo_0", 0.25)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.json").write_text(json.dumps({"best_val_logloss": value}))
        (tmp_path / name / "model.pt").write_bytes(name.encode())
    assert T.first_fold_score(tmp_path, 0, "logloss") == 0.90


def test_the_folds_spread_is_their_mean_and_sample_standard_deviation():
    spread = fold_spread("logloss", {"0": {"logloss": 1.0}, "1": {"logloss": 2.0}, "2": {"logloss": 4.0}})
    assert spread["folds_mean_logloss"] == pytest.approx(7 / 3)
    assert spread["folds_std_logloss"] == pytest.approx(np.sqrt(42 / 18))  # by hand: n - 1
    assert fold_spread("logloss", {"0": {"logloss": 1.5}}) == {"folds_mean_logloss": 1.5, "folds_std_logloss": 0.0}
    assert fold_spread("rmse", {"0": {"logloss": 1.5}}) == {}


def _exit_now():
    pass


def test_a_new_study_tries_its_starts_first_in_order_and_only_once(tmp_path):
    path = config(tmp_path, space={"lr": {"low": 1e-4, "high": 1e-2, "log": True},
                                   "tta.hflip": {"choices": [False, True]}},
                  start={"defaults": {"lr": 0.002, "tta.hflip": False}, "recipe": {"lr": 0.004}},
                  storage=f"sqlite:///{tmp_path / 's.db'}")
    search = space.load(path, BASE)
    assert search.start == (("defaults", {"lr": 0.002, "tta.hflip": False}),
                            ("recipe", {"lr": 0.004}))
    study = S.open_study(search, S.storage_url(search, tmp_path))
    first, second = study.ask(), study.ask()
    assert search.changes(first) == {"lr": 0.002, "tta.hflip": False}
    assert first.user_attrs["start"] == "defaults" and second.user_attrs["start"] == "recipe"
    assert search.changes(second)["lr"] == 0.004  # hflip, left out, sampled
    again = S.open_study(search, S.storage_url(search, tmp_path))  # resumed: not queued again
    assert len(again.trials) == 2


def _open_at_once(search, url, barrier, out):
    barrier.wait()
    try:
        study = S.open_study(search, url)
        out.put((S.experiment_name(study, 0), len(study.trials)))
    except Exception as e:  # what the test reports
        out.put((f"{type(e).__name__}: {e}"[:200], -1))


def test_searchers_that_start_at_once_on_a_new_database_share_one_study(tmp_path):
    """Several searchers started together on a new database (the way to spread a study): none
    fails on the tables' creation, the study gets one id and its starts are queued once."""
    import multiprocessing
    ctx = multiprocessing.get_context("fork")
    search = space.load(config(tmp_path, start={"a": {"lr": 0.002}, "b": {"lr": 0.004}}), BASE)
    for attempt in range(3):
        url, barrier, out = f"sqlite:///{tmp_path / f'{attempt}.db'}", ctx.Barrier(4), ctx.Queue()
        procs = [ctx.Process(target=_open_at_once, args=(search, url, barrier, out)) for _ in range(4)]
        for p in procs:
            p.start()
        seen = [out.get(timeout=120) for _ in procs]
        for p in procs:
            p.join()
        assert len({name for name, _ in seen}) == 1, seen
        queued = optuna.load_study(study_name=search.study, storage=url).trials
        assert [t.user_attrs["start"] for t in queued] == ["a", "b"], seen


def test_a_trial_whose_searcher_stopped_beating_fails_and_is_queued_again_and_a_live_one_is_not(tmp_path):
    """Optuna's heartbeat decides, not a home-made check of process ids on one machine: a
    searcher elsewhere that still beats keeps its trial RUNNING."""
    search = dataclasses.replace(space.load(config(tmp_path), BASE), heartbeat=1)
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = S.open_study(search, url)
    done = study.ask()
    done.suggest_float("lr", 1e-4, 1e-2, log=True)
    study.tell(done, 0.5)
    dead = study.ask()
    dead.suggest_float("lr", 1e-4, 1e-2, log=True)
    dead.set_user_attr("experiment", "s-abc123-001")
    study._storage.record_heartbeat(dead._trial_id)  # one beat, then its searcher died
    alive = study.ask()
    with S.heartbeat(study, alive):  # another searcher, beating
        assert S.left(study, search.trials) == 4 - 3
        time.sleep(S.GRACE * search.heartbeat + 1.5)
        other = S.open_study(search, url)  # a second searcher comes in
        assert S.fail_stale(other) == [dead.number]
        states = {t.number: t.state for t in other.trials}
        assert states[dead.number] == optuna.trial.TrialState.FAIL
        assert states[alive.number] == optuna.trial.TrialState.RUNNING
        assert S.others_running(other, set())
        retry = other.ask()  # the queued copy comes first, its params and experiment kept
    assert search.changes(retry) == {"lr": study.trials[dead.number].params["lr"]}
    assert retry.user_attrs["experiment"] == "s-abc123-001"


def test_a_resumed_study_draws_new_points_not_the_first_runs_again(tmp_path):
    """optuna#3255: a sampler seeded alike on every start repeats its first points after a
    resume. The seed moves with the trials the study holds."""
    search = dataclasses.replace(space.load(config(tmp_path), BASE), sampler="random")
    url = f"sqlite:///{tmp_path / 's.db'}"

    def three(study):
        values = []
        for _ in range(3):
            t = study.ask()
            values.append(t.suggest_float("lr", 1e-4, 1e-2, log=True))
            study.tell(t, 0.5)
        return values

    first = three(S.open_study(search, url))
    resumed = three(S.open_study(search, url))
    assert not set(first) & set(resumed)
    fresh = f"sqlite:///{tmp_path / 'again.db'}"
    assert three(S.open_study(search, fresh)) == first  # a new study: the same seeded draws


def test_every_tpe_setting_is_given_to_optuna_from_search_yaml(tmp_path):
    """Optuna 5 changed TPE's defaults: the study must not read otherwise under the next one."""
    project = yaml.safe_load((ROOT / "search.yaml").read_text())
    assert set(project["tpe"]) == set(space.TPE)
    search = space.load(config(tmp_path, tpe={"n_startup_trials": 4, "multivariate": False}), BASE)
    sampler = S.sampler(search, 0)
    assert sampler._n_startup_trials == 4 and sampler._multivariate is False
    assert sampler._n_ei_candidates == space.TPE["n_ei_candidates"] and sampler._constant_liar
    with pytest.raises(InputError, match="tpe: unknown key"):
        space.load(config(tmp_path, tpe={"n_startup": 4}), BASE)


def test_each_study_has_its_own_experiment_names(tmp_path):
    """A new study of the same name (its database deleted) named its trials s-000, ... again
    and adopted the old study's experiments as its own."""
    search = space.load(config(tmp_path), BASE)
    url = f"sqlite:///{tmp_path / 's.db'}"
    first = S.experiment_name(S.open_study(search, url), 0)
    assert S.experiment_name(S.open_study(search, url), 0) == first  # the same study, resumed
    (tmp_path / "s.db").unlink()
    again = S.experiment_name(S.open_study(search, url), 0)
    assert again != first and again.startswith("s-") and again.endswith("-000")


def test_the_study_lives_where_search_yaml_says_and_never_moves_to_a_running_server(tmp_path):
    search = space.load(config(tmp_path), BASE)
    pg = tmp_path / ".foldwise" / "postgres"
    pg.mkdir(parents=True)
    (pg / "postmaster.pid").write_text(f"{os.getpid()}\n{pg}\n0\n54329\n")  # a server runs
    assert S.storage_url(search, tmp_path) == f"sqlite:///{tmp_path / '.foldwise' / 'search.db'}"
    assert S.storage_url(search, tmp_path, "sqlite:///x.db") == "sqlite:///x.db"
    with pytest.raises(InputError, match="storage 'server' names the PostgreSQL of `make mlflow-server`"):
        S.storage_url(search, tmp_path / "elsewhere", "server")


def test_a_failing_trial_of_any_kind_is_failed_and_the_study_goes_on(tmp_path, monkeypatch):
    """Only RuntimeError was caught: any other error ended the search with the trial RUNNING."""
    from foldwise.search import cli
    search = space.load(config(tmp_path, trials=3), BASE)
    study = S.open_study(search, f"sqlite:///{tmp_path / 's.db'}")
    calls = []

    def run(checkout, trial, search, study_run, root):
        trial.set_user_attr("experiment", S.experiment_name(trial.study, trial.number))
        search.changes(trial)
        calls.append(trial.number)
        if len(calls) == 1:
            raise KeyError("a column the objective needs")
        return T.Outcome("complete", 0.5)

    monkeypatch.setattr(T, "run", run)
    monkeypatch.setattr(S, "close_trial_runs", lambda *a, **k: None)  # MLflow bookkeeping
    monkeypatch.setattr(S, "record", lambda *a, **k: None)
    shared = cli.Shared(study, search, tmp_path, "0", "run", 3)
    cli.work(None, shared)
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.FAIL] + [optuna.trial.TrialState.COMPLETE] * 3
    report = cli.failure_report(shared)
    assert report.startswith("1 trial(s) failed:") and "trial 0: KeyError" in report


def test_a_finished_experiment_with_other_params_is_never_adopted(tmp_path):
    """A retried trial adopts its experiment's results only where that experiment's params.yaml
    is the trial's, key for key."""
    from conftest import sh
    from foldwise.search.checkouts import Checkout
    root = tmp_path / "root"
    root.mkdir()
    (root / "params.yaml").write_text("lr: 0.5\ntrain: {epochs: 2}\n")
    (root / "dvc.yaml").write_text("stages:\n  s:\n    cmd: echo ${lr} > out.txt\n"
                                   "    params: [lr, train]\n    outs: [out.txt]\n")
    sh("git init -q && dvc init -q && git add -A && git commit -qm init && dvc exp run -q -n s-x-001 "
       "-S lr=0.7 && git clone -q . ../checkout", root)
    checkout = Checkout(tmp_path / "checkout", None)
    sh("dvc cache dir --local ../root/.dvc/cache", checkout.path)
    checkout.set_params({"lr": 0.7})
    T.adopt(checkout, "s-x-001", {**os.environ}, tmp_path / "log")  # the trial's params: adopted
    assert (checkout.path / "out.txt").read_text().strip() == "0.7"
    checkout.set_params({"lr": 0.9})
    with pytest.raises(RuntimeError, match=r"other params than this trial's.*lr: trial 0.9, experiment 0.7"):
        T.adopt(checkout, "s-x-001", {**os.environ}, tmp_path / "log")


def test_workers_checkouts_belong_to_the_project(tmp_path):
    assert project_root(tmp_path / ".foldwise" / "workers" / "1") == tmp_path
    assert project_root(tmp_path / ".foldwise" / "workers" / "1" / "src") == tmp_path
    assert project_root(tmp_path / ".dvc" / "tmp" / "exps" / "tmpab12") == tmp_path
    assert project_root(tmp_path / "plain") == tmp_path / "plain"


def test_ctrl_c_leaves_none_of_this_searchers_runs_running_in_mlflow(tmp_path):
    """Interrupting foldwise-search left its study run RUNNING (a clock in the MLflow UI) and its
    trials' runs too; now they end KILLED, while another searcher's trial keeps its runs and
    the study's run, and the trials stay RUNNING in the study for the heartbeat to retry."""
    import mlflow
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        ctrl_c_runs(tmp_path)
    finally:
        mlflow.set_tracking_uri(before)


def ctrl_c_runs(tmp_path):
    from mlflow.tracking import MlflowClient
    search = space.load(config(tmp_path), BASE)
    client = MlflowClient()
    experiment = client.create_experiment("e")
    run_id = S.study_run(search, experiment)
    study = S.open_study(search, f"sqlite:///{tmp_path / 's.db'}")
    runs = {}
    for name in ("s-x-000", "s-x-001"):
        trial = study.ask()
        trial.set_user_attr("experiment", name)
        parent = client.create_run(experiment, tags={"foldwise.role": "parent",
                                                     "foldwise.study": "s", "dvc.experiment": name})
        fold = client.create_run(experiment, tags={"mlflow.parentRunId": parent.info.run_id})
        runs[trial.number] = (parent.info.run_id, fold.info.run_id)

    def status(run):
        return client.get_run(run).info.status

    S.interrupted(search, study, experiment, run_id, mine={0})  # another searcher runs trial 1
    assert [status(r) for r in runs[0]] == ["KILLED", "KILLED"]
    assert [status(r) for r in runs[1]] == ["RUNNING", "RUNNING"] and status(run_id) == "RUNNING"
    S.interrupted(search, study, experiment, run_id, mine={0, 1})  # the last searcher
    assert [status(r) for r in runs[1]] == ["KILLED", "KILLED"] and status(run_id) == "KILLED"
    assert {t.state for t in study.trials} == {optuna.trial.TrialState.RUNNING}
