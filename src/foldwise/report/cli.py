"""foldwise-report: one DVC experiment as a self-contained HTML page and its Markdown twin.

usage: foldwise-report [EXP] [--out DIR] [--no-mlflow]

EXP is a DVC experiment's name (`dvc exp list`), a branch or a commit; without it, the
workspace (the last `dvc repro`). The page shows what was run (the params that differ from its
baseline commit), the out-of-fold figures and the folds' spread, a table of the folds and their
validation curves, the confusion table, the reliability diagram, the per-class figures, the
hardest images, the test-neighbour and second-level figures where those stages were on, the
model card (intended data, metric, how honest the out-of-fold figure is, known limits, what the
export checked) and the links to MLflow. It loads nothing from the network: the figures are
inside the page. The files go to reports/EXP/ (report.html, report.md and the figures the
Markdown shows), and to the experiment's MLflow parent run as artifacts under report/.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from foldwise import stage
from foldwise.files import atomic_dir, project_root
from foldwise.report import card, content, page, read

ARTIFACTS = "report"  # the folder of the parent run's artifacts the report goes to


def leak_check(files: read.Files) -> tuple[int | None, int | None]:
    """(groups found in two folds, groups) in the revision's data/folds.csv."""
    folds = files.table("data/folds.csv")
    if folds is None or "group" not in folds:
        return None, None
    per_group = folds.dropna(subset=["group"]).groupby("group")["fold"].nunique()
    return int((per_group > 1).sum()), int(len(per_group))


@dataclass(frozen=True)
class Built:
    exp: content.Experiment
    card: list[str]  # the model card's paragraphs
    images: dict  # file name -> PNG
    when: str

    def markdown(self, logged_to: str | None) -> str:
        return page.markdown(self.exp, self.card, logged_to, self.when)


def build(root: Path, name: str | None) -> Built:
    revision = read.resolve(root, name)
    with read.Files(root, revision) as files:
        exp = content.gather(files, read.baseline_params(root, revision))
        leaks, groups = leak_check(files)
    images = {f"{k}.png": v for k, v in exp.images.items()}
    if "calibration" in exp.tables:
        images["calibration.png"] = page.reliability_png(exp.tables["calibration"])
    return Built(exp, card.card(exp, leaks, groups), images,
                 datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))


def write(out: Path, md: str, images: dict, title: str) -> None:
    """The folder whole or not at all: report.md, report.html and the figures."""
    with atomic_dir(out) as tmp:
        (tmp / "report.md").write_text(md, encoding="utf8")
        (tmp / "report.html").write_text(page.to_html(md, images, title), encoding="utf8")
        for file, data in images.items():
            (tmp / file).write_bytes(data)


def log(lineage: dict, out: Path) -> None:
    """The report's files as artifacts of the experiment's MLflow parent run (`lineage`:
    metrics/mlflow.json)."""
    from mlflow.tracking import MlflowClient
    MlflowClient(tracking_uri=lineage["tracking_uri"]).log_artifacts(
        lineage["parent_run_id"], str(out), artifact_path=ARTIFACTS)


def report(root: Path, name: str | None, out: Path | None, to_mlflow: bool) -> str:
    """Write the report (and log it to the experiment's MLflow parent run); returns the line
    the command prints."""
    folder = out or root / "reports" / re.sub(r"[^A-Za-z0-9_.-]+", "-", name or read.WORKSPACE)
    built = build(root, name)
    lineage = built.exp.lineage if to_mlflow else None
    place = f"MLflow run {lineage['parent_run_id']}, artifacts {ARTIFACTS}/" if lineage else None
    write(folder, built.markdown(place), built.images, f"foldwise report: {name or read.WORKSPACE}")
    if lineage:
        log(lineage, folder)
    said = (f"logged to {place}" if place else "not logged to MLflow: " +
            ("--no-mlflow" if not to_mlflow else "metrics/mlflow.json names no parent run"))
    return f"{folder / 'report.html'} and report.md ({said})"


def main() -> None:
    ap = stage.parser(__doc__, prog="foldwise-report")
    ap.add_argument("exp", nargs="?", help="a DVC experiment, branch or commit (default: the workspace)")
    ap.add_argument("--out", type=Path, help="the report's folder (default: reports/EXP/)")
    ap.add_argument("--no-mlflow", action="store_true", help="do not log it to the MLflow parent run")
    args = ap.parse_args()
    stage.run(lambda: print(report(project_root(), args.exp, args.out, not args.no_mlflow)))
