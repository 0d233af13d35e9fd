"""`python -m foldwise.scale.workers`: each fold trained where a GPU is free, as a Ray task, and brought
back through DVC itself.

The coordinating checkout (this one, at a committed state) builds the stages upstream of the
folds and `dvc push`es them to the project's default DVC remote. Each fold is a Ray task asking
for `--gpus` GPUs: in a checkout of its own (a `git clone` of `--repo` at this commit plus the
coordinator's `dvc.lock`, in a temporary folder of the node that runs it) it `dvc pull`s the
upstream outputs, runs `dvc repro --single-item` of `train@k` and `pseudo@k` and `dvc push --run-cache`. The
coordinator then `dvc pull --run-cache`s and runs `dvc repro --pull`, which restores every fold
from DVC's run-cache (pulling its outputs) instead of training it, and goes on with bag,
evaluate, neighbours and export.

Nothing here schedules: Ray places the tasks (`--address` names a running cluster, e.g.
`ray://head:10001`; without it a local one is started), DVC moves the files. The folds' MLflow
runs go to the tracking store the coordinator uses (`MLFLOW_TRACKING_URI`, else params.yaml's
`mlflow.tracking_uri`), which across machines must be a tracking server (`make mlflow-server`).
"""
from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from foldwise import params as P, tracking
from foldwise.errors import InputError
from foldwise.scale.parallel import UPSTREAM, dvc as dvc_command


def dvc(*args: str, cwd, env=None) -> str:
    """A DVC command through this interpreter; its output, or an InputError with its tail."""
    res = subprocess.run(dvc_command(*args), cwd=cwd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise InputError(f"dvc {' '.join(args)} failed in {cwd}:\n{(res.stdout + res.stderr)[-3000:]}")
    return res.stdout


def git(*args: str, cwd) -> str:
    res = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if res.returncode != 0:
        raise InputError(f"git {' '.join(args)} failed in {cwd}: {res.stderr.strip()}")
    return res.stdout.strip()


def train_fold(repo: str, commit: str, lock: str, fold: int, env: dict) -> dict:
    """One fold in a fresh checkout of `repo` at `commit` with the coordinator's `dvc.lock`
    (which records the upstream outputs it pushed): pull them, train, push the fold's outputs
    and its run-cache entry. Runs on whichever node Ray chose."""
    with tempfile.TemporaryDirectory(prefix=f"foldwise-fold{fold}-") as tmp:
        work = Path(tmp) / "checkout"
        subprocess.run(["git", "clone", "-q", repo, str(work)], check=True)
        git("checkout", "-q", commit, cwd=work)
        (work / "dvc.lock").write_text(lock)
        child = {**os.environ, **env}
        dvc("pull", *UPSTREAM, cwd=work, env=child)
        out = dvc("repro", "--single-item", f"train@{fold}", cwd=work, env=child)
        dvc("repro", "--single-item", f"pseudo@{fold}", cwd=work, env=child)  # its further rounds
        dvc("push", "--run-cache", f"train@{fold}", f"pseudo@{fold}", cwd=work, env=child)
        return {"fold": fold, "node": os.uname().nodename,
                "trained": f"Running stage 'train@{fold}'" in out, "log": out[-1500:]}


def check_store_for_workers(uri: str, address: str | None) -> None:
    """Workers on a Ray cluster elsewhere (`--address`) log their folds to the coordinator's
    tracking URI: a SQLite file there is one they cannot reach."""
    if address and uri.startswith("sqlite:"):
        raise InputError(f"--address {address}: workers on other machines cannot log to {uri}, a "
                         "file on this one; run a tracking server (make mlflow-server) and set "
                         "mlflow.tracking_uri (or MLFLOW_TRACKING_URI) to its http:// address")


def coordinate(repo: str, gpus: float, address: str | None) -> list[dict]:
    """Upstream built and pushed here, one Ray task per fold, then the rest of the DAG here."""
    import ray
    if git("status", "--porcelain", "--untracked-files=no", cwd=".") != "":
        raise InputError("the checkout has uncommitted changes: workers clone a commit; commit first")
    commit = git("rev-parse", "HEAD", cwd=".")
    params = P.load()
    check_store_for_workers(tracking.tracking_uri(params.mlflow), address)
    dvc("repro", *UPSTREAM, cwd=".")
    dvc("push", *UPSTREAM, cwd=".")
    # the folds join this checkout's MLflow store and experiment, and their parent run: created
    # here, once, since workers on other machines share no lock to create it under
    experiment = tracking.open_experiment(params.mlflow)
    key = tracking.pipeline_key(params, "data/folds.csv", "data/processed/meta.json")
    tracking.parent_for_fold(experiment, key, params.folds[0], params)
    env = {"MLFLOW_TRACKING_URI": tracking.tracking_uri(params.mlflow)}
    ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        task = ray.remote(num_gpus=gpus)(train_fold)
        lock = Path("dvc.lock").read_text()
        results = ray.get([task.remote(repo, commit, lock, k, env) for k in params.folds])
    finally:
        ray.shutdown()
    dvc("pull", "--run-cache", *UPSTREAM, cwd=".")  # the workers' run-cache entries
    out = dvc("repro", "--pull", cwd=".")  # folds restored from them, outputs pulled
    retrained = [f"{stage}@{k}" for k in params.folds for stage in ("train", "pseudo")
                 if f"Running stage '{stage}@{k}'" in out]
    if retrained:
        raise InputError(f"dvc repro ran {', '.join(retrained)} again: the workers' run-cache did "
                         "not arrive")
    return results


def main() -> None:
    from foldwise import stage
    parser = stage.parser(__doc__)
    parser.add_argument("--repo", default=".",
                        help="git URL (or path) the workers clone; default: this checkout's folder")
    parser.add_argument("--gpus", type=float, default=1.0, help="GPUs each fold task asks Ray for (default 1)")
    parser.add_argument("--address", help="a running Ray cluster (default: start a local one)")
    args = parser.parse_args()

    def go():
        repo = args.repo if args.repo != "." else str(Path.cwd())
        for r in coordinate(repo, args.gpus, args.address):
            print(f"train@{r['fold']}: {'trained' if r['trained'] else 'restored'} on {r['node']}")
        print("every fold came back through DVC's run-cache; bag, evaluate, neighbours, export done")

    stage.run(go)


if __name__ == "__main__":
    main()
