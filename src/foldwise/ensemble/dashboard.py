"""The pipeline's MLflow parent run as the folds' dashboard, and the lineage both ways.

Evaluate finishes the parent run with, besides the bagged figures: a description (MLflow's
run note, Markdown: task, data set and its digest, k, the OOF figures and the folds' mean and
spread, a table of the folds, the commit and the DVC experiment), the training table as a
dataset input, and one chart of every fold's validation curve (`fold_curves.png`). It writes
`metrics/mlflow.json` (the parent's run id, experiment id, store and the page's address in
`make mlflow-ui`), so the DVC side names the MLflow run as the run names the DVC experiment
(its `dvc.experiment` and git commit tags).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

UI = "http://127.0.0.1:5000"  # `make mlflow-ui`
# MLflow's UI (3.17 and 3.18 alike) opens every experiment in its GenAI view unless the page's
# address or the browser's storage asks for the model-training one: the experiment's own
# `mlflow.experimentKind` tag is not read while the view switch is on (mlflow#24498)
TRAINING_VIEW = "workflowType=machine_learning"


def data_digest(processed: Path) -> str:
    """The training table's digest, as the registry's `foldwise.data` tag has it."""
    return hashlib.sha256((Path(processed) / "train.csv").read_bytes()).hexdigest()[:16]


@dataclass(frozen=True)
class Figures:
    """What evaluate found: the monitored figure's name, the bagged OOF figures, each fold's
    own ({fold: {figure: value}}) and the folds' mean and spread (`folds_mean_<monitor>`...)."""
    monitor: str
    summary: dict
    per_fold: dict
    spread: dict


@dataclass(frozen=True)
class TrainingTable:
    """The training table as an MLflow dataset input: the rows, its name, where it came from
    (the data set's folder) and its digest (`data_digest`)."""
    frame: Any  # pandas.DataFrame
    name: str
    source: str
    digest: str


def description(params, figures: Figures, digest: str, commit: str) -> str:
    """The parent run's note, in Markdown."""
    monitor, summary, per_fold, spread = figures.monitor, figures.summary, figures.per_fold, figures.spread
    mean, std = spread.get(f"folds_mean_{monitor}"), spread.get(f"folds_std_{monitor}")
    others = ", ".join(f"{k} {v:.4f}" for k, v in summary.items()
                       if k != monitor and isinstance(v, (int, float)))
    columns = [c for c in (monitor, "accuracy", "best_epoch", "images")
               if any(c in f for f in per_fold.values())]
    lines = [f"**{params.data.source}** on `{params.data.root}` (training table "
             f"`{digest}`), {len(per_fold)} folds, `{params.train.model}`, lr {params.lr:g}.", "",
             f"Out-of-fold {monitor} **{summary[monitor]:.4f}**"
             + (f"; the folds {mean:.4f} ± {std:.4f}" if mean is not None else "")
             + (f"; {others}" if others else "") + ".", "",
             "| fold | " + " | ".join(columns) + " |", "|" + " --- |" * (len(columns) + 1)]
    for k, f in sorted(per_fold.items(), key=lambda kv: int(kv[0])):
        lines.append(f"| {k} | " + " | ".join(_cell(f.get(c)) for c in columns) + " |")
    exp = os.environ.get("DVC_EXP_NAME") or "the workspace (`dvc repro`)"
    lines += ["", f"Commit `{commit[:10] or 'unknown'}`, DVC experiment {exp}. Each fold is a "
              "child run; `fold_curves.png` draws their validation curves on one chart."]
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return ""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def fold_curves_png(histories: dict, monitor: str, path: Path) -> Path:
    """Every fold's validation curve (the monitored figure by epoch) on one chart."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    for k, history in sorted(histories.items()):
        ax.plot(history["epoch"], history["val_metric"], marker="o", markersize=3, label=f"fold {k}")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"validation {monitor}")
    ax.set_title(f"validation {monitor} of every fold")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def lineage(experiment_id: str, run_id: str, tracking_uri: str) -> dict:
    """metrics/mlflow.json: where the parent run is, and its page."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith("http") else UI
    return {"parent_run_id": run_id, "experiment_id": experiment_id, "tracking_uri": tracking_uri,
            "url": f"{base}/#/experiments/{experiment_id}/runs/{run_id}?{TRAINING_VIEW}"}


def publish(client, run_id: str, note: str, training: TrainingTable) -> None:
    """The note and the training table (a dataset input) on the parent run."""
    table = training.frame
    import warnings

    import mlflow.data
    from mlflow.entities import DatasetInput, InputTag

    client.set_tag(run_id, "mlflow.note.content", note)
    with warnings.catch_warnings():  # MLflow's schema hints about a table only displayed
        warnings.filterwarnings("ignore", message=".*(interpreted in multiple ways|Inferred schema "
                                                  "contains integer)")
        dataset = mlflow.data.from_pandas(table, source=training.source, name=training.name,
                                          digest=training.digest[:10],
                                          targets="label" if "label" in table else None)
        entity = dataset._to_mlflow_entity()  # where MLflow infers the schema, and hints
    client.log_inputs(run_id, datasets=[DatasetInput(entity, [InputTag("mlflow.data.context",
                                                                       "training")])])
