"""`foldwise-blend`: finished experiments combined with weights fit on their out-of-fold
predictions, scored honestly, written as one submission.

Each member is a DVC experiment (by name, as `dvc exp show` lists it) or a folder holding a bag's
`oof.csv` and `test.csv` (the bag stage's output, e.g. `data/bagged` of the workspace). The
weights are non-negative and sum to 1; the blend is arithmetic (p = sum w_i p_i) or geometric
(p proportional to prod p_i^w_i, probabilities only). With --per-class each class has its own
weights (State Farm's 1st place chose members per class): p_c proportional to sum w_ic p_ic,
each class's weights non-negative and summing to 1. Fitting weights on the rows they are scored
on flatters the blend, so the reported figure is cross-validated over the folds of the OOF table:
each fold's rows are blended with weights (and, with --temperature, a temperature) fit on the
other folds only. The submission uses the weights fit on all rows.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import NamedTuple
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from foldwise import params as P, stage
from foldwise.ensemble import calibration
from foldwise.ensemble.bag import MEANS, average
from foldwise.data.cache import load_truth, read_meta
from foldwise.errors import InputError
from foldwise.files import atomic_dir, write_csv, write_json
from foldwise.data.sources import get_source
from foldwise.tasks import Task, create_task

BAGGED = "data/bagged"  # where an experiment's bag output lives


@dataclass
class Member:
    name: str
    oof: pd.DataFrame  # id, fold, [group], one column per output
    test: pd.DataFrame  # id, one column per output


def _read_tables(name: str, read) -> Member:
    try:
        tables = [pd.read_csv(io.StringIO(read(f)), dtype={"id": str, "group": str})
                  for f in ("oof.csv", "test.csv")]
    except FileNotFoundError as err:
        raise InputError(f"{name}: no bag output ({err}); did the experiment finish?") from None
    return Member(name, *tables)


def from_folder(path: str | Path) -> Member:
    folder = Path(path)
    return _read_tables(str(path), lambda f: (folder / f).read_text())


def experiment_revs(repo: str | Path = ".") -> dict:
    """DVC experiment names of the workspace's repository and the commit of each."""
    import dvc.api
    rows = dvc.api.exp_show(repo=str(repo), num=1)
    return {r["Experiment"]: r["rev"] for r in rows if r.get("Experiment")}


def from_experiment(name: str, rev: str, repo: str | Path = ".") -> Member:
    """The bag output of a finished experiment, from the local DVC cache."""
    import dvc.api
    return _read_tables(name, lambda f: dvc.api.read(f"{BAGGED}/{f}", repo=str(repo), rev=rev))


def resolve(sources, repo: str | Path = ".") -> list[Member]:
    """Folders as they are; other names looked up among the repository's DVC experiments."""
    members, revs = [], None
    for src in sources:
        if Path(src).is_dir():
            members.append(from_folder(src))
            continue
        revs = experiment_revs(repo) if revs is None else revs
        if src not in revs:
            raise InputError(f"{src!r} is neither a folder nor a DVC experiment of {repo} "
                             f"(experiments: {', '.join(sorted(revs)) or 'none'})")
        members.append(from_experiment(src, revs[src], repo))
    if len(members) < 2:
        raise InputError("a blend needs at least two members")
    return members


class Aligned(NamedTuple):
    stack: np.ndarray  # the members' OOF predictions (members, rows, outputs), training order
    test_stack: np.ndarray  # their test predictions (members, rows, outputs), test_ids' order
    folds: np.ndarray  # each training row's fold, from the first member's table
    test_ids: pd.Series


def align(members: list[Member], ids, columns) -> Aligned:
    """The members' predictions stacked row for row; members must cover the same images."""
    order = pd.Index(ids)
    oofs, tests = [], []
    test_ids = members[0].test["id"]
    for m in members:
        missing = [c for c in columns if c not in m.oof.columns or c not in m.test.columns]
        if missing:
            raise InputError(f"{m.name}: no prediction column {missing[0]!r}: another task or classes?")
        table = m.oof.set_index("id")
        if len(table) != len(order) or not order.isin(table.index).all():
            raise InputError(f"{m.name}: its out-of-fold table lists other training images "
                             f"({len(table)} rows, {len(order)} expected): another data set?")
        oofs.append(table.loc[order, columns].to_numpy(np.float64))
        test = m.test.set_index("id")
        if len(test) != len(test_ids) or not test_ids.isin(test.index).all():
            raise InputError(f"{m.name}: its test predictions list other images than {members[0].name}'s")
        tests.append(test.loc[test_ids, columns].to_numpy(np.float64))
    folds = members[0].oof.set_index("id").loc[order, "fold"].to_numpy()
    return Aligned(np.stack(oofs), np.stack(tests), folds, test_ids.reset_index(drop=True))


def fit_weights(stack: np.ndarray, truth: np.ndarray, loss, mean: str) -> np.ndarray:
    """Non-negative weights summing to 1 that minimise `loss(truth, blend)` (SLSQP from equal
    weights)."""
    n = stack.shape[0]
    res = minimize(lambda w: loss(truth, average(stack, mean, np.clip(w, 0, None))), np.full(n, 1.0 / n),
                   method="SLSQP", bounds=[(0.0, 1.0)] * n,
                   constraints=({"type": "eq", "fun": lambda w: w.sum() - 1.0},),
                   options={"ftol": 1e-10, "maxiter": 200})
    w = np.clip(res.x, 0.0, None)
    return w / w.sum()


def fit_class_weights(stack: np.ndarray, truth: np.ndarray, loss) -> np.ndarray:
    """(members, classes) weights, each class's non-negative and summing to 1 (a softmax over
    the members of free parameters, L-BFGS from equal weights), minimising `loss(truth, blend)`."""
    m, _, c = stack.shape
    res = minimize(lambda z: loss(truth, class_average(stack, _softmax(z.reshape(m, c)))),
                   np.zeros(m * c), method="L-BFGS-B", options={"maxiter": 500})
    return _softmax(res.x.reshape(m, c))


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


def class_average(stack: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Members' probabilities (members, rows, classes) weighted per class, rows renormalised."""
    p = np.einsum("mrc,mc->rc", stack, w)
    return p / p.sum(axis=1, keepdims=True)


def combiner(mean: str, per_class: bool, loss):
    """(fit(stack, truth) -> weights, apply(stack, weights) -> blend) for the blend asked for."""
    if per_class:
        return (lambda s, y: fit_class_weights(s, y, loss)), class_average
    return (lambda s, y: fit_weights(s, y, loss, mean)), (lambda s, w: average(s, mean, w))


def cross_validated(stack, truth, folds, fit, apply, temperature: bool) -> tuple[np.ndarray, dict]:
    """Each fold's rows blended with weights (and a temperature) fit on the other folds' rows."""
    out = np.empty(stack.shape[1:], dtype=np.float64)
    per_fold = {}
    for k in np.unique(folds):
        rows = folds == k
        w = fit(stack[:, ~rows], truth[~rows])
        out[rows] = apply(stack[:, rows], w)
        t = calibration.fit(apply(stack[:, ~rows], w), truth[~rows]) if temperature else 1.0
        if temperature:
            out[rows] = calibration.temper(out[rows], t)
        per_fold[str(k.item())] = {"weights": w.round(4).tolist(), "temperature": round(t, 4)}
    return out, per_fold


@dataclass(frozen=True)
class Blending:
    """How the members blend: the mean, a temperature fit with the weights, a weight per class."""
    mean: str = "arithmetic"
    temperature: bool = False
    per_class: bool = False


@dataclass(frozen=True)
class Blended:
    """Everything `foldwise-blend` reports and writes."""
    summary: dict  # blend.json: each member's OOF score, the equal-weight and fitted blends'
    # scores (in-sample and cross-validated), the weights (per class: a list per member)
    task: Task
    oof: np.ndarray  # the blended OOF predictions, in training order
    test: np.ndarray  # the blended test predictions, in test_ids' order
    test_ids: pd.Series
    folds: np.ndarray  # each training row's validation fold


def blend(members, truth, meta, ids, how: Blending = Blending()) -> Blended:
    """The members' OOF predictions blended with weights fit against `truth`, scored in-sample
    and cross-validated over the folds, and the same weights applied to their test predictions."""
    mean, temperature, per_class = how.mean, how.temperature, how.per_class
    task = create_task(meta)
    if not task.probabilities and (mean != "arithmetic" or temperature or per_class):
        raise InputError(f"{type(task).__name__}: predictions blend arithmetically, with one "
                         "weight per member and without a temperature")
    if per_class and mean != "arithmetic":
        raise InputError("--per-class weights blend arithmetically (--mean arithmetic)")
    stack, test_stack, folds, test_ids = align(members, ids, task.columns)

    def loss(y, p):
        return task.score(y, p)[task.monitor]

    fit, apply = combiner(mean, per_class, loss)
    weights = fit(stack, truth)
    oof, test = apply(stack, weights), apply(test_stack, weights)
    t = calibration.fit(oof, truth) if temperature else 1.0
    if temperature:
        oof, test = calibration.temper(oof, t), calibration.temper(test, t)
    cv_preds, per_fold = cross_validated(stack, truth, folds, fit, apply, temperature)
    cv, _ = task.report(truth, cv_preds, folds)
    scores = {m.name: task.score(truth, s) for m, s in zip(members, stack)}
    summary = {
        "monitor": task.monitor, "mean": mean, "per_class": per_class,
        "members": [m.name for m in members],
        "weights": dict(zip([m.name for m in members], weights.round(6).tolist())),
        "temperature": t, "member_scores": scores,
        "equal_weights": task.score(truth, average(stack, mean)),
        "fitted_in_sample": task.score(truth, oof),
        "cross_validated": {k: v for k, v in cv.items() if k not in task.baselines},
        "folds": per_fold,
    }
    return Blended(summary, task, oof, test, test_ids, folds)


def write(result: Blended, ids, meta, root: str, out_dir) -> None:
    """OUT/{blend.json, oof.csv, test.csv, submission.csv}, replaced whole."""
    task, summary = result.task, result.summary
    decision = task.decision(summary["cross_validated"])  # as fit on the OOF predictions
    oof = pd.DataFrame(result.oof, columns=task.columns)
    oof.insert(0, "fold", result.folds)
    oof.insert(0, "id", list(ids))
    test = pd.DataFrame(result.test, columns=task.columns)
    test.insert(0, "id", result.test_ids.to_numpy())
    with atomic_dir(out_dir) as tmp:
        write_json({**summary, **decision}, tmp / "blend.json")
        write_csv(oof, tmp / "oof.csv", float_format="%.8g")
        write_csv(test, tmp / "test.csv", float_format="%.8g")
        get_source(meta["source"]).write_submission(result.test_ids, task.postprocess(result.test, decision),
                                                    {**meta, "root": root}, tmp / "submission.csv")


def log_to_mlflow(summary: dict, out_dir: Path) -> str:
    """A run of its own in the project's experiment: members and weights as params, the
    scores as metrics, blend.json and the submission as artifacts."""
    import mlflow
    from foldwise import tracking
    experiment = tracking.open_experiment(P.load().mlflow)
    name = "blend " + " + ".join(summary["members"])
    with mlflow.start_run(experiment_id=experiment, run_name=name[:250],
                          tags={"foldwise.role": "blend", **tracking.source_tags()}) as run:
        mlflow.log_params({"mean": summary["mean"], "temperature": summary["temperature"] != 1.0,
                           "per_class": summary["per_class"],
                           **{f"weight {k}"[:250]: v for k, v in summary["weights"].items()}})
        mlflow.log_metrics({**{f"cv_{k}": v for k, v in P.flatten(summary["cross_validated"]).items()},
                            **{f"in_sample_{k}": v for k, v in summary["fitted_in_sample"].items()},
                            **{f"equal_{k}": v for k, v in summary["equal_weights"].items()}})
        for f in ("blend.json", "submission.csv"):
            mlflow.log_artifact(str(out_dir / f))
        return run.info.run_id


def report_lines(summary: dict) -> list[str]:
    m = summary["monitor"]
    lines = [f"{'member':<32} {'weight':>7} {'OOF ' + m:>12}"]
    for name, score in summary["member_scores"].items():
        w = np.mean(summary["weights"][name])  # per class: their mean
        lines.append(f"{name:<32} {w:>7.3f} {score[m]:>12.5f}")
    lines.append(f"{'equal weights':<32} {'':>7} {summary['equal_weights'][m]:>12.5f}")
    lines.append(f"{'fitted, scored in-sample':<32} {'':>7} {summary['fitted_in_sample'][m]:>12.5f}")
    lines.append(f"{'fitted, cross-validated':<32} {'':>7} {summary['cross_validated'][m]:>12.5f}")
    if summary["temperature"] != 1.0:
        lines.append(f"temperature {summary['temperature']:.4f} (cross-fitted with the weights)")
    return lines


def main() -> None:
    parser = stage.parser(__doc__)
    parser.add_argument("members", nargs="+",
                        help="DVC experiment names or folders with oof.csv and test.csv (two or more)")
    parser.add_argument("--mean", choices=MEANS, default="arithmetic", help="how to blend (default arithmetic)")
    parser.add_argument("--temperature", action="store_true",
                        help="fit a temperature on the blend (cross-fitted like the weights)")
    parser.add_argument("--per-class", action="store_true",
                        help="a weight per member and class (classes; arithmetic)")
    parser.add_argument("--processed", default="data/processed",
                        help="the preprocess cache with the labels and meta.json (default data/processed)")
    parser.add_argument("--root", help="the data set's folder for the submission (default params.yaml data.root)")
    parser.add_argument("--out", default="export/blend", help="output folder (default export/blend)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log the blend as an MLflow run")
    args = parser.parse_args()

    def run():
        processed = Path(args.processed)
        meta = read_meta(processed)
        ids = pd.read_csv(processed / "train.csv", dtype={"id": str})["id"]
        result = blend(resolve(args.members), load_truth(processed), meta, ids,
                       Blending(args.mean, args.temperature, args.per_class))
        write(result, ids, meta, args.root or P.load().data.root, Path(args.out))
        print("\n".join(report_lines(result.summary)))
        print(f"wrote {args.out}/submission.csv, blend.json, oof.csv, test.csv")
        if not args.no_mlflow:
            print(f"MLflow run {log_to_mlflow(result.summary, Path(args.out))}")

    stage.run(run)


if __name__ == "__main__":
    main()
