"""foldwise-report on a hand-made finished project (the real pipeline's report:
test_pipeline.py): the params that differ from the baseline commit, the confusion counted from
the per-image table, the leak check, the export's checks, and an HTML page that holds every
figure itself and asks the network for nothing."""
import base64
import io
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import sh
from PIL import Image

from foldwise.errors import InputError
from foldwise.report import cli, content, read

ROOT = Path(__file__).resolve().parents[1]


def png(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buf, format="PNG")
    return buf.getvalue()


def write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    elif isinstance(data, pd.DataFrame):
        data.to_csv(path, index=False)
    else:
        path.write_text(json.dumps(data) if isinstance(data, dict) else data)


@pytest.fixture
def finished(tmp_path):
    """A git repository whose committed params.yaml has lr 0.002 and whose workspace ran with
    lr 0.003 and train.epochs 9: evaluate's and export's files written by hand."""
    dst = tmp_path / "project"
    shutil.copy(ROOT / "params.yaml", tmp_path / "base.yaml")
    write(dst / "params.yaml", (tmp_path / "base.yaml").read_text())
    sh("git init -q && git add params.yaml && git -c user.name=t -c user.email=t@t commit -qm base", dst)
    params = yaml.safe_load((dst / "params.yaml").read_text())
    params["lr"], params["train"]["epochs"] = 0.003, params["train"]["epochs"] + 1
    write(dst / "params.yaml", yaml.safe_dump(params))
    write(dst / "metrics/metrics.json", {
        "oof": {"logloss": 0.5123, "accuracy": 0.81},
        "spread": {"folds_mean_logloss": 0.52, "folds_std_logloss": 0.03},
        "folds": {"0": {"logloss": 0.49, "accuracy": 0.83, "best_epoch": 3},
                  "1": {"logloss": 0.55, "accuracy": 0.79, "best_epoch": 5}}})
    write(dst / "metrics/baseline.json", {"images": 6, "prior_logloss": 1.0986,
                                          "fold_images": {"0": 3, "1": 3}})
    write(dst / "data/processed/meta.json", {"task": "classification", "classes": ["a", "b", "c"],
                                             "height": 28, "width": 28, "mode": "L",
                                             "crop": [0.0, 0.0, 1.0, 1.0]})
    write(dst / "metrics/confusion.csv", pd.DataFrame(
        {"actual": ["a", "a", "b", "b", "c", "c"], "predicted": ["a", "b", "b", "b", "a", "c"]}))
    write(dst / "metrics/calibration.csv", pd.DataFrame(
        {"confidence": [0.45, 0.9], "accuracy": [0.5, 0.75], "perfect": [0.45, 0.9], "images": [2, 4]}))
    write(dst / "metrics/hardest.csv", pd.DataFrame(
        {"row": [4], "id": ["x|4.png"], "fold": [1], "loss": [2.5], "label": ["c"], "predicted": ["a"],
         "p_label": [0.08]}))
    # driver p2 in both folds: the leak the report must count
    write(dst / "data/folds.csv", pd.DataFrame(
        {"id": list("uvwxyz"), "group": ["p1", "p1", "p2", "p2", "p3", "p3"], "fold": [0, 0, 0, 1, 1, 1]}))
    write(dst / "metrics/fold_curves.png", png("red"))
    write(dst / "metrics/hardest.png", png("blue"))
    write(dst / "metrics/mlflow.json", {"parent_run_id": "abc", "experiment_id": "1",
                                        "tracking_uri": "sqlite:///nowhere.db", "url": "http://127.0.0.1:5000/#/x"})
    write(dst / "export/checks.json", {
        "exported_vs_eager": 3e-7, "tolerance": 1e-4, "drift_p99": 2e-3, "drift_max": 4e-3,
        "test_graph_agreement": None, "metric": "oof_logloss", "served_figure": 0.5123,
        "outside_program": [], "predict_refuses": [], "folds": 2, "stack": "",
        "model": "runs:/abc/model", "not_logged": "", "registered": "models:/m/3", "champion": "2"})
    return dst


def test_the_report_says_what_differs_from_the_baseline_and_counts_from_the_files(finished, tmp_path):
    line = cli.report(finished, None, tmp_path / "out", to_mlflow=False)
    assert "--no-mlflow" in line
    md = (tmp_path / "out/report.md").read_text()
    assert "2 params differ from its baseline" in md
    epochs = yaml.safe_load((ROOT / "params.yaml").read_text())["train"]["epochs"]
    assert "| lr | 0.002 | 0.003 |" in md and f"| train.epochs | {epochs} | {epochs + 1} |" in md
    # the confusion counted by hand: a -> a, b; b -> b, b; c -> a, c
    assert "| **a** | 1 | 1 | 0 |" in md and "| **b** | 0 | 2 | 0 |" in md and "| **c** | 1 | 0 | 1 |" in md
    assert "| 0 | 0.4900 | 0.8300 | 3 | 3 |" in md, md  # fold, logloss, accuracy, best epoch, images
    assert "0.5200 ± 0.0300" in md
    assert "x\\|4.png" in md  # a pipe inside a cell does not break the table
    assert "(3 of them; 1 found in two folds by this report)" in md
    assert "to 3.0e-07 (allowed 0.0001)" in md and "registered as `models:/m/3` (champion: version 2)" in md
    assert "The data's own baselines (no model): prior_logloss 1.0986." in md
    assert "into 3 classes (a, b, c), read as 28x28 L" in md


def test_the_html_page_holds_every_figure_and_fetches_nothing(finished, tmp_path):
    cli.report(finished, None, tmp_path / "out", to_mlflow=False)
    page = (tmp_path / "out/report.html").read_text()
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 3  # fold curves, calibration, hardest
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    inlined = {base64.b64decode(s.split(",", 1)[1]) for s in sources}
    assert png("red") in inlined and png("blue") in inlined
    assert "<script" not in page and "<link" not in page and "@import" not in page
    md = (tmp_path / "out/report.md").read_text()
    for name in ("fold_curves.png", "calibration.png", "hardest.png"):  # the twin's figures beside it
        assert f"]({name})" in md and (tmp_path / "out" / name).read_bytes()[:4] == b"\x89PNG"


def test_changes_name_keys_added_and_removed():
    got = content.changes({"a": 1, "b": {"c": 2, "d": 3}}, {"a": 1, "b": {"c": 5}, "e": 0})
    assert [(c.key, c.before, c.after) for c in got] == [("b.c", 5, 2), ("b.d", None, 3), ("e", 0, None)]


def test_a_revision_without_results_or_an_unknown_name_is_one_error_naming_it(finished, tmp_path):
    (finished / "metrics/metrics.json").unlink()
    with pytest.raises(InputError, match="no metrics/metrics.json at workspace: the evaluate stage"):
        cli.report(finished, None, tmp_path / "out", to_mlflow=False)
    assert not (tmp_path / "out").exists()  # nothing half-written
    sh("dvc init -q", finished)
    with pytest.raises(InputError, match="no experiment, branch or commit named 'nope'"):
        read.resolve(finished, "nope")


def test_data_without_groups_is_said_to_have_none_not_zero_groups_kept_together(finished, tmp_path):
    """Image folders without a group column have no groups; the card said "the folds keep
    each image together (0 of them; 0 found in two folds)"."""
    write(finished / "data/folds.csv", pd.DataFrame({"id": list("uvwxyz"), "group": [None] * 6,
                                                     "fold": [0, 0, 0, 1, 1, 1]}))
    cli.report(finished, None, tmp_path / "out", to_mlflow=False)
    md = (tmp_path / "out/report.md").read_text()
    assert "the data names no groups, so each image is its own" in md
    assert "0 of them" not in md
