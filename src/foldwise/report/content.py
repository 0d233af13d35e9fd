"""What a report says, gathered from an experiment's files (`read.Files`) into one typed
object; nothing here formats."""
from __future__ import annotations

from dataclasses import dataclass, field

from foldwise.params import flatten
from foldwise.tasks import Task, create_task
from foldwise.report.read import Files, Revision

# tables and figures evaluate and the later stages write (their absence: a stage that was off)
METRICS, BASELINE, EXPORT = "metrics/metrics.json", "metrics/baseline.json", "export/checks.json"


@dataclass(frozen=True)
class Change:
    key: str
    before: object  # None: not in the baseline
    after: object


@dataclass
class Experiment:
    revision: Revision
    params: dict  # flat: "train.epochs" -> 8
    changes: list[Change]  # against the baseline's params.yaml
    metrics: dict  # metrics/metrics.json: oof, spread, folds
    baseline: dict  # metrics/baseline.json: image counts, the trivial figures
    meta: dict  # data/processed/meta.json: the task as preprocess recorded it
    task: Task  # the task kind's object (tasks.create_task): its monitor, baselines, outputs
    checks: dict | None  # export/checks.json
    lineage: dict | None  # metrics/mlflow.json
    neighbours: dict | None  # metrics/neighbours.json where neighbours.k > 0
    stack: dict | None  # metrics/stack.json where stack.model is set
    tables: dict = field(default_factory=dict)  # confusion, calibration, hardest, breakdown
    images: dict = field(default_factory=dict)  # name -> PNG bytes: fold_curves, hardest

    @property
    def monitor(self) -> str:
        return self.task.monitor


def changes(params: dict, baseline: dict | None) -> list[Change]:
    """The keys whose value differs from the baseline's (all of them where there is none)."""
    now, before = flatten(params), flatten(baseline or {})
    return [Change(k, before.get(k), now.get(k)) for k in sorted(set(now) | set(before))
            if now.get(k) != before.get(k)]


def gather(files: Files, baseline_params: dict | None) -> Experiment:
    """Everything the report shows, or an error naming the first missing result."""
    from foldwise.errors import InputError
    params = files.params()
    metrics = files.json(METRICS)
    if metrics is None:
        locked = METRICS in (files.data("dvc.lock") or b"").decode()
        raise InputError(f"{files.root}: no {METRICS} at {files.revision.name}: " + (
            "its dvc.lock lists it but DVC's cache does not hold it (`dvc pull`, or `dvc exp "
            "pull REMOTE EXP`)" if locked and files.revision.commit else
            "the evaluate stage has not run there (`dvc repro`, or `dvc exp run`)"))
    meta = files.json("data/processed/meta.json")
    if meta is None:
        raise InputError(f"{files.root}: no data/processed/meta.json at {files.revision.name}")
    near, stacked = files.json("metrics/neighbours.json"), files.json("metrics/stack.json")
    exp = Experiment(files.revision, flatten(params), changes(params, baseline_params), metrics,
                     files.json(BASELINE) or {}, meta, create_task(meta),
                     files.json(EXPORT), files.json("metrics/mlflow.json"),
                     near if near and near.get("k") else None,
                     stacked if stacked and stacked.get("model") else None)
    for name in ("confusion", "calibration", "hardest", "breakdown"):
        table = files.table(f"metrics/{name}.csv")
        if table is not None and len(table):
            exp.tables[name] = table
    for name in ("fold_curves", "hardest"):
        png = files.data(f"metrics/{name}.png")
        if png:
            exp.images[name] = png
    return exp
