"""`make folds J=2` (`python -m foldwise.scale.parallel --jobs 2`): three folds trained two at a time by
concurrent `dvc repro` processes in one workspace, then the rest of the DAG. Every fold trains
once, the folds really overlap, the results equal a sequential `dvc repro`'s, a following
`dvc repro` does nothing, and the MLflow parent holds one finished run per fold."""
import pytest
import yaml
from conftest import REFERENCE_FOLDS as FOLDS, make_project, reference_params, sh


@pytest.fixture(scope="module")
def parallel(tmp_path_factory, reference_project):
    dst = make_project(tmp_path_factory.mktemp("parallel") / "project", reference_params)
    out = sh("python -m foldwise.scale.parallel --jobs 2", dst).stdout
    return dst, reference_project, out


def fold_runs(dst):
    import mlflow
    from mlflow.tracking import MlflowClient
    mlflow.set_tracking_uri(f"sqlite:///{dst / 'mlflow.db'}")
    client = MlflowClient()
    exp = client.get_experiment_by_name("foldwise")
    return client.search_runs([exp.experiment_id], max_results=1000)


def test_every_fold_trains_once_and_two_at_a_time(parallel):
    dst, _, out = parallel
    for k in range(FOLDS):
        log = (dst / ".foldwise" / "logs" / f"train@{k}.log").read_text()
        assert log.count(f"Running stage 'train@{k}'") == 1, log[-2000:]
        assert "Running stage 'preprocess'" not in log and f"fold {k}: best epoch" in log
        assert f"train@{k}: done" in out
    runs = [r for r in fold_runs(dst) if r.data.tags.get("foldwise.role") == "fold"]
    spans = sorted((r.info.start_time, r.info.end_time) for r in runs)
    assert len(spans) == FOLDS
    # two slots: the second fold starts before the first one ends
    assert spans[1][0] < spans[0][1], spans


def test_the_results_equal_a_sequential_repro(parallel):
    dst, sequential, _ = parallel

    def outs(d):
        lock = yaml.safe_load((d / "dvc.lock").read_text())["stages"]
        return {name: dict((o["path"], o["md5"]) for o in s.get("outs", [])) for name, s in lock.items()}
    a, b = outs(dst), outs(sequential)
    assert a.keys() == b.keys()
    # train outputs hold MLflow run ids (run.json) and evaluate the measured throughput; everything else has the same hash, and the folds the same predictions
    for name in ("sample", "split", "preprocess", "bag", "neighbours", "stack"):
        assert a[name] == b[name], name
    assert a["export"]["export/submission.csv"] == b["export"]["export/submission.csv"]
    for k in range(FOLDS):
        for f in ("oof.csv", "test.csv"):
            assert (dst / f"models/fold_{k}/{f}").read_bytes() == (sequential / f"models/fold_{k}/{f}").read_bytes()


def test_the_folds_keep_identical_weights_and_histories(parallel):
    """The same params on the CPU give identical results, file for file, however the folds were
    scheduled: the weights too, and every history column but the measured throughput."""
    import pandas as pd
    import torch
    dst, sequential, _ = parallel
    for k in range(FOLDS):
        wa, wb = (torch.load(d / f"models/fold_{k}/model.pt", weights_only=True)["state_dict"]
                  for d in (dst, sequential))
        assert wa.keys() == wb.keys()
        assert all(torch.equal(wa[n], wb[n]) for n in wa), k
        ha, hb = (pd.read_csv(d / f"metrics/history/fold_{k}.csv").drop(columns="images_per_s")
                  for d in (dst, sequential))
        pd.testing.assert_frame_equal(ha, hb)


def test_a_following_repro_does_nothing(parallel):
    dst, _, _ = parallel
    assert "Running stage" not in sh("dvc repro", dst).stdout


def test_the_parent_holds_one_finished_run_per_fold(parallel):
    dst, _, _ = parallel
    runs = fold_runs(dst)
    parents = [r for r in runs if r.data.tags.get("foldwise.role") == "parent"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(r.data.tags["foldwise.fold"] for r in children) == [str(k) for k in range(FOLDS)]
    assert all(r.info.status == "FINISHED" for r in children)


def test_a_failing_fold_is_named_and_no_further_fold_starts(tmp_path):
    def broken(params):
        reference_params(params)
        # a value the check stage passes and the fold refuses when it starts (upstream stages
        # do not read it: the folds fail)
        params["train"]["weights_file"] = "elsewhere/w.pth"
    dst = make_project(tmp_path / "project", broken)
    res = sh("python -m foldwise.scale.parallel --jobs 2", dst, check=False)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "error: train@" in res.stderr and "failed (whole log: .foldwise/logs/train@" in res.stderr
    assert "train.weights_file='elsewhere/w.pth' must be a file under weights/" in res.stderr
    assert (dst / "data/processed").is_dir() and not (dst / "data/bagged").exists()
    assert not (dst / ".foldwise/logs/train@2.log").exists()  # two slots failed: the third never ran
