"""The registry's `champion`: only versions of one task, metric and data set compete, a model of
the embedded sample never takes it from a model of real data, and two exports at once leave it
on the best. A real MLflow registry (SQLite), versions made as an export makes them."""
import threading

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from foldwise.deploy import mlmodel

SAMPLE_ROOT, REAL_ROOT = "data/sample/statefarm", "/data/state-farm"


@pytest.fixture
def client(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    yield MlflowClient(uri, uri)
    mlflow.set_tracking_uri("")


def export(client, tmp_path, name, score, data="d1", task="statefarm", metric="oof_logloss",
           root=REAL_ROOT):
    """One export's registration: a logged artifact, registered with its group and figure."""
    with mlflow.start_run() as run:
        (tmp_path / "model.txt").write_text(f"{name} {score}")
        mlflow.log_artifact(str(tmp_path / "model.txt"), "model")
    group = {"foldwise.task": task, "foldwise.metric": metric, "foldwise.data": data}
    return mlmodel.register(f"{run.info.artifact_uri}/model", name, score, group,
                            sample=mlmodel.is_sample(root))


def champion(client, name):
    return str(client.get_model_version_by_alias(name, mlmodel.CHAMPION).version)


def test_the_default_name_holds_the_task_and_the_data_set():
    assert mlmodel.registered_name("foldwise", "statefarm", SAMPLE_ROOT) == "foldwise-statefarm-sample"
    assert mlmodel.registered_name("foldwise", "statefarm", REAL_ROOT) == "foldwise-statefarm-state-farm"
    assert mlmodel.registered_name("foldwise", "keypoints", "/d/faces x") == "foldwise-keypoints-faces-x"
    assert mlmodel.registered_name("foldwise", "statefarm", REAL_ROOT, "mine") == "mine"


def test_sample_then_real_data_then_sample_leaves_champion_on_the_real_datas_best(client, tmp_path):
    """One name shared by every data set (as `mlflow.experiment` was): the sample's 0.10 stayed
    champion over the user's real model (0.17)."""
    name = "shared"
    v1, c = export(client, tmp_path, name, 0.10, data="sample", root=SAMPLE_ROOT)
    assert c == v1  # the first version of a registry
    v2, c = export(client, tmp_path, name, 0.17, data="real")
    assert c == v2  # real data: its own group's best, not the sample's lower figure
    v3, c = export(client, tmp_path, name, 0.09, data="sample", root=SAMPLE_ROOT)
    assert c == v2 and champion(client, name) == v2  # the sample never displaces real data
    v4, c = export(client, tmp_path, name, 0.20, data="real")
    assert c == v2  # a worse version of the same data set
    v5, _ = export(client, tmp_path, name, 0.15, data="real")
    assert champion(client, name) == v5
    tags = client.get_model_version(name, v5).tags
    assert tags["foldwise.task"] == "statefarm" and tags["foldwise.metric"] == "oof_logloss"
    assert tags["foldwise.data"] == "real" and float(tags["oof_logloss"]) == 0.15
    assert tags[mlmodel.SAMPLE] == "false" and client.get_model_version(name, v3).tags[mlmodel.SAMPLE] == "true"


def test_another_task_or_metric_never_competes_with_this_ones_figure(client, tmp_path):
    name = "shared"
    v1, _ = export(client, tmp_path, name, 0.30, data="real")
    v2, c = export(client, tmp_path, name, 0.05, data="real", task="multilabel")  # not comparable
    assert c == v2  # the newest real data set's group: its own best
    v3, c = export(client, tmp_path, name, 0.25, data="real")
    assert c == v3  # the statefarm group again: 0.25 beats 0.30; 0.05 (multilabel) is not ranked


def test_two_exports_at_once_leave_the_alias_on_the_best(client, tmp_path, monkeypatch):
    """Export A lists the versions before export B registers a better one, and sets its stale
    choice after B has set its own: A's read-back puts the alias back on B's."""
    name = "race"
    export(client, tmp_path, name, 0.30)  # the registered model exists
    a_listed, b_done = threading.Event(), threading.Event()
    real_set = MlflowClient.set_registered_model_alias

    def set_alias(self, model, alias, version):
        if threading.current_thread().name == "A" and not b_done.is_set():
            a_listed.set()      # A chose before B registered ...
            b_done.wait(60)     # ... and sets after B finished
        return real_set(self, model, alias, version)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", set_alias)
    results = {}

    def a():
        results["A"] = export(client, tmp_path / "a", name, 0.20)

    def b():
        a_listed.wait(60)
        results["B"] = export(client, tmp_path / "b", name, 0.10)
        b_done.set()

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    threads = [threading.Thread(target=a, name="A"), threading.Thread(target=b, name="B")]
    [t.start() for t in threads]
    [t.join(120) for t in threads]
    assert champion(client, name) == results["B"][0] == results["A"][1]
