"""Three queued experiments, two at a time (`dvc queue start -j 2`), up to evaluate, in a project
that has run nothing yet: all complete, `dvc exp
show` lists them with their params, every parent and fold run is in the project's MLflow store
with its metrics, the SQLite store passes its integrity check, and
two experiments with the same training params (exp-a and exp-b, which differ in the bag only)
never share a parent run or a resume file, take turns at their identical folds, and leave no
empty file in DVC's cache."""
import json
import sqlite3

import pytest
from conftest import make_project, sh, start_queue, tiny_statefarm, wait_for_queue

FOLDS = 2
EXPERIMENTS = {
    "exp-a": "-S lr=0.001 -S bag.mean=geometric",
    "exp-b": "-S lr=0.001",
    "exp-c": "-S lr=0.003",
}


def tiny(params):
    tiny_statefarm(params, FOLDS, 2)


@pytest.fixture(scope="module")
def queued(tmp_path_factory):
    # nothing run before the queue: the experiments create the project's store at once (under
    # its lock) and share their upstream stages through DVC's run-cache
    dst = make_project(tmp_path_factory.mktemp("queue") / "project", tiny)
    for name, args in EXPERIMENTS.items():  # up to evaluate: what blending and comparing read
        sh(f"dvc exp run --queue -n {name} {args} evaluate", dst)
    start_queue(dst, 2)
    return dst, wait_for_queue(dst)


def test_all_three_experiments_succeed(queued):
    dst, status = queued
    assert status.count("Success") == 3, status
    show = sh("dvc exp show --no-pager --csv", dst).stdout
    header = show.splitlines()[0]
    assert "lr" in header and "logloss" in header, header
    for name in EXPERIMENTS:
        assert name in show
    assert any(",0.003," in line for line in show.splitlines()[1:]), show  # -S lr=0.003 as typed


def test_every_experiment_has_a_finished_parent_with_its_folds_and_metrics(queued):
    import mlflow
    from mlflow.tracking import MlflowClient
    dst, _ = queued
    mlflow.set_tracking_uri(f"sqlite:///{dst / 'mlflow.db'}")
    client = MlflowClient()
    exp = client.get_experiment_by_name("foldwise")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    by_id = {r.info.run_id: r for r in runs}
    assert not [r for r in runs if r.info.status == "RUNNING"]
    keys = set()
    for name in EXPERIMENTS:
        parents = [r for r in runs if r.data.tags.get("foldwise.role") == "parent"
                   and r.data.tags.get("dvc.experiment") == name]
        assert len(parents) == 1, (name, len(parents))
        parent = parents[0]
        assert parent.info.status == "FINISHED" and "oof_logloss" in parent.data.metrics
        if "foldwise.fold_runs" in parent.data.tags:  # folds restored from DVC's run-cache
            folds = [by_id[i] for i in parent.data.tags["foldwise.fold_runs"].split(",")]
        else:
            folds = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
                     and r.info.status == "FINISHED"]
            keys.add(parent.data.tags["foldwise.pipeline_key"])
        assert sorted(f.data.tags["foldwise.fold"] for f in folds) == [str(k) for k in range(FOLDS)]
        for f in folds:
            assert f.info.status == "FINISHED"
            assert len(client.get_metric_history(f.info.run_id, "val_logloss")) == 2
    # experiments that trained their own folds did so under keys of their own
    trained = [p for p in runs if p.data.tags.get("foldwise.role") == "parent"
               and p.data.tags.get("dvc.experiment") in EXPERIMENTS
               and "foldwise.fold_runs" not in p.data.tags]
    assert len(keys) == len(trained)


def test_twin_folds_took_turns_and_no_cache_object_is_empty(queued):
    """exp-a and exp-b train identical folds: without turns, DVC committed the same files from
    both at once and one kept a 0-byte model.pt (foldwise.scale.twins, docs/scaling.md)."""
    import hashlib
    dst, _ = queued
    logs = sh("dvc queue logs exp-a", dst).stdout + sh("dvc queue logs exp-b", dst).stdout
    # one waited for the other's fold (or, started late, found it in DVC's run-cache)
    assert "an identical run is in progress" in logs or "is cached - skipping run" in logs, logs
    empty = hashlib.md5(b"").hexdigest()
    objects = [f for f in (dst / ".dvc/cache/files/md5").rglob("*") if f.is_file()]
    assert objects and not [f for f in objects
                            if f.stat().st_size == 0 and f.parent.name + f.name != empty]


def test_the_sqlite_store_is_intact_and_no_resume_state_is_left(queued):
    dst, _ = queued
    with sqlite3.connect(dst / "mlflow.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert not list((dst / ".foldwise" / "resume").glob("*.pt"))
    # the experiments ran in DVC's temporary copies and logged to the project's own store
    assert not list((dst / ".dvc/tmp/exps").glob("*/mlflow.db"))


def test_experiments_blend_by_name_with_the_workspace_bag_into_one_submission(queued):
    """`foldwise-blend` takes experiment names and prediction folders; each member's OOF score is
    the one its own evaluate stage reported, and the blend is a run of its own in MLflow."""
    import dvc.api
    import mlflow
    import pandas as pd
    from foldwise.ensemble.blend import experiment_revs
    dst, _ = queued
    # the workspace's outputs from DVC's cache (a folder member); the stages after evaluate
    # never ran in these experiments, so DVC names their outputs as missing, and only those
    applied = sh("dvc exp apply exp-b", dst, check=False)
    missing = {line.strip() for line in applied.stderr.split("targets:")[-1].splitlines()
               if line.strip() and " " not in line.strip() and not line.startswith("<")}
    assert applied.returncode == 0 or missing <= {
        "data/neighbours", "metrics/neighbours.json", "data/stack", "metrics/stack.json",
        "export/model", "export/submission.csv", "export/checks.json", "export/distilled",
        "metrics/distill.json", "metrics/history/distill.csv", "export/refit", "metrics/refit.json",
        "metrics/history/refit.csv", "metrics/speed.json"}, applied.stderr
    out = sh("foldwise-blend exp-a exp-c data/bagged --out export/blend", dst).stdout
    assert "fitted, cross-validated" in out
    summary = json.loads((dst / "export/blend/blend.json").read_text())
    assert summary["members"] == ["exp-a", "exp-c", "data/bagged"]
    assert sum(summary["weights"].values()) == pytest.approx(1.0)
    revs = experiment_revs(dst)
    for name in ("exp-a", "exp-c"):
        reported = json.loads(dvc.api.read("metrics/metrics.json", repo=str(dst), rev=revs[name]))
        assert summary["member_scores"][name]["logloss"] == pytest.approx(reported["oof"]["logloss"], abs=1e-6)
    workspace = json.loads((dst / "metrics/metrics.json").read_text())
    assert summary["member_scores"]["data/bagged"]["logloss"] == pytest.approx(workspace["oof"]["logloss"], abs=1e-6)
    sub = pd.read_csv(dst / "export/blend/submission.csv")
    assert list(sub.columns) == ["img"] + [f"c{k}" for k in range(10)]
    assert len(sub) == len(pd.read_csv(dst / "data/bagged/test.csv"))
    mlflow.set_tracking_uri(f"sqlite:///{dst / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["foldwise"], filter_string="tags.`foldwise.role` = 'blend'")
    assert len(runs) == 1 and runs["metrics.cv_logloss"][0] == pytest.approx(
        summary["cross_validated"]["logloss"])
    bad = sh("foldwise-blend exp-a no-such-experiment", dst, check=False)
    assert bad.returncode == 2 and "'no-such-experiment' is neither a folder nor a DVC experiment" in bad.stderr
