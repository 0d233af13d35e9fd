"""`foldwise-search` on the tiny sample, one project: a 3-trial study killed during its second
trial and run again with two workers ends with exactly 3 finished or pruned trials, none trained
twice and no MLflow run left RUNNING; the two workers ran trials at once; the absurd learning
rate is pruned after its first fold; the trials (stopping at evaluate: `until`) are DVC
experiments and MLflow runs (study -> trial -> fold) that agree with the study; `--apply` then
`dvc repro` restores the best trial from the run-cache and runs only the stages after evaluate;
DVC's own grid sweep works beside it; bad input is one line before anything trains."""
import subprocess
import time

import optuna
import pytest
import yaml
from conftest import (kill_group, make_project, mlflow_runs, project_env, sh, start_queue,
                      tiny_statefarm, wait_for_queue)

from foldwise.search import study as S

FOLDS = 2
# Trials differ in test-time augmentation, which changes their OOF predictions but not the
# epochs' validation figures (chosen on plain predictions): on a sample too small to learn from
# in two epochs, the sensible trials' first folds then score exactly alike and only the absurd
# learning rate can be pruned
SEARCH = {"study": "s", "trials": 3, "pruner": "median", "startup_trials": 1,
          "heartbeat": 1,  # the killed searcher's trial is failed and retried 3 s after its kill
          "until": "evaluate",  # the trials stop at the objective: no export each
          "space": {"lr": {"choices": [0.002, 1.5]}, "tta.shift": {"choices": [0.0, 0.02, 0.04]}},
          # tried first, in this order: the kill lands in trial 1, trial 2's lr is absurd
          "start": {"t0": {"lr": 0.002, "tta.shift": 0.0}, "t1": {"lr": 0.002, "tta.shift": 0.02},
                    "absurd": {"lr": 1.5, "tta.shift": 0.0}}}


def tiny(params):
    tiny_statefarm(params, FOLDS, 2)


def start_search(dst, *args):
    return subprocess.Popen(["foldwise-search", *args], cwd=dst, env=project_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def wait_for(path, text, proc, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and text in path.read_text():
            return
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.5)
    raise AssertionError(f"{text!r} never appeared in {path}")


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    dst = make_project(tmp_path_factory.mktemp("search") / "project", tiny)
    (dst / "search.yaml").write_text(yaml.safe_dump(SEARCH, sort_keys=False))
    sh("git add search.yaml && git commit -qm search", dst)
    params_before = (dst / "params.yaml").read_bytes()
    first = start_search(dst)
    deadline = time.time() + 120
    while not (dst / ".foldwise/search.db").exists() or not study_id(dst):
        assert time.time() < deadline and first.poll() is None
        time.sleep(0.2)
    wait_for(dst / f".foldwise/search/logs/{name(dst, 1)}.log", "$ dvc repro train@0", first)
    deadline = time.time() + 600
    while not list((dst / ".foldwise/resume").glob("*-fold0.pt")):  # trial 1's first epoch done
        assert time.time() < deadline and first.poll() is None
        time.sleep(0.2)
    kill_group(first)  # the searcher and its DVC commands, as Ctrl-C would, all of them gone
    second = start_search(dst, "--workers", "2")
    out, _ = second.communicate(timeout=1800)
    assert second.returncode == 0, out
    return dst, out, params_before


def study(dst):
    """The searcher's study, read as a second searcher would (it may be making the tables)."""
    return optuna.load_study(study_name="s", storage=S.connect(f"sqlite:///{dst / '.foldwise/search.db'}"))


def trials(dst):
    return study(dst).trials


def study_id(dst):
    try:
        study_ = study(dst)
    except KeyError:  # not created yet
        return None
    return study_.user_attrs.get("foldwise.id")


def name(dst, number):
    """Trial `number`'s DVC experiment: the study's name and own id, then the number."""
    return f"s-{study_id(dst)}-{number:03d}"


def test_the_killed_study_ends_with_exactly_its_trials_the_killed_one_retried(searched):
    dst, out, _ = searched
    done = [t for t in trials(dst) if t.state.is_finished() and t.state.name in ("COMPLETE", "PRUNED")]
    assert len(done) == 3, out
    failed = [t for t in trials(dst) if t.state.name == "FAIL"]
    assert [t.number for t in failed] == [1]
    retried = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number
    retry = [t for t in done if retried(t) == 1]
    assert len(retry) == 1 and retry[0].user_attrs["experiment"] == name(dst, 1)
    assert retry[0].user_attrs["start"] == "t1"  # search.yaml's start, kept by the retry
    assert retry[0].params == failed[0].params
    assert "trial" in out and "COMPLETE" in out and "PRUNED" in out  # the table
    assert f"study 's' (id {study_id(dst)}) in sqlite:///{dst / '.foldwise/search.db'}" in out


def test_the_absurd_learning_rate_is_pruned_after_its_first_fold(searched):
    dst, _, _ = searched
    absurd = [t for t in trials(dst) if t.params["lr"] == 1.5]
    assert [t.state.name for t in absurd] == ["PRUNED"]
    assert list(absurd[0].intermediate_values) == [0]
    _, runs = mlflow_runs(dst)
    folds = [r for r in runs if r.data.tags.get("foldwise.role") == "fold"
             and r.data.tags.get("dvc.experiment") == name(dst, 2)]
    assert [r.data.tags["foldwise.fold"] for r in folds] == ["0"]  # fold 1 never started


def test_finished_trials_are_dvc_experiments_and_the_workspace_is_untouched(searched):
    dst, _, params_before = searched
    complete = {t.user_attrs["experiment"] for t in trials(dst) if t.state.name == "COMPLETE"}
    listed = set(sh("dvc exp list --name-only", dst).stdout.split())
    assert complete and complete <= listed and name(dst, 2) not in listed
    show = sh("dvc exp show --no-pager --csv", dst).stdout
    assert "oof.logloss" in show.splitlines()[0]
    assert (dst / "params.yaml").read_bytes() == params_before
    assert not (dst / "models").exists()  # the trials ran in the workers' checkouts


def test_mlflow_holds_study_trials_and_folds_none_trained_twice_none_running(searched):
    dst, _, _ = searched
    client, runs = mlflow_runs(dst)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    [parent] = [r for r in runs if r.data.tags.get("foldwise.role") == "study"]
    assert parent.info.status == "FINISHED" and "best_logloss" in parent.data.metrics
    assert parent.data.tags["best.experiment"].startswith("s-")
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "trials.csv" in artifacts and "figures" in artifacts
    figures = {a.path for a in client.list_artifacts(parent.info.run_id, "figures")}
    assert "figures/history.png" in figures
    parents = [r for r in runs if r.data.tags.get("foldwise.role") == "parent"]
    assert parents and all(p.data.tags["mlflow.parentRunId"] == parent.info.run_id for p in parents)
    by_state = {}
    for p in parents:
        by_state.setdefault(p.data.tags.get("foldwise.trial_state"), []).append(p)
    assert len(by_state["COMPLETE"]) == 2 and len(by_state["PRUNED"]) == 1
    for p in by_state["COMPLETE"]:
        assert p.info.status == "FINISHED"
        assert {"oof_logloss", "folds_mean_logloss", "folds_std_logloss"} <= set(p.data.metrics)
    trained = [(r.data.tags["dvc.experiment"], r.data.tags["foldwise.fold"]) for r in runs
               if r.data.tags.get("foldwise.role") == "fold" and r.info.status == "FINISHED"]
    assert len(trained) == len(set(trained)) == 2 * FOLDS + 1  # the killed fold resumed, once
    killed = [r for r in runs if r.data.tags.get("dvc.experiment") == name(dst, 1)
              and r.data.tags.get("foldwise.role") == "fold" and r.info.status == "KILLED"]
    assert len(killed) == 1  # the attempt the kill stopped, closed when its fold resumed
    [resumed] = [r for r in runs if r.data.tags.get("foldwise.resumes") == killed[0].info.run_id]
    assert resumed.info.status == "FINISHED" and resumed.data.tags["dvc.experiment"] == name(dst, 1)


def test_apply_puts_the_best_params_in_params_yaml_and_dvc_repro_restores_them(searched):
    dst, _, _ = searched
    best = study(dst).best_trial
    out = sh("foldwise-search --apply", dst).stdout
    assert f"trial {best.number}" in out
    assert yaml.safe_load((dst / "params.yaml").read_text())["lr"] == pytest.approx(best.params["lr"])
    _, before = mlflow_runs(dst)
    repro = sh("dvc repro", dst).stdout
    assert "Running stage 'train@" not in repro and "is cached - skipping run" in repro, repro
    assert "Running stage 'evaluate'" not in repro and "Running stage 'export'" in repro  # until
    _, after = mlflow_runs(dst)
    assert len(after) == len(before)  # nothing trained, nothing evaluated again


def test_dvcs_own_grid_sweep_works_beside_it(searched):
    dst, _, _ = searched
    # a grid over a param of evaluate only, up to evaluate: one point is the workspace's own
    # (restored from the run-cache), the other reruns evaluate
    sh("dvc exp run --queue -S 'calibration.temperature=false,true' evaluate", dst)
    start_queue(dst, 2)  # both points at once
    status = wait_for_queue(dst)
    assert status.count("Success") == 2, status
    show = sh("dvc exp show --no-pager --csv", dst).stdout
    assert "oof.logloss_calibrated" in show.splitlines()[0]  # the calibrated point's figure


def test_two_workers_ran_trials_at_once_and_study_dvc_and_mlflow_agree(searched):
    dst, _, _ = searched
    resumed = [t for t in trials(dst) if t.number >= 2 and t.state.name in ("COMPLETE", "PRUNED")]
    assert any(a.datetime_start < b.datetime_complete and b.datetime_start < a.datetime_complete
               for a in resumed for b in resumed if a.number < b.number)
    _, runs = mlflow_runs(dst)
    parents = {r.data.tags["dvc.experiment"]: r for r in runs
               if r.data.tags.get("foldwise.study") == "s" and r.data.tags.get("foldwise.role") == "parent"}
    listed = set(sh("dvc exp list --name-only", dst).stdout.split())
    for t in trials(dst):
        if t.state.name == "COMPLETE":
            name = t.user_attrs["experiment"]
            assert name in listed
            assert parents[name].data.tags["foldwise.trial"] == str(t.number)
            assert parents[name].data.metrics["oof_logloss"] == pytest.approx(t.value)


def test_bad_input_is_one_line_before_anything_trains(searched):
    dst, _, _ = searched
    (dst / "bad.yaml").write_text(yaml.safe_dump({"study": "bad", "space": {
        "train.model": {"choices": ["resnet18", "resnet999"]}}}))
    res = sh("foldwise-search --config bad.yaml", dst, check=False)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1] == (
        "error: bad.yaml: space.train.model: 'resnet999' is not a timm model "
        "(timm.list_models() names them)")
    study_names = optuna.get_all_study_names(f"sqlite:///{dst / '.foldwise/search.db'}")
    assert "bad" not in study_names
