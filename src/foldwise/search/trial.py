"""One trial in a worker's checkout: its params set, its first fold trained (`dvc repro
train@K`) and scored for the pruner, then, unless pruned, the whole pipeline as a DVC
experiment (`dvc exp run -n NAME`), which restores that fold from DVC's run-cache.

Every DVC command of a trial runs with the trial's DVC experiment name (so its folds meet one
MLflow parent, also across a kill and retry) and the study's run and trial number (so that
parent is the study run's child). Its output goes to `.foldwise/search/logs/NAME.log`.

A retried trial whose experiment finished before the kill reached the study adopts that
experiment's results, and only when its params.yaml is the trial's, key for key: any other
experiment of that name is refused, naming the keys that differ.
"""
from __future__ import annotations

import ctypes
import json
import signal
import subprocess
from typing import Any
from dataclasses import dataclass
from pathlib import Path

from foldwise import params as P
from foldwise import tracking
from foldwise.errors import InputError
from foldwise.scale.parallel import dvc
import yaml

from foldwise.search.checkouts import Checkout, experiments
from foldwise.search.study import experiment_name
from foldwise.train import outputs

CALIBRATED = "_calibrated"


@dataclass(frozen=True)
class Outcome:
    state: str               # "complete" | "pruned"
    value: float | None      # the objective of a complete trial, fold 0's of a pruned one


def run(checkout: Checkout, trial, search, study_run: str, root: Path) -> Outcome:
    """Run `trial` in `checkout`; raises (naming the log) when a DVC command fails."""
    name = trial.user_attrs.get("experiment") or experiment_name(trial.study, trial.number)
    trial.set_user_attr("experiment", name)
    checkout.set_params(search.changes(trial))
    env = checkout.env({"DVC_EXP_NAME": name, tracking.STUDY: search.study,
                        tracking.STUDY_RUN: study_run, tracking.TRIAL: str(trial.number)})
    log = root / ".foldwise" / "search" / "logs" / f"{name}.log"
    first = P.load(checkout.path / "params.yaml").folds[0]
    command(checkout.path, ["repro", f"train@{first}"], env, log)
    score = first_fold_score(checkout.path / "models", first, search.objective)
    if score is not None:
        trial.report(score, step=0)
        if trial.should_prune():
            return Outcome("pruned", score)
    if name not in experiments(root):
        until = [search.until] if search.until else []  # the stage's upstream, no more
        command(checkout.path, ["exp", "run", "-n", name, *until], env, log)
        command(checkout.path, ["exp", "push", "--no-cache", "origin", name], env, log)
    else:  # it finished before a kill reached the study: its results, not a second run
        adopt(checkout, name, env, log)
    return Outcome("complete", objective(checkout.path / "metrics" / "metrics.json",
                                         search.objective))


def adopt(checkout: Checkout, name: str, env: dict, log: Path) -> None:
    """The finished experiment `name` applied in `checkout`, whose params.yaml holds the
    trial's params; refused (a RuntimeError naming the keys) when the experiment's differ."""
    wanted = yaml.safe_load((checkout.path / "params.yaml").read_text())
    command(checkout.path, ["exp", "pull", "--no-cache", "origin", name], env, log)
    command(checkout.path, ["exp", "apply", name], env, log)
    found = yaml.safe_load((checkout.path / "params.yaml").read_text())
    differ = differences(wanted, found)
    if differ:
        raise RuntimeError(f"experiment {name} exists with other params than this trial's, so "
                           f"its results are not adopted: {'; '.join(differ[:5])} (log: {log})")


def differences(wanted, found, path: str = "") -> list[str]:
    """`key: trial's -> experiment's` for every dotted key whose values differ."""
    if isinstance(wanted, dict) and isinstance(found, dict):
        return [d for key in sorted(set(wanted) | set(found), key=str)
                for d in differences(wanted.get(key), found.get(key), f"{path}{key}.")]
    return [] if wanted == found else [f"{path.rstrip('.')}: trial {wanted!r}, experiment {found!r}"]


def first_fold_score(models: Path, fold: int, objective_name: str) -> float | None:
    """The fold's round 1 validation figure of the objective at its kept epoch, the one
    `dvc repro train@K` has just written (None where the fold does not record that figure:
    then the trial is not pruned). Never a pseudo-label folder: a checkout's last trial may
    have left one of its own round 1."""
    base = objective_name.removesuffix(CALIBRATED)
    value = outputs.read_run(models, fold, where=outputs.fold_dir).get(f"best_val_{base}")
    return None if value is None else float(value)


def objective(metrics_file: Path, name: str) -> float:
    """`name` from evaluate's out-of-fold figures, calibrated where calibration ran."""
    oof = json.loads(metrics_file.read_text())["oof"]
    calibrated = f"{name}{CALIBRATED}"
    if not name.endswith(CALIBRATED) and calibrated in oof:
        return float(oof[calibrated])
    if name in oof:
        return float(oof[name])
    known = ", ".join(k for k, v in oof.items() if isinstance(v, (int, float)))
    raise InputError(f"search.yaml: objective {name!r} is not among {metrics_file}'s oof "
                     f"figures ({known})")


_PRCTL: Any
try:  # resolved here, once: the forked child only makes the system call (threads may be running)
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
except (AttributeError, OSError):
    _PRCTL = None


def _die_with_parent() -> None:
    """A DVC command ends when the search that started it is killed (Linux: PR_SET_PDEATHSIG)."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)


def command(cwd: Path, args: list[str], env: dict, log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as out:
        out.write(f"$ dvc {' '.join(args)}\n")
        out.flush()
        res = subprocess.run(dvc(*args), cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                             preexec_fn=_die_with_parent)
    if res.returncode:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise RuntimeError(f"dvc {' '.join(args)} failed in {cwd} (log: {log}):\n{tail}")
