"""The report's Markdown (the twin) and its self-contained HTML page (the same Markdown
rendered by markdown-it, the figures inlined, no request leaves the file)."""
from __future__ import annotations

import base64
import html
import io
import json
import re

from foldwise.params import flatten
from foldwise.report.content import Experiment

CHANGES_SHOWN = 40
STYLE = """body{font:15px/1.5 system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#1b1b1b}
table{border-collapse:collapse;margin:.6em 0;font-size:13px}th,td{border:1px solid #ccc;padding:2px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f2f2f2}img{max-width:100%}code{background:#f5f5f5;padding:0 3px}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}"""


def table(columns: list[str], rows: list[list]) -> str:
    """A Markdown table (pipes in cells escaped)."""
    def cell(v):
        text = ("" if v is None else f"{v:g}" if isinstance(v, float) and v == round(v, 1)
                else f"{v:.4f}" if isinstance(v, float) else str(v))
        return text.replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows])


def as_written(value) -> str:
    """A param's value as params.yaml holds it (absent: a dash)."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value or "''"
    return json.dumps(value) if isinstance(value, (list, dict, bool)) else str(value)


def what_was_run(exp: Experiment) -> list[str]:
    rev = exp.revision
    against = f"its baseline `{rev.baseline[:10]}`" if rev.baseline else "no baseline commit"
    out = ["## What was run", ""]
    if not exp.changes:
        out.append(f"The params of {against}, unchanged.")
    else:
        shown = exp.changes[:CHANGES_SHOWN]
        n = len(exp.changes)
        out += [f"{n} {'param differs' if n == 1 else 'params differ'} from {against}:", "",
                table(["param", "baseline", "this run"],
                      [[c.key, as_written(c.before), as_written(c.after)] for c in shown])]
        if len(exp.changes) > CHANGES_SHOWN:
            out.append(f"\n(and {len(exp.changes) - CHANGES_SHOWN} more)")
    again = ("`dvc repro`" if rev.commit is None else
             f"`dvc exp apply {rev.name}` then `dvc repro`" if rev.experiment else
             f"`git checkout {rev.name}`, `dvc checkout`, then `dvc repro`")
    return out + ["", f"To rebuild it: {again}."]


def figures(exp: Experiment) -> list[str]:
    m, oof, spread = exp.monitor, exp.metrics.get("oof", {}), exp.metrics.get("spread", {})
    rows = [[k, v] for k, v in oof.items() if isinstance(v, (int, float))]
    out = ["## Out-of-fold figures", "", table(["figure", "value"], rows)]
    if f"folds_mean_{m}" in spread:
        out += ["", f"The folds' {m}: {spread[f'folds_mean_{m}']:.4f} ± "
                    f"{spread[f'folds_std_{m}']:.4f} (mean ± std over folds)."]
    if any(c.key == "bag.mean" for c in exp.changes):
        out += ["", "bag.mean changes the test predictions only: each OOF row comes from one "
                    "fold's model, so the OOF figures cannot move with it."]
    return out


def folds(exp: Experiment) -> list[str]:
    per_fold, images = exp.metrics.get("folds", {}), exp.baseline.get("fold_images", {})
    columns = [c for c in (exp.monitor, "accuracy", "best_epoch", "train_images_per_s")
               if any(c in f for f in per_fold.values())]
    rows = [[k, *[f.get(c) for c in columns], images.get(k)]
            for k, f in sorted(per_fold.items(), key=lambda kv: int(kv[0]))]
    out = ["## Folds", "", table(["fold", *columns, "validation images"], rows)]
    if "fold_curves" in exp.images:
        out += ["", "![every fold's validation curve](fold_curves.png)"]
    return out


def confusion(exp: Experiment) -> list[str]:
    pairs = exp.tables.get("confusion")
    if pairs is None:
        return []
    import pandas as pd
    counts = pd.crosstab(pairs["actual"], pairs["predicted"])
    labels = sorted(set(counts.index) | set(counts.columns), key=str)
    counts = counts.reindex(index=labels, columns=labels, fill_value=0)
    rows = [[f"**{a}**", *counts.loc[a].tolist()] for a in labels]
    return ["## Confusion (out of fold)", "", "Rows: the true class; columns: the predicted.", "",
            table(["", *labels], rows)]


def calibration(exp: Experiment) -> list[str]:
    bins = exp.tables.get("calibration")
    if bins is None:
        return []
    out = ["## Calibration", "", "![reliability of the out-of-fold probabilities](calibration.png)"]
    temperature = exp.metrics.get("oof", {}).get("temperature")
    if temperature is not None:
        out += ["", f"Temperature {temperature:.3f}, fit out of fold."]
    return out


def breakdown(exp: Experiment) -> list[str]:
    rows = exp.tables.get("breakdown")
    if rows is None:
        return []
    return ["## Per class or output", "", table(list(rows.columns), rows.values.tolist())]


def hardest(exp: Experiment, shown: int = 10) -> list[str]:
    worst = exp.tables.get("hardest")
    if worst is None:
        return []
    cols = [c for c in ("id", "fold", "loss", "label", "predicted", "p_label") if c in worst]
    out = ["## Hardest images", "", f"The {shown} training images with the largest "
           "out-of-fold loss: often mislabelled or ambiguous.", "",
           table(cols, worst[cols].head(shown).values.tolist())]
    if "hardest" in exp.images:
        out += ["", "![the hardest images](hardest.png)"]
    return out


def second_level(exp: Experiment) -> list[str]:
    out = []
    if exp.neighbours:
        n = exp.neighbours
        rows = [[k, v] for k, v in flatten_floats(n.get("oof", {})).items()]
        out += ["## Test neighbours", "", f"Each prediction averaged with its {n['k']} nearest "
                "neighbours' (out of fold: within the fold's own validation images).", "",
                table(["figure", "value"], rows)]
    if exp.stack:
        s = exp.stack
        rows = [[f"stack {k}", v] for k, v in flatten_floats(s.get("oof", {})).items()]
        rows += [[f"bag {k}", v] for k, v in flatten_floats(s.get("oof_bag", {})).items()]
        out += ["", "## Second-level model", "", f"`{s['model']}` over the bag's predictions"
                + (f" and {s['neighbours']} neighbours'" if s.get("neighbours") else "")
                + ", cross-fitted over the folds.", "", table(["figure", "value"], rows)]
    return out


def flatten_floats(d: dict) -> dict:
    """The numbers of a nested summary, by dotted key (`params.flatten`'s keys)."""
    return {k: v for k, v in flatten(d).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def links(exp: Experiment, logged_to: str | None) -> list[str]:
    out = ["## Links", ""]
    if exp.lineage:
        out.append(f"- MLflow parent run (folds as its children): <{exp.lineage['url']}> "
                   f"(store `{exp.lineage['tracking_uri']}`; `make mlflow-ui` serves it)")
    if exp.checks and exp.checks.get("registered"):
        out.append(f"- registered model: `{exp.checks['registered']}`")
    if logged_to:
        out.append(f"- this report: {logged_to}")
    return out + ["- the experiment in DVC: `dvc exp show`, `make exps`"]


def markdown(exp: Experiment, card: list[str], logged_to: str | None, when: str) -> str:
    rev, p = exp.revision, exp.params
    title = "the workspace" if rev.commit is None else f"`{rev.name}`"
    head = [f"# foldwise report: {title}", "",
            f"{p.get('data.source')} on `{p.get('data.root')}`, {len(exp.metrics.get('folds', {}))} "
            f"folds, `{p.get('train.model')}`, lr {p.get('lr')}; "
            + (f"commit `{rev.commit[:10]}`" if rev.commit else "uncommitted results")
            + f"; written {when}.", ""]
    parts = [what_was_run(exp), figures(exp), folds(exp), confusion(exp), calibration(exp),
             breakdown(exp), hardest(exp), second_level(exp),
             ["## Model card", "", "\n\n".join(card)], links(exp, logged_to)]
    return "\n".join(head + [line for part in parts if part for line in part + [""]])


def to_html(md: str, images: dict[str, bytes], title: str) -> str:
    """The Markdown rendered (CommonMark with tables), each `NAME.png` inlined as data."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(md)

    def inline(match):
        name = match.group(1)
        if name not in images:
            return match.group(0)
        return f'src="data:image/png;base64,{base64.b64encode(images[name]).decode()}"'

    body = re.sub(r'src="([^"/:]+\.png)"', inline, body)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n"
            f"<body>\n{body}</body></html>\n")


def reliability_png(bins) -> bytes:
    """The reliability diagram: confidence against observed accuracy, with the diagonal."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.plot([0, 1], [0, 1], color="#999", linestyle="--", label="perfect")
    ax.plot(bins["confidence"], bins["accuracy"], marker="o", label="out of fold")
    ax.set_xlabel("confidence of the top class")
    ax.set_ylabel("how often it was right")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()
