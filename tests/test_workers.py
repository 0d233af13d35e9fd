"""Folds across machines: each fold a Ray task (a local Ray cluster here) training in a checkout
of its own against a local DVC remote; the coordinator's `dvc repro` restores them from DVC's
run-cache and trains nothing, and the folds' MLflow runs are in the coordinator's store."""
import json

from conftest import make_project, sh, tiny_statefarm


def test_ray_workers_train_the_folds_and_the_coordinator_trains_none(tmp_path):
    dst = make_project(tmp_path / "project", lambda p: tiny_statefarm(p, 2, 2))
    sh(f"dvc remote add -d shared {tmp_path / 'remote'}", dst)
    sh("git commit -qam 'a remote for the workers'", dst)
    out = sh("python -m foldwise.workers --gpus 0", dst).stdout
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
