"""Folds across machines: each fold a Ray task (a local Ray cluster here) training in a checkout
of its own against a local DVC remote; the coordinator's `dvc repro` restores them from DVC's
run-cache and trains nothing, and the folds' MLflow runs are in the coordinator's store. The
same remote then shares the results: a fresh clone pulls them and retrains nothing."""
import json

import pytest
from conftest import make_project, sh, tiny_statefarm


@pytest.fixture(scope="module")
def workers_project(tmp_path_factory):
    """The folds trained by Ray workers; returns the coordinator's project and the output."""
    tmp = tmp_path_factory.mktemp("workers")
    dst = make_project(tmp / "project", lambda p: tiny_statefarm(p, 2, 2))
    sh(f"dvc remote add -d shared {tmp / 'remote'}", dst)
    sh("git commit -qam 'a remote for the workers'", dst)
    out = sh("python -m foldwise.scale.workers --gpus 0", dst).stdout
    return dst, out


def test_ray_workers_train_the_folds_and_the_coordinator_trains_none(workers_project):
    dst, out = workers_project
    assert "train@0: trained" in out and "train@1: trained" in out, out
    # the coordinator trained nothing (the command fails otherwise) and finished the DAG
    assert "every fold came back through DVC's run-cache" in out
    assert (dst / "export/submission.csv").is_file() and not (dst / "models/fold_0/model.pt").is_symlink()
    assert "Running stage" not in sh("dvc repro", dst).stdout
    import mlflow
    from mlflow.tracking import MlflowClient
    mlflow.set_tracking_uri(f"sqlite:///{dst / 'mlflow.db'}")
    client = MlflowClient()
    exp = client.get_experiment_by_name("foldwise")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    folds = [r for r in runs if r.data.tags.get("foldwise.role") == "fold"]
    assert sorted(r.data.tags["foldwise.fold"] for r in folds) == ["0", "1"]
    assert all(r.info.status == "FINISHED" for r in folds)
    assert len({r.data.tags["mlflow.parentRunId"] for r in folds}) == 1  # one pipeline run
    evaluated = json.loads((dst / "models/fold_0/run.json").read_text())["parent_run_id"]
    parent = client.get_run(evaluated)
    assert parent.info.status == "FINISHED" and "oof_logloss" in parent.data.metrics


def test_a_fresh_clone_pulls_from_the_remote_and_retrains_nothing(tmp_path_factory, workers_project):
    dst, _ = workers_project
    sh("git add -A && git commit -qm 'results'", dst)
    sh("dvc push", dst)
    clone = tmp_path_factory.mktemp("clone") / "project"
    sh(f"git clone -q {dst} {clone}", clone.parent)
    assert not (clone / "models/fold_0").exists() and not (clone / "export/submission.csv").exists()
    sh("dvc pull", clone)
    for path in ("export/submission.csv", "models/fold_1/model.pt", "data/processed/train.npy"):
        assert (clone / path).read_bytes() == (dst / path).read_bytes(), path
    out = sh("dvc repro", clone).stdout
    assert "Running stage" not in out and "up to date" in out, out
    assert not (clone / "mlflow.db").exists()  # nothing ran, so nothing was tracked
