import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from foldwise import params as P

ROOT = Path(__file__).resolve().parents[1]

# `make test` runs two pytest-xdist workers: each gets its share of the cores for torch (set
# before any test module imports it), so the two never fight over threads and what one spends
# single-threaded (interpreters starting, imports, DVC) the other spends training
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // int(
        os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))))

# markers by module (pyproject.toml describes them); single tests carry their own
E2E = {"test_pipeline", "test_tasks_pipeline", "test_kill_resume", "test_parallel_folds",
       "test_concurrent_experiments", "test_distributed", "test_search"}
EXTENDED = {"test_tracking_server", "test_workers", "test_bench"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1]
        if module in E2E:
            item.add_marker(pytest.mark.e2e)
        if module in EXTENDED:
            item.add_marker(pytest.mark.extended)
        if item.get_closest_marker("gpu") and not os.environ.get("FOLDWISE_GPU_TESTS_ON_CPU"):
            import torch
            if not torch.cuda.is_available():
                item.add_marker(pytest.mark.skip(reason="needs a CUDA device (make gpu-check on a "
                                                        "lent GPU machine runs it)"))


@pytest.fixture(scope="session")
def statefarm_sample(tmp_path_factory):
    """A small synthetic State Farm set, written once per test session."""
    from foldwise.data.sources import statefarm

    root = tmp_path_factory.mktemp("statefarm") / "data"
    statefarm.write_sample(root, drivers=6, per_class=3, test_drivers=1, test_per_class=1, seed=1)
    return root


def project_env() -> dict:
    """The environment of a command in a project copy: this venv's tools first on PATH."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def sh(cmd, cwd, check=True):
    """Run a shell command with this venv's tools first on PATH; fail with its output."""
    res = subprocess.run(cmd, cwd=cwd, shell=True, env=project_env(), capture_output=True, text=True)
    if check and res.returncode != 0:
        raise AssertionError(f"{cmd} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


def reap_orphans():
    """Reap the killed processes this process adopted, as an init process would: the kill
    tests make it a child subreaper, and a zombie's PID still exists, so DVC (rightly) waits
    for a lock holder whose PID exists."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def kill_group(proc, timeout=30):
    """SIGKILL the process group `proc` leads (started with start_new_session), and wait until
    none of it is left, reaping what this process adopted."""
    import signal
    import time

    import psutil
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + timeout
    while time.time() < deadline:
        reap_orphans()
        left = []
        for pid in psutil.pids():
            try:
                if os.getpgid(pid) == proc.pid:
                    left.append(pid)
            except ProcessLookupError:
                pass
        if not left:
            return
        time.sleep(0.1)


def mlflow_runs(project_dir):
    """(client, every run) of a project's own MLflow store."""
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{project_dir / 'mlflow.db'}")
    client = MlflowClient()
    exp = client.get_experiment_by_name("foldwise")
    return client, client.search_runs([exp.experiment_id], max_results=1000)


def tiny_statefarm(params, folds: int, epochs: int) -> None:
    """Params of a State Farm project small enough for a test: 4 training drivers, 32x48 images,
    resnet10t (slower per image than the default test_resnet: the kill test's mid-epoch point
    needs an epoch that lasts longer than its delay)."""
    params["folds"] = list(range(folds))
    params["train"]["model"] = "resnet10t"
    params["sample"]["statefarm"].update(drivers=4, per_class=2, test_drivers=1, test_per_class=1)
    params["preprocess"].update(height=32, width=48)
    params["train"].update(epochs=epochs, batch_size=8, patience=epochs)


REFERENCE_FOLDS, REFERENCE_EPOCHS = 3, 3


def reference_params(params) -> None:
    """The params of the shared reference run: 3 folds of 3 epochs, 5 training drivers, 48x64."""
    tiny_statefarm(params, folds=REFERENCE_FOLDS, epochs=REFERENCE_EPOCHS)
    params["sample"]["statefarm"].update(drivers=5, test_per_class=2)
    params["preprocess"].update(height=48, width=64)


@pytest.fixture(scope="session")
def reference_project(tmp_path_factory) -> Path:
    """One uninterrupted `dvc repro` with reference_params, made once per session for the tests
    that compare a run made another way with it (killed and resumed, folds in parallel, the same
    params again). Read it only: a test that changes it changes the others' reference."""
    dst = make_project(tmp_path_factory.mktemp("reference") / "project", reference_params)
    sh("dvc repro", dst)
    return dst


def make_project(dst: Path, change_params=None, task: str | None = None) -> Path:
    """A git repository holding a copy of this project (code and config, no outputs), switched
    to `task` with the presets command, with `change_params(params)` applied and committed."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file() and not f.startswith(("data/", "models/", "metrics/", "export/")):
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dst / f)
    if task:
        sh(f"{sys.executable} -m foldwise.presets {task}", dst)
    if change_params:  # params.yaml's keys, and the sample's sizes from sample.yaml under "sample"
        P.change_files(dst, change_params)
    sh("git init -q && git add -A && git commit -qm project", dst)
    return dst


def start_queue(dst, jobs: int = 2) -> None:
    """`dvc queue start -j jobs`, its output to .dvc/tmp/queue-start.log: the workers it starts
    outlive it, and a worker holding the test's pipes (seen once: a worker that did not exit
    after its queue was done) would keep `sh` waiting for their end."""
    sh(f"dvc queue start -j {jobs} > .dvc/tmp/queue-start.log 2>&1", dst)


def wait_for_queue(dst, timeout=900) -> str:
    """Poll `dvc queue status` until nothing is queued or running; return the last status."""
    import time
    deadline = time.time() + timeout
    while True:
        status = sh("dvc queue status", dst).stdout
        if ("Queued" not in status and "Running" not in status) or time.time() > deadline:
            return status
        time.sleep(3)


def free_port() -> int:
    """A TCP port free on loopback now, for a server a test starts."""
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, proc, what: str, timeout: float = 120) -> None:
    """Poll `url` until it answers; fail the test, naming `what`, if `proc` exits first or
    `timeout` seconds pass."""
    import time
    import urllib.request
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"{what} exited ({proc.returncode})"
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"{what} did not answer on {url} within {timeout:g} s")
