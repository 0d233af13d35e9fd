"""A shared tracking server, for real: PostgreSQL from the distribution's packages and
`python -m foldwise.scale.server` (what `make mlflow-server` runs) on loopback, artifacts served by the
server. Two queued experiments of a tiny pipeline (the second up to evaluate), run at once (`dvc queue start -j 2`) in a
project that has run nothing yet, log to it through params.yaml's `mlflow.tracking_uri`: every
parent and fold run is there with its metrics and artifacts, the rows are in PostgreSQL, the
files in the server's artifact folder, and nothing is written to a store beside the project."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port, make_project, project_env, sh, start_queue, tiny_statefarm, wait_for_queue

FOLDS = 2
# srv-b stops at evaluate: its parent and folds are on the server as srv-a's; the exported
# model (srv-a's) is checked once
EXPERIMENTS = {"srv-a": "-S lr=0.001", "srv-b": "-S lr=0.003 -S seed=1 evaluate"}


def wait_for(url: str, proc, log: Path, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"{url} did not answer in {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def server():
    from foldwise.errors import InputError
    from foldwise.scale.server import pg_tool
    try:
        pg_tool("initdb")
    except InputError as err:
        pytest.skip(str(err))
    # not under pytest's private tmp folder: the cluster runs as the postgres user when root
    base = Path(tempfile.mkdtemp(prefix="foldwise-server-"))
    base.chmod(0o755)
    pg_port, port = free_port(), free_port()
    log = base / "server.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "foldwise.scale.server", "--pgdata", str(base / "pg"), "--pg-port", str(pg_port),
         "--port", str(port), "--artifacts-destination", str(base / "artifacts")],
        env=project_env(), stdout=log.open("w"), stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{uri}/health", proc, log)
        yield {"uri": uri, "base": base, "pg_port": pg_port, "proc": proc}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        stopped = not (base / "pg" / "postmaster.pid").exists()
        shutil.rmtree(base, ignore_errors=True)
        assert stopped, "the server's PostgreSQL cluster is still running after the server stopped"


@pytest.fixture(scope="module")
def pipeline(server, tmp_path_factory):
    def tiny(params):
        tiny_statefarm(params, FOLDS, 2)
        params["mlflow"]["tracking_uri"] = server["uri"]

    dst = make_project(tmp_path_factory.mktemp("served") / "project", tiny)
    for name, args in EXPERIMENTS.items():
        sh(f"dvc exp run --queue -n {name} {args}", dst)
    start_queue(dst, 2)
    return dst, wait_for_queue(dst)


def runs_of(uri: str):
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("foldwise")
    return client, client.search_runs([exp.experiment_id], max_results=1000)


def test_both_queued_experiments_succeed(pipeline):
    dst, status = pipeline
    assert status.count("Success") == len(EXPERIMENTS), status
    # nothing tracked beside the project: no SQLite store, no local artifact folders
    for local in ("mlflow.db", "mlruns", "mlartifacts"):
        assert not (dst / local).exists(), local


def test_every_parent_and_fold_run_is_on_the_server_with_metrics_and_artifacts(server, pipeline):
    dst, _ = pipeline
    client, runs = runs_of(server["uri"])
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    parents = [r for r in runs if r.data.tags.get("foldwise.role") == "parent"]
    named = sorted(p.data.tags.get("dvc.experiment", "workspace") for p in parents)
    assert named == sorted(EXPERIMENTS), named
    for parent in parents:
        assert parent.info.status == "FINISHED"
        assert 0 < parent.data.metrics["oof_logloss"] < 5
        assert "metrics.json" in [a.path for a in client.list_artifacts(parent.info.run_id)]
        folds = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert sorted(f.data.tags["foldwise.fold"] for f in folds) == [str(k) for k in range(FOLDS)]
        for f in folds:
            assert f.info.status == "FINISHED"
            assert f.info.artifact_uri.startswith("mlflow-artifacts:"), f.info.artifact_uri
            assert len(client.get_metric_history(f.info.run_id, "val_logloss")) == 2
            assert f.data.params["lr"] == parent.data.params["lr"]
            names = {a.path for a in client.list_artifacts(f.info.run_id)}
            assert {"model.pt", "history.csv", "learning_curve.png"} <= names, names
        # the bag, logged by export as the parent's MLflow model (srv-b stopped at evaluate)
        models = client.search_logged_models([parent.info.experiment_id],
                                             filter_string=f"source_run_id = '{parent.info.run_id}'")
        assert len(models) == (parent.data.tags["dvc.experiment"] == "srv-a")


def test_artifacts_travel_through_the_server_byte_for_byte(server, pipeline, tmp_path):
    """A fold's checkpoint downloaded through the server equals the workspace's, and the server
    keeps it in its --artifacts-destination folder."""
    import dvc.api
    import mlflow.artifacts

    from foldwise.ensemble.blend import experiment_revs
    dst, _ = pipeline
    rev = experiment_revs(dst)["srv-a"]  # the experiment's outputs, from DVC's cache
    run = json.loads(dvc.api.read("models/fold_0/run.json", repo=str(dst), rev=rev))
    got = mlflow.artifacts.download_artifacts(run_id=run["run_id"], artifact_path="model.pt",
                                              dst_path=str(tmp_path), tracking_uri=server["uri"])
    ours = dvc.api.read("models/fold_0/model.pt", repo=str(dst), rev=rev, mode="rb")
    assert Path(got).read_bytes() == ours
    stored = [p for p in (server["base"] / "artifacts").rglob("model.pt")]
    assert any(p.read_bytes() == ours and run["run_id"] in str(p) for p in stored)


def test_the_runs_are_rows_of_the_postgresql_backend(server, pipeline):
    import psycopg
    _, runs = runs_of(server["uri"])
    password = (server["base"] / "pg.password").read_text().strip()  # the owner's to read
    with psycopg.connect(host="127.0.0.1", port=server["pg_port"], user="foldwise",
                         password=password, dbname="mlflow") as db:
        counts = dict(db.execute("SELECT status, count(*) FROM runs WHERE lifecycle_stage = 'active' "
                                 "GROUP BY status").fetchall())
    assert counts == {"FINISHED": len(runs)}, counts
    # 2 parents with 2 folds each, and nothing else
    assert len(runs) == len(EXPERIMENTS) * (1 + FOLDS)


def test_a_folder_that_is_not_a_cluster_is_refused_by_name(tmp_path):
    from foldwise.errors import InputError
    from foldwise.scale.server import start_postgres
    (tmp_path / "notes.txt").write_text("not a database")
    with pytest.raises(InputError, match=f"{tmp_path}: not empty and not a PostgreSQL cluster"):
        start_postgres(tmp_path, free_port())
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]  # nothing written there


def test_a_database_that_cannot_be_reached_is_one_clear_error(tmp_path):
    """A wrong --backend-store-uri: the server exits; the message names the database."""
    port = free_port()
    res = subprocess.run([sys.executable, "-m", "foldwise.scale.server", "--backend-store-uri",
                          f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/mlflow", "--port", str(port),
                          "--artifacts-destination", str(tmp_path / "a")],
                         env=project_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert res.stderr.startswith("error: cannot reach the backend store postgresql+psycopg://nobody@"
                                 "127.0.0.1:"), res.stderr


def test_the_servers_own_cluster_asks_for_its_password(server):
    """The server's PostgreSQL trusts nobody: every rule of pg_hba.conf asks for SCRAM, a
    client without the password is refused, and the password lies beside the cluster, readable
    by its owner only."""
    from foldwise.scale.server import pg_tool
    rules = [line.split() for line in (server["base"] / "pg" / "pg_hba.conf").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert rules and all(rule[-1] == "scram-sha-256" for rule in rules), rules
    env = {k: v for k, v in os.environ.items() if k != "PGPASSWORD"}
    res = subprocess.run([pg_tool("psql"), "-h", "127.0.0.1", "-p", str(server["pg_port"]), "-U",
                          "foldwise", "-d", "mlflow", "-w", "-c", "select 1"], env=env,
                         capture_output=True, text=True, timeout=30)
    assert res.returncode != 0 and "password" in res.stderr, res.stderr
    assert (server["base"] / "pg.password").stat().st_mode & 0o077 == 0


def test_a_search_study_lives_in_the_servers_own_cluster(server):
    """foldwise-search's storage beside the server: a database of its own in the same cluster
    (Optuna's tables and MLflow's share names), reached with the cluster's password."""
    import optuna
    import psycopg
    from foldwise.scale.server import search_storage
    url = search_storage(server["base"] / "pg")
    assert url == f"postgresql+psycopg://foldwise@127.0.0.1:{server['pg_port']}/foldwise_search"
    study = optuna.create_study(study_name="t", storage=url)
    study.tell(study.ask(), 0.5)
    password = (server["base"] / "pg.password").read_text().strip()
    with psycopg.connect(host="127.0.0.1", port=server["pg_port"], user="foldwise",
                         password=password, dbname="foldwise_search") as db:
        assert db.execute("SELECT count(*) FROM trials").fetchone()[0] == 1
    assert search_storage(server["base"] / "no-cluster") is None
