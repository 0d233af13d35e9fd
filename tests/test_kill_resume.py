"""Kill anywhere, resume: `dvc repro` is SIGKILLed (its whole process group, as a crash or
an out-of-memory kill would end it) at six points in one pipeline run, and rerun each time.
The run that finally completes matches an uninterrupted one exactly (on the CPU), finished
folds are never trained again, a killed fold continues from its last finished epoch, and
MLflow holds one parent with exactly one finished child per fold; the killed attempts'
runs are marked KILLED, none is left RUNNING."""
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time

import pytest
from conftest import REFERENCE_FOLDS as FOLDS
from conftest import make_project, project_env, reap_orphans, reference_params, sh

PR_SET_CHILD_SUBREAPER = 36


def repro_until(dst, trigger, delay=0.0, timeout=600):
    """Run `dvc repro`; when `trigger(output)` holds, wait `delay` s and SIGKILL the whole
    process group. Returns (output, killed)."""
    ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1)
    env = project_env()
    proc = subprocess.Popen([shutil.which("dvc", path=env["PATH"]), "repro"], cwd=dst, env=env,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        if trigger("".join(lines)):
            time.sleep(delay)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            reader.join(5)
            time.sleep(0.2)
            reap_orphans()
            return "".join(lines), True
        time.sleep(0.005)
    proc.wait()
    reader.join(5)
    return "".join(lines), False


def resume_file(dst, fold):
    return any((dst / ".foldwise" / "resume").glob(f"*-fold{fold}.pt"))


def tmp_beside(dst, out):
    """A writer's temporary of `out` exists (an atomic write is under way)."""
    out = dst / out
    return out.parent.is_dir() and any(out.parent.glob(f".{out.name}.*.tmp"))


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory, reference_project):
    dst = make_project(tmp_path_factory.mktemp("kill") / "project", reference_params)
    points = [
        ("during preprocess", lambda out: tmp_beside(dst, "data/processed"), 0.0),
        ("mid-epoch in fold 0", lambda out: resume_file(dst, 0), 0.15),
        ("between epochs of fold 1", lambda out: resume_file(dst, 1), 0.0),
        ("during fold 2's checkpoint write", lambda out: tmp_beside(dst, "models/fold_2"), 0.0),
        ("during evaluate", lambda out: "Running stage 'evaluate'" in out, 1.5),
        ("during export", lambda out: tmp_beside(dst, "export/model"), 0.0),
    ]
    attempts = []
    for name, trigger, delay in points:
        out, killed = repro_until(dst, trigger, delay)
        assert killed, f"the pipeline finished before the kill point '{name}':\n{out[-3000:]}"
        attempts.append((name, out))
    final = sh("dvc repro", dst).stdout + "\n"
    attempts.append(("final", final))
    return dst, reference_project, attempts


def test_the_resumed_run_ends_exactly_as_an_uninterrupted_one(killed_and_resumed):
    dst, reference, _ = killed_and_resumed

    def metrics(d):
        m = json.loads((d / "metrics/metrics.json").read_text())
        for fold in m["folds"].values():
            fold.pop("train_images_per_s")
        return m
    assert metrics(dst) == metrics(reference)
    for path in ("export/submission.csv", "data/bagged/oof.csv", "data/bagged/test.csv"):
        assert (dst / path).read_bytes() == (reference / path).read_bytes(), path
    assert "Running stage" not in sh("dvc repro", dst).stdout


def test_finished_folds_are_never_trained_again(killed_and_resumed):
    _, _, attempts = killed_and_resumed
    finished = set()
    for name, out in attempts:
        for fold in range(FOLDS):
            if fold in finished:
                assert f"Running stage 'train@{fold}'" not in out, (name, fold)
        finished |= {int(k) for k in re.findall(r"fold (\d): best epoch", out)}
    assert finished == set(range(FOLDS))


def test_a_killed_fold_continues_from_its_last_finished_epoch(killed_and_resumed):
    _, _, attempts = killed_and_resumed
    after_mid_epoch = attempts[2][1]  # the attempt after the kill mid-epoch in fold 0
    assert re.search(r"resumed from \S+-fold0\.pt after epoch 0", after_mid_epoch), after_mid_epoch[-3000:]
    fold_0 = [line for line in after_mid_epoch.split("Running stage 'train@1'")[0].splitlines()
              if line.startswith("fold 0  epoch ")]
    # epoch 1 of 3 was trained before the kill: shown again, marked, not trained again
    assert [line.endswith("(resumed)") for line in fold_0] == [True, False, False], fold_0
    after_between = attempts[3][1]
    assert re.search(r"resumed from \S+-fold1\.pt after epoch \d", after_between)


def test_mlflow_holds_one_finished_child_per_fold_and_nothing_left_running(killed_and_resumed):
    import mlflow
    from mlflow.tracking import MlflowClient
    dst, _, _ = killed_and_resumed
    mlflow.set_tracking_uri(f"sqlite:///{dst / 'mlflow.db'}")
    client = MlflowClient()
    exp = client.get_experiment_by_name("foldwise")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("foldwise.role") == "parent"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    finished = sorted(r.data.tags["foldwise.fold"] for r in children if r.info.status == "FINISHED")
    assert finished == [str(k) for k in range(FOLDS)]
    assert not [r for r in runs if r.info.status == "RUNNING"]
    killed = [r for r in children if r.info.status == "KILLED"]
    assert killed, "the killed attempts' runs should be marked KILLED"
    resumers = [r for r in children if r.data.tags.get("foldwise.resumes")]
    assert {k.info.run_id for k in killed} <= {i for r in resumers
                                                for i in r.data.tags["foldwise.resumes"].split(",")}
