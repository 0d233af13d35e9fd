"""The library under the thin stages, without DVC: one fold's whole run in this process (MLflow
run, resume file, folder), the fold folder's format written and read by one module, and the
export's check of the exported program against the folds."""
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from foldwise import params as P
from foldwise.data import preprocess, split
from foldwise.deploy.verify import DRIFT, TOLERANCE, check_export
from foldwise.train import outputs, train

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
        split.run(params, split.Paths(statefarm_sample, Path("data/folds.csv"),
                                      Path("metrics/dup.csv"), Path("metrics/dup.png")))
        preprocess.run(params, preprocess.Paths(statefarm_sample, Path("data/processed")))
        code = train.run(params, train.Paths(0, Path("data/folds.csv"), Path("data/processed"),
                                             Path("models/fold_0"), Path("metrics/history/fold_0.csv")))
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


RUNS = [{"precision": "bfloat16", "device": "cuda"}] * 2


def test_the_export_is_checked_like_for_like_against_the_eager_networks():
    """The exported program must match the same networks run eagerly here (1e-4), whatever
    the folds' own predictions were."""
    bagged = np.array([[0.2, 0.8], [0.6, 0.4]])
    check = check_export(bagged + 1e-6, bagged, bagged, RUNS)
    assert check.worst == pytest.approx(1e-6) and check.drift == pytest.approx(1e-6)
    with pytest.raises(RuntimeError, match="run eagerly by 1.00e-03"):
        check_export(bagged + 1e-3, bagged, bagged, RUNS)


def test_drift_from_the_folds_predictions_is_a_percentile_and_a_warning(caplog):
    """One borderline image among many (bfloat16 folds) moves the largest difference, not the
    99th percentile, and never fails the run; a drift of every image is warned about."""
    rng = np.random.default_rng(0)
    exported = rng.dirichlet([1, 1], size=2000)
    folds = exported + rng.normal(0, 1e-3, exported.shape)
    folds[7] += 0.3  # one image the bfloat16 folds predicted far off
    with caplog.at_level("WARNING", logger="foldwise.deploy.verify"):
        check = check_export(exported, exported, folds, RUNS)
    assert check.drift_max > 0.25 and check.drift < 0.01 and not caplog.records
    with caplog.at_level("WARNING", logger="foldwise.deploy.verify"):
        check = check_export(exported, exported, exported + 2 * DRIFT, RUNS)
    assert check.drift > DRIFT and "more than precision explains" in caplog.text
    assert "bfloat16 on cuda" in caplog.text
    assert TOLERANCE < DRIFT


def test_a_change_to_the_code_moves_the_resume_file(tmp_path):
    """A fold killed mid-training resumes only under the code that saved it: after a fix to
    foldwise, the rerun fold starts over instead of resuming the old code's state."""
    import shutil
    package = tmp_path / "foldwise"
    shutil.copytree(train.PACKAGE, package, ignore=shutil.ignore_patterns("__pycache__"))
    before = train.resume_file(tmp_path, "abc", 2, package)
    assert before == train.resume_file(tmp_path, "abc", 2, package)  # stable
    loop = package / "train" / "loop.py"
    loop.write_text(loop.read_text() + "\n# a fix\n")
    after = train.resume_file(tmp_path, "abc", 2, package)
    assert after != before and after.parent == before.parent and after.name.endswith("-fold2.pt")


def test_an_experiment_another_project_creates_meanwhile_is_the_one_opened(tmp_path, monkeypatch):
    """Projects that share a tracking server share no lock: between our lookup of the experiment
    and our creating it, another may create it. Then we open theirs; no second one, no error."""
    from foldwise import tracking
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    theirs = MlflowClient(uri).create_experiment("shared")
    looked = []
    real = mlflow.get_experiment_by_name

    def first_lookup_misses(name):  # the other project creates it just after our first look
        looked.append(name)
        return None if len(looked) == 1 else real(name)

    monkeypatch.setattr(mlflow, "get_experiment_by_name", first_lookup_misses)
    cfg = P.Mlflow(experiment="shared", tracking_uri=uri, register=False, model_name="")
    assert tracking.open_experiment(cfg) == theirs
    assert [e.name for e in MlflowClient(uri).search_experiments()] == ["shared", "Default"]
    mlflow.set_tracking_uri(None)
