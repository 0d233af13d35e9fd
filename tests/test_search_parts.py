"""foldwise-search's parts without a pipeline: search.yaml's checks (one line naming the key at
fault, before anything trains), the objective read from evaluate's figures, the folds' spread
on every parent run, a killed trial found and queued again, the budget, the workers' paths."""
import json
import multiprocessing as mp
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
    study = S.open_study(search, tmp_path)
    first, second = study.ask(), study.ask()
    assert search.changes(first) == {"lr": 0.002, "tta.hflip": False}
    assert first.user_attrs["start"] == "defaults" and second.user_attrs["start"] == "recipe"
    assert search.changes(second)["lr"] == 0.004  # hflip, left out, sampled
    again = S.open_study(search, tmp_path)  # reopened (a resumed search): not queued again
    assert len(again.trials) == 2


def dead_pid() -> int:
    p = mp.get_context("spawn").Process(target=_exit_now)
    p.start()
    p.join()
    return p.pid


def test_a_trial_whose_searcher_died_fails_and_is_queued_again_with_its_experiment_name(tmp_path):
    search = space.load(config(tmp_path), BASE)
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 's.db'}")
    done = study.ask()
    done.suggest_float("lr", 1e-4, 1e-2, log=True)
    study.tell(done, 0.5)
    killed = study.ask()
    killed.suggest_float("lr", 1e-4, 1e-2, log=True)
    killed.set_user_attr("experiment", "s-001")
    killed.set_user_attr("owner", {"host": S.HOST, "pid": dead_pid()})
    alive = study.ask()
    S.claim(alive)  # this process: running, not killed
    assert S.left(study, search.trials) == 4 - 3
    assert S.retry_killed(study) == [killed.number]
    states = {t.number: t.state for t in study.trials}
    assert states[killed.number] == optuna.trial.TrialState.FAIL
    assert states[alive.number] == optuna.trial.TrialState.RUNNING
    assert S.left(study, search.trials) == 4 - 2
    retry = study.ask()  # the queued copy comes first, its params fixed
    assert search.changes(retry) == {"lr": study.trials[killed.number].params["lr"]}
    assert retry.user_attrs["experiment"] == "s-001" and retry.user_attrs["retry_of"] == killed.number


def test_workers_checkouts_belong_to_the_project(tmp_path):
    assert project_root(tmp_path / ".foldwise" / "workers" / "1") == tmp_path
    assert project_root(tmp_path / ".foldwise" / "workers" / "1" / "src") == tmp_path
    assert project_root(tmp_path / ".dvc" / "tmp" / "exps" / "tmpab12") == tmp_path
    assert project_root(tmp_path / "plain") == tmp_path / "plain"
