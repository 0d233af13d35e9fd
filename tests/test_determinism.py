"""The same params twice on the CPU give identical results, file for file: a promise the
README makes, and what lets `dvc.lock` hashes of two runs be compared."""
import json

import pytest
from conftest import make_project, reference_params, sh


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, reference_project):
    """The session's reference run and a second one with the same params, in another folder."""
    dst = make_project(tmp_path_factory.mktemp("again") / "project", reference_params)
    sh("dvc repro", dst)
    return reference_project, dst


@pytest.mark.parametrize("path", ["metrics/metrics.json", "data/bagged/oof.csv",
                                  "data/bagged/test.csv", "export/submission.csv",
                                  "models/fold_0/oof.csv", "models/fold_1/test.csv",
                                  "metrics/history/fold_0.csv"])
def test_two_runs_write_identical_files(two_runs, path):
    a, b = two_runs
    if path.endswith("history/fold_0.csv"):  # everything but the measured throughput
        import pandas as pd
        ha, hb = (pd.read_csv(d / path).drop(columns="images_per_s") for d in (a, b))
        pd.testing.assert_frame_equal(ha, hb)
        return
    if path.endswith("metrics.json"):
        ma, mb = (json.loads((d / path).read_text()) for d in (a, b))
        for m in (ma, mb):
            for fold in m["folds"].values():
                fold.pop("train_images_per_s")
        assert ma == mb
        return
    assert (a / path).read_bytes() == (b / path).read_bytes(), path


def test_two_runs_record_the_same_output_hashes_in_dvc_lock(two_runs):
    import yaml
    a, b = two_runs

    def outs(d):
        lock = yaml.safe_load((d / "dvc.lock").read_text())["stages"]
        return {name: [(o["path"], o["md5"]) for o in s.get("outs", [])]
                for name, s in lock.items() if name not in ("evaluate",)}
    # train outputs hold MLflow run ids (run.json), evaluate's metrics the throughput, and
    # torch's archives (model.pt, bagged.pt2) a random serialization id and, for the exported
    # program, source paths: everything else is identical, byte for byte
    oa, ob = outs(a), outs(b)
    for name in ("sample", "split", "preprocess", "bag"):
        assert oa[name] == ob[name], name
    assert dict(oa["export"])["export/submission.csv"] == dict(ob["export"])["export/submission.csv"]


def test_two_runs_keep_identical_weights(two_runs):
    import torch
    a, b = two_runs
    for fold in (0, 1):
        wa, wb = (torch.load(d / f"models/fold_{fold}/model.pt", weights_only=True)["state_dict"]
                  for d in (a, b))
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.equal(wa[k], wb[k]), k
