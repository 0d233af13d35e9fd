"""The library under the thin stages, without DVC: one fold's whole run in this process (MLflow
run, resume file, folder), the fold folder's format written and read by one module, and the
export's check of the exported program against the folds."""
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from foldwise import params as P
from foldwise.data.preprocess import preprocess
from foldwise.data.split import split
from foldwise.deploy.verify import DRIFT, TOLERANCE, check_export
from foldwise.train import fold as fold_run, outputs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fold0(statefarm_sample, tmp_path_factory):
    """split, preprocess and fold 0 of two, called as the stages call them, in a project folder
    of its own (its MLflow store and resume files land there)."""
    project = tmp_path_factory.mktemp("fold") / "project"
    project.mkdir()
    params = P.evolve(P.load(ROOT / "params.yaml"), {
        "folds": [0, 1], "data": {"root": str(statefarm_sample)},
        "preprocess": {"height": 24, "width": 32, "workers": 1},
        "train": {"epochs": 2, "batch_size": 8, "model": "test_resnet"}})
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(project)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")  # restored after
        split(params, statefarm_sample, "data/folds.csv", "metrics/dup.csv", "metrics/dup.png")
        preprocess(params, statefarm_sample, "data/processed")
        code = fold_run.run(params, 0, "data/folds.csv", "data/processed", "models/fold_0",
                            "metrics/history/fold_0.csv")
    mlflow.set_tracking_uri(None)
    return project, code


def test_a_fold_run_writes_its_folder_and_finishes_its_mlflow_run(fold0):
    project, code = fold0
    assert code == 0
    models = project / "models"
    folds = pd.read_csv(project / "data/folds.csv", dtype={"id": str})
    oof = outputs.read_oof(models, 0)
    assert list(oof["id"]) == list(folds["id"][folds["fold"] == 0])  # validation rows, in order
    assert list(oof.columns[:4]) == ["id", "group", "fold", "label"]
    np.testing.assert_allclose(oof[[f"c{k}" for k in range(10)]].sum(axis=1), 1.0, atol=1e-6)
    test = outputs.read_test(models, 0)
    assert len(test) == len(pd.read_csv(project / "data/processed/test.csv"))
    history = outputs.read_history(models, 0)
    assert list(history["epoch"]) == [0, 1]
    assert history.equals(pd.read_csv(project / "metrics/history/fold_0.csv"))
    run = outputs.read_run(models, 0)
    assert run["precision"] == "float32" and run["device"] == "cpu"
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    tracked = client.get_run(run["run_id"])
    assert tracked.info.status == "FINISHED" and tracked.data.tags["foldwise.fold"] == "0"
    assert tracked.data.tags["mlflow.parentRunId"] == run["parent_run_id"]
    assert len(client.get_metric_history(run["run_id"], "val_logloss")) == 2
    assert not list((project / ".foldwise/resume").glob("*.pt"))  # a finished fold keeps none


def test_the_fold_folder_round_trips_through_outputs(tmp_path):
    """What `outputs.write` writes, `outputs.read_*` reads back; the label column is there only
    for one class per row (not for keypoints' or tags' arrays)."""
    ids, groups = ["a", "b"], ["g1", "g2"]
    preds = np.array([[0.25, 0.75], [0.5, 0.5]])
    oof = outputs.oof_table(ids, groups, 3, np.array([1, 0]), preds, ["x", "y"])
    assert list(oof.columns) == ["id", "group", "fold", "label", "x", "y"]
    targets = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert "label" not in outputs.oof_table(ids, groups, 3, targets, preds, ["x", "y"]).columns
    test = outputs.prediction_table(["t"], [[0.1, 0.9]], ["x", "y"])
    history = pd.DataFrame({"epoch": [0], "val_metric": [0.7]})
    outputs.write(tmp_path / "fold_3", {"state_dict": {}}, oof, test, {"run_id": "r"}, history)
    pd.testing.assert_frame_equal(outputs.read_oof(tmp_path, 3), oof.astype({"fold": "int64"}))
    assert outputs.read_test(tmp_path, 3)["y"].tolist() == [0.9]
    assert outputs.read_run(tmp_path, 3) == {"run_id": "r"}
    assert outputs.read_history(tmp_path, 3).equals(history)


FP32 = [{"precision": "float32", "device": "cpu"}] * 2
BF16 = [{"precision": "bfloat16", "device": "cuda"}] * 2


def test_export_check_like_for_like_compares_with_the_folds_own_predictions():
    bagged = np.array([[0.2, 0.8], [0.6, 0.4]])

    def no_eager():
        raise AssertionError("the folds predicted like for like: no eager rerun")

    check = check_export(bagged + 1e-6, bagged, FP32, "cpu", eager=no_eager)
    assert check.against == "bagged" and check.worst == pytest.approx(1e-6)
    with pytest.raises(RuntimeError, match="differs from the bagged networks by 1.00e-03"):
        check_export(bagged + 1e-3, bagged, FP32, "cpu", eager=no_eager)


def test_export_check_of_bf16_folds_compares_with_the_eager_networks_and_bounds_the_drift():
    bagged = np.array([[0.2, 0.8], [0.6, 0.4]])
    exported = bagged + 0.01  # bfloat16 folds: within what precision explains
    check = check_export(exported, bagged, BF16, "cuda", eager=lambda: exported + TOLERANCE / 2)
    assert check.against == "eager" and check.drift == pytest.approx(0.01)
    with pytest.raises(RuntimeError, match="more than precision explains"):
        check_export(bagged + 2 * DRIFT, bagged, BF16, "cuda", eager=lambda: bagged + 2 * DRIFT)
    with pytest.raises(RuntimeError, match="differs from the bagged networks"):
        check_export(exported, bagged, BF16, "cuda", eager=lambda: exported + 10 * TOLERANCE)


def test_the_export_check_reads_the_folds_run_files(fold0):
    """run.json says how the fold predicted: on this CPU in float32, like for like."""
    project, _ = fold0
    run = json.loads((project / "models/fold_0/run.json").read_text())
    from foldwise.deploy.verify import like_for_like
    assert like_for_like([run], "cpu") and not like_for_like([run], "cuda")
