"""The model card: what the shipped model is for, how it is scored, how far its out-of-fold
figure can be trusted, what it is known not to do, and what the export checked."""
from __future__ import annotations

from foldwise.report.content import Experiment

GROUPS = {"statefarm": "driver"}  # what a source's groups are (else: its `group` column's)


def intended_data(exp: Experiment) -> str:
    p, meta, labels = exp.params, exp.meta, list(exp.task.columns)
    named = ", ".join(map(str, labels[:12])) + (", ..." if len(labels) > 12 else "")
    crop = meta.get("crop")
    cropped = "" if crop in (None, [0.0, 0.0, 1.0, 1.0]) else f", cropped to {crop}"
    line = (f"**Intended data.** {meta.get('task', '?')} of `{p.get('data.source')}` images into "
            f"{len(labels)} {exp.task.outputs_are} ({named}), read as {meta.get('height')}x"
            f"{meta.get('width')} {meta.get('mode', '')}{cropped}; trained on "
            f"{exp.baseline.get('images', '?')} images from `{p.get('data.root')}`.")
    if str(p.get("data.root", "")).startswith("data/sample/"):
        line += (" That is the embedded *synthetic* sample: this model only shows the pipeline "
                 "works and is not for real images.")
    return line


def metric(exp: Experiment) -> str:
    oof, m = exp.metrics.get("oof", {}), exp.monitor
    trivial = {k: exp.baseline[k] for k in exp.task.baselines if k in exp.baseline}
    line = (f"**Metric.** {m} out of fold, as the competition computes it: {oof.get(m, float('nan')):.4f}"
            + "".join(f"; {k} {v:.4f}" for k, v in oof.items()
                      if k != m and isinstance(v, float)) + ".")
    if trivial:
        line += " The data's own baselines (no model): " + ", ".join(
            f"{k} {v:.4f}" for k, v in trivial.items()) + "."
    return line


def honesty(exp: Experiment, leaks: int | None, groups: int | None) -> str:
    """How the OOF figure was made and where it is optimistic."""
    k = len(exp.metrics.get("folds", {}))
    word = GROUPS.get(str(exp.params.get("data.source")), "group")
    kept = (f"the folds keep each {word} together ({groups} of them; {leaks} found in two folds "
            "by this report)" if groups else
            "the data names no groups, so each image is its own: one subject's images or near-"
            "duplicates can sit in two folds and flatter the figure (`split.dedupe: true` keeps "
            "near-duplicates together)" if groups == 0 else "the folds were not found")
    lines = [f"**How honest the out-of-fold figure is.** Each training image is predicted by "
             f"the one of {k} fold models that did not train on it; {kept}. Each fold's kept "
             "epoch was chosen on its own validation images, which makes the figure slightly "
             "optimistic."]
    if "temperature" in exp.metrics.get("oof", {}):
        lines.append("The calibrated figure is cross-fitted: each fold is tempered with the "
                     "temperature fit on the other folds.")
    if exp.neighbours or exp.stack:
        lines.append("Test-neighbour averaging and the second-level model are cross-fitted "
                     "too, but measured on Fashion-MNIST their OOF gain overstated the test "
                     "gain about 8x (docs/benchmarks.md).")
    return " ".join(lines)


def limits(exp: Experiment) -> str:
    p, spread = exp.params, exp.metrics.get("spread", {})
    m = exp.monitor
    items = []
    if not p.get("train.pretrained"):
        items.append(f"trained from scratch (`{p.get('train.model')}`, no pretrained weights)")
    if f"folds_std_{m}" in spread:
        items.append(f"the folds disagree: {m} {spread[f'folds_mean_{m}']:.4f} ± "
                     f"{spread[f'folds_std_{m}']:.4f} (mean ± std over folds)")
    if exp.neighbours:
        items.append("test-neighbour averaging uses the whole test set: a prediction depends "
                     "on the images predicted with it")
    if p.get("pseudo.rounds"):
        items.append("pseudo-labelled test images were trained on")
    if "hardest" in exp.tables:
        items.append("the hardest images below are often mislabelled or ambiguous; look before "
                     "trusting the figure")
    return "**Known limits.** " + "; ".join(items) + "." if items else "**Known limits.** none recorded."


def export_checks(checks: dict | None) -> str:
    if not checks:
        return "**Export checks.** The export stage has not run for this experiment."
    line = (f"**Export checks.** The exported program ({checks['folds']} folds in one `.pt2`) "
            f"matches the same networks run eagerly to {checks['exported_vs_eager']:.1e} "
            f"(allowed {checks['tolerance']:g}); it differs from the folds' own test predictions "
            f"by {checks['drift_p99']:.1e} at the 99th percentile. It computes "
            f"{checks['metric']} {checks['served_figure']:.4f} out of fold.")
    if checks.get("test_graph_agreement") is not None:
        line += (f" foldwise-predict rebuilds the test-neighbour graph from the shipped "
                 f"features: {checks['test_graph_agreement']:.1%} of the neighbours stage's.")
    if checks.get("predict_refuses"):
        line += f" foldwise-predict refuses it: {'; '.join(checks['predict_refuses'])}."
    if checks.get("model"):
        line += f" MLflow model `{checks['model']}`"
        line += (f", registered as `{checks['registered']}` (champion: version "
                 f"{checks['champion']})." if checks.get("registered") else ".")
    else:
        line += f" No MLflow model was logged: {checks.get('not_logged', '')}."
    return line


def card(exp: Experiment, leaks: int | None, groups: int | None) -> list[str]:
    """The card's paragraphs, in Markdown."""
    return [intended_data(exp), metric(exp), honesty(exp, leaks, groups), limits(exp),
            export_checks(exp.checks)]
