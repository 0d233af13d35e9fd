"""The real `dvc repro`, `dvc exp run` and queued experiments on a tiny sample, in a copy of
the project; checks the outputs, the metrics against scikit-learn and the MLflow runs."""
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import free_port, make_project, mlflow_runs, sh, wait_until_up
from sklearn.metrics import log_loss

from foldwise.ensemble import dashboard

FOLDS = 3
EPOCHS = 2


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A git + DVC copy of this project with tiny params, after one `dvc repro`."""
    def tiny(params):
        params["folds"] = list(range(FOLDS))
        params["sample"]["statefarm"].update(drivers=5, per_class=2, test_drivers=1, test_per_class=2)
        params["preprocess"].update(height=48, width=64)
        # resnet10t, as in the other tiny projects: a fold run must outlast MLflow's first
        # system-metrics sample (2 s), which the default test_resnet at this size does not
        params["train"].update(model="resnet10t", epochs=EPOCHS, batch_size=8, patience=EPOCHS)

    dst = make_project(tmp_path_factory.mktemp("pipeline") / "project", tiny)
    out = sh("dvc repro", dst)
    return dst, yaml.safe_load((dst / "params.yaml").read_text()), out.stdout + out.stderr


def test_the_first_run_reads_as_written_for_a_person(project):
    """Each epoch was a raw dict and DVC warned "'data/stack' is empty" (three times) and
    "'export/distilled' is empty" with those stages off; now one line per epoch with the
    fold's figures, and no warning."""
    _, params, out = project
    assert "is empty" not in out, out[-3000:]
    assert "Warning:" not in out, [line for line in out.splitlines() if "Warning:" in line]
    assert "{'epoch'" not in out
    for k in range(FOLDS):
        assert re.search(rf"fold {k}  epoch 1/{EPOCHS}  loss \d\.\d{{4}}  val logloss \d\.\d{{4}} \*", out)
    assert re.search(rf"fold 0  epoch 1/{EPOCHS} .* fold [0-9ms]+ left, up to {FOLDS - 1} more folds", out)


def test_submission_is_in_the_competition_format(project):
    dst, params, _ = project
    sub_path = dst / "export/submission.csv"
    assert sub_path.read_text().splitlines()[0] == "img," + ",".join(f"c{i}" for i in range(10))
    sub = pd.read_csv(sub_path)
    test_names = sorted(p.name for p in (dst / "data/sample/statefarm/imgs/test").glob("*.jpg"))
    assert list(sub["img"]) == test_names and len(test_names) == 20
    np.testing.assert_allclose(sub.iloc[:, 1:].sum(axis=1), 1.0, atol=1e-5)


def test_bagged_test_predictions_are_the_mean_of_the_folds(project):
    dst, _, _ = project
    folds = [pd.read_csv(dst / f"models/fold_{k}/test.csv") for k in range(FOLDS)]
    bagged = pd.read_csv(dst / "data/bagged/test.csv")
    cols = [f"c{i}" for i in range(10)]
    np.testing.assert_allclose(bagged[cols], np.mean([f[cols] for f in folds], axis=0), atol=1e-7)


def test_oof_covers_every_image_once_with_no_driver_in_two_folds(project):
    dst, _, _ = project
    oof = pd.read_csv(dst / "data/bagged/oof.csv", dtype={"id": str})
    listed = pd.read_csv(dst / "data/sample/statefarm/driver_imgs_list.csv")
    assert sorted(oof["id"]) == sorted(listed["img"])
    assert oof.groupby("group")["fold"].nunique().max() == 1
    assert set(oof["fold"]) == set(range(FOLDS))


def test_metrics_match_scikit_learn_on_the_oof_table(project):
    dst, _, _ = project
    oof = pd.read_csv(dst / "data/bagged/oof.csv")
    probs = oof[[f"c{i}" for i in range(10)]].to_numpy()
    m = json.loads((dst / "metrics/metrics.json").read_text())
    clipped = np.clip(probs, 1e-15, 1 - 1e-15)  # the competition's treatment
    expected = log_loss(oof["label"], clipped / clipped.sum(1, keepdims=True), labels=list(range(10)))
    assert m["oof"]["logloss"] == pytest.approx(expected, rel=1e-9)
    assert m["oof"]["accuracy"] == pytest.approx(np.mean(probs.argmax(1) == oof["label"]))
    assert sorted(m["folds"]) == [str(k) for k in range(FOLDS)]
    confusion = pd.read_csv(dst / "metrics/confusion.csv")
    assert len(confusion) == len(oof)
    show = sh("dvc metrics show --json", dst).stdout
    assert "logloss" in show


def test_mlflow_has_one_parent_with_a_child_per_fold(project):
    dst, params, _ = project
    client, all_runs = mlflow_runs(dst)
    parents = [r for r in all_runs if r.data.tags.get("foldwise.role") == "parent"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    m = json.loads((dst / "metrics/metrics.json").read_text())
    assert parent.data.metrics["oof_logloss"] == pytest.approx(m["oof"]["logloss"])
    children = [r for r in all_runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["foldwise.fold"] for r in children) == [str(k) for k in range(FOLDS)]
    for child in children:
        assert child.data.params["lr"] == str(params["lr"]) and child.data.params["train.model"] == params["train"]["model"]
        for name in ("train_loss", "val_logloss", "val_accuracy", "train_accuracy", "lr"):
            assert len(client.get_metric_history(child.info.run_id, name)) == EPOCHS, name
        assert "best_epoch" in child.data.metrics
        arts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"learning_curve.png", "history.csv", "model.pt"} <= arts


def test_the_parent_run_is_the_folds_dashboard_and_metrics_name_it(project):
    """The parent's page said "Evaluations" and little else: it now carries a note (task, data
    and its digest, k, the OOF figure with the folds' mean and spread, a table of the folds by
    hand, the commit), the training table as a dataset, every fold's curve on one chart; and
    metrics/mlflow.json names the parent (lineage from DVC to MLflow)."""
    import hashlib
    dst, params, _ = project
    client, all_runs = mlflow_runs(dst)
    lineage = json.loads((dst / "metrics/mlflow.json").read_text())
    parent = client.get_run(lineage["parent_run_id"])
    assert parent.data.tags["foldwise.role"] == "parent" and parent.info.status == "FINISHED"
    assert lineage["url"].endswith(f"#/experiments/{parent.info.experiment_id}/runs/"
                                   f"{parent.info.run_id}?workflowType=machine_learning")
    m = json.loads((dst / "metrics/metrics.json").read_text())
    per_fold = [m["folds"][str(k)]["logloss"] for k in range(FOLDS)]
    note = parent.data.tags["mlflow.note.content"]
    digest = hashlib.sha256((dst / "data/processed/train.csv").read_bytes()).hexdigest()[:16]
    assert f"**statefarm** on `{params['data']['root']}` (training table `{digest}`), {FOLDS} folds" in note
    assert f"Out-of-fold logloss **{m['oof']['logloss']:.4f}**" in note
    assert f"the folds {np.mean(per_fold):.4f} ± {np.std(per_fold, ddof=1):.4f}" in note
    for k in range(FOLDS):
        assert f"| {k} | {per_fold[k]:.4f} |" in note
    assert parent.data.tags["mlflow.source.git.commit"][:10] in note
    datasets = {d.dataset.name: d.dataset for d in parent.inputs.dataset_inputs}
    assert "statefarm training table" in datasets
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"fold_curves.png", "metrics.json", "hardest.png"} <= arts
    assert (dst / "metrics/fold_curves.png").stat().st_size > 10_000


def test_predict_command_reproduces_the_bagged_test_predictions(project, tmp_path):
    dst, _, _ = project
    out = tmp_path / "pred.csv"
    sh(f"{sys.executable} -m foldwise.deploy.predict export/model data/sample/statefarm/imgs/test {out}", dst)
    pred = pd.read_csv(out)
    bagged = pd.read_csv(dst / "data/bagged/test.csv")
    assert list(pred["img"]) == list(bagged["id"])
    cols = [f"c{i}" for i in range(10)]
    assert np.abs(pred[cols].to_numpy() - bagged[cols].to_numpy()).max() < 1e-4


def test_mlflow_reads_as_a_training_dashboard(project, tmp_path):
    """The experiment opens on MLflow's model-training pages; the parent is named after model
    and lr and carries the git commit; each fold names its training and validation data and
    records system metrics; the bag is an MLflow model whose pyfunc predictions are
    foldwise-predict's, file for file."""
    import mlflow
    dst, params, _ = project
    client, all_runs = mlflow_runs(dst)
    exp = client.get_experiment_by_name("foldwise")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    parent = next(r for r in all_runs if r.data.tags.get("foldwise.role") == "parent")
    assert parent.info.run_name == f"{params['train']['model']} lr {params['lr']:g}"
    commit = sh("git rev-parse HEAD", dst).stdout.strip()
    assert parent.data.tags["mlflow.source.git.commit"] == commit
    children = [r for r in all_runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    digests = set()
    for child in children:
        inputs = {d.tags[0].value: d.dataset for d in child.inputs.dataset_inputs}
        assert set(inputs) == {"training", "validation"}
        fold = child.data.tags["foldwise.fold"]
        assert inputs["training"].name == f"statefarm fold {fold} training"
        digests |= {d.digest for d in inputs.values()}
        assert child.data.tags["mlflow.source.git.commit"] == commit
    assert len(digests) == 2 * FOLDS  # every fold's data told apart
    assert any(k.startswith("system/") for c in children for k in c.data.metrics)
    models = mlflow.search_logged_models(experiment_ids=[exp.experiment_id], output_format="list")
    ours = [m for m in models if m.source_run_id == parent.info.run_id]
    assert len(ours) == 1
    pyfunc = mlflow.pyfunc.load_model(f"models:/{ours[0].model_id}")
    got = pyfunc.predict(np.load(dst / "data/processed/test.npy"))
    out = tmp_path / "pred.csv"
    sh(f"{sys.executable} -m foldwise.deploy.predict export/model data/sample/statefarm/imgs/test {out}", dst)
    pred = pd.read_csv(out)
    test_ids = pd.read_csv(dst / "data/processed/test.csv")["id"]
    want = pred.set_index("img").loc[test_ids, [f"c{i}" for i in range(10)]].to_numpy()
    assert np.abs(got - want).max() < 1e-5  # the submission's 6 significant digits


def test_dvc_plots_draw_every_fold_on_one_chart_and_the_reliability(project):
    dst, _, _ = project
    shown = json.loads(sh("dvc plots show --json", dst).stdout)
    assert not shown.get("errors"), shown.get("errors")
    curves = shown["data"]["metrics/curves.csv"][0]["content"]
    assert curves["encoding"]["color"]["field"] == "fold"
    assert {v["fold"] for v in curves["data"]["values"]} == {str(k) for k in range(FOLDS)}
    reliability = shown["data"]["reliability of the out-of-fold probabilities"][0]["content"]["data"]["values"]
    assert reliability and all(0 <= float(v["accuracy"]) <= 1 for v in reliability)


def test_repro_again_does_nothing(project):
    dst, _, first = project
    assert "Running stage 'train@0'" in first
    second = sh("dvc repro", dst).stdout
    assert "Running stage" not in second


def test_a_replaced_weights_file_reruns_the_folds(project):
    """weights/ is a dependency of every fold: a file replaced there, even under the same
    name, makes DVC retrain (train.weights_file must point there)."""
    dst, _, _ = project
    weights = dst / "weights" / "pretrained.pth"
    try:
        weights.write_bytes(b"another file")
        status = sh("dvc status train@0", dst).stdout
        assert "modified:" in status and "weights" in status, status
    finally:
        weights.unlink()
    assert "changed" not in sh("dvc status train@0", dst).stdout


def test_a_new_lr_reruns_the_folds_and_nothing_upstream(project):
    """`lr` is a top-level key that only the folds read: DVC's dry run after changing it (as
    `dvc exp run -S lr=...` does; queued experiments run that for real in
    test_concurrent_experiments.py) lists every train stage and nothing before them (bag,
    evaluate and export follow from the folds' new outputs)."""
    dst, _, _ = project
    params = dst / "params.yaml"
    original = params.read_text()
    try:
        params.write_text(original.replace("\nlr: 0.002\n", "\nlr: 0.003\n"))
        assert params.read_text() != original
        out = sh("dvc repro --dry", dst).stdout
    finally:
        params.write_text(original)
    for stage in ("sample", "split", "preprocess"):
        assert f"Running stage '{stage}'" not in out
    for stage in [f"train@{k}" for k in range(FOLDS)]:
        assert f"Running stage '{stage}'" in out, out


def snapshot(dst) -> dict:
    """Every output file of the pipeline by content."""
    import hashlib
    return {str(p.relative_to(dst)): hashlib.sha256(p.read_bytes()).hexdigest()
            for top in ("data", "models", "metrics", "export") for p in sorted((dst / top).rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("setting, says", [  # a misspelt key or value, timm's names: test_params.py
    ("lr=-1", "lr=-1.0 is out of range; allowed: > 0"),
    ("folds=[0]", "folds=[0] must be 0, 1, ..., k-1 with k >= 2"),
])
def test_a_bad_experiment_stops_at_the_first_stage_and_loses_nothing(project, setting, says):
    """Each of these failed in a later stage, after DVC had removed that stage's finished
    outputs (models/fold_0, data/folds.csv), or inside torch. Now the check stage, which has
    nothing to lose, stops it with the key, the value and the allowed ones. (A new `folds`
    drops stages: DVC itself sets their outputs aside before any stage runs, and `dvc checkout`
    brings them back from its cache, as the error says.)"""
    dst, _, _ = project
    params = (dst / "params.yaml").read_text()
    before = snapshot(dst)
    try:
        res = sh(f"dvc exp run -S '{setting}'", dst, check=False)
    finally:
        (dst / "params.yaml").write_text(params)
    assert res.returncode != 0
    assert says in res.stderr and "git checkout params.yaml" in res.stderr, res.stderr
    assert re.findall(r"Running stage '([^']+)'", res.stdout) == ["check"], res.stdout
    if setting.startswith("folds"):
        sh("dvc checkout", dst)
        assert "Running stage" not in sh("dvc repro", dst).stdout  # nothing to redo
    assert snapshot(dst) == before


def test_bad_input_stops_before_training_with_the_row_named(project, tmp_path):
    dst, params, _ = project
    bad = tmp_path / "bad"
    shutil.copytree(dst / "data/sample/statefarm", bad)
    csv = bad / "driver_imgs_list.csv"
    table = pd.read_csv(csv)
    table.loc[4, "classname"] = "c42"
    table.to_csv(csv, index=False)
    res = sh(f"{sys.executable} stages/split.py {bad} {tmp_path / 'folds.csv'} {tmp_path / 'd.csv'} {tmp_path / 'd.png'}", dst, check=False)
    assert res.returncode == 2
    assert f"error: {csv}, line 6: unknown class 'c42'" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "folds.csv").exists()


def test_bagging_unchanged_folds_again_gets_its_own_parent_run(project):
    """Only bag.mean changes: DVC keeps the trained folds, whose MLflow parent is finished with
    the first run's metrics. The new evaluation must not overwrite them: it gets a new parent
    that names the fold runs it bags."""
    dst, _, _ = project
    run = geometric_experiment(dst)
    client, after = mlflow_runs(dst)
    first = client.get_run(run["first_parent"])
    assert "Running stage 'train@0'" not in run["out"] and "Running stage 'evaluate'" in run["out"]
    new = [r for r in after if r.data.tags.get("foldwise.role") == "parent"
           and r.info.run_id not in run["runs_before"]]
    assert len(new) == 1 and new[0].info.status == "FINISHED"
    assert new[0].data.tags["foldwise.folds_restored"] == "true"
    fold_runs = json.loads((dst / "models/fold_0/run.json").read_text())
    assert fold_runs["run_id"] in new[0].data.tags["foldwise.fold_runs"].split(",")
    m = json.loads((dst / "metrics/metrics.json").read_text())
    assert new[0].data.metrics["oof_logloss"] == pytest.approx(m["oof"]["logloss"])
    assert first.info.status == "FINISHED"
    assert first.data.metrics["oof_logloss"] == pytest.approx(run["first_oof_logloss"])


EXPERIMENTS = {}


def geometric_experiment(dst) -> dict:
    """The experiment `geometric` (bag.mean=geometric) on the committed first `dvc repro` (the
    default arithmetic bag), run once for the tests that read it: what it printed, the MLflow
    runs before it, and the first run's parent with its OOF figure then."""
    if dst not in EXPERIMENTS:
        client, before = mlflow_runs(dst)
        first = json.loads((dst / "models/fold_0/run.json").read_text())["parent_run_id"]
        sh("git add -A && git commit -qm 'dvc repro results'", dst)  # the baseline row
        out = sh("dvc exp run -n geometric -S bag.mean=geometric", dst).stdout
        EXPERIMENTS[dst] = {"name": "geometric", "out": out, "first_parent": first,
                            "runs_before": {r.info.run_id for r in before},
                            "first_oof_logloss": client.get_run(first).data.metrics["oof_logloss"]}
    return EXPERIMENTS[dst]


def test_make_exps_shows_what_differs_and_the_oof_figures_best_first(project):
    """`dvc exp show` with about 100 params collapsed to `…` and no metrics in a terminal; `make
    exps` keeps the params that differ, the OOF figures and the folds' mean and spread, sorted
    by OOF log loss, and says that bag.mean cannot move the OOF figures (here: equal). The
    workspace's `dvc repro`, committed, is the baseline row (README: "Comparing experiments")."""
    dst, _, _ = project
    geometric_experiment(dst)
    venv = Path(sys.executable).parent.parent
    shown = sh(f"make -s exps VENV={venv} EXPS_FLAGS=--csv", dst).stdout
    assert "bag.mean changes the test predictions only" in shown
    table = pd.read_csv(__import__("io").StringIO(shown.split("\n(bag.mean")[0]))
    columns = set(table.columns)
    assert {"bag.mean", "oof.logloss", "oof.accuracy", "spread.folds_mean_logloss",
            "spread.folds_std_logloss"} <= columns, columns
    assert not [c for c in columns if c.startswith(("folds.", "src/", "data/", "sample."))]
    assert "train.optimizer" not in columns and len(columns) < 20  # only what differs
    # (the OOF figures stay even where equal in every row: --keep)
    rows = table[table["rev"] != "workspace"].dropna(subset=["oof.logloss"])
    assert set(rows["bag.mean"]) == {"arithmetic", "geometric"}
    assert rows["oof.logloss"].nunique() == 1  # as the line says: the OOF figures did not move
    assert list(rows["oof.logloss"]) == sorted(rows["oof.logloss"])
    folds = json.loads((dst / "metrics/metrics.json").read_text())["folds"]
    per_fold = [folds[str(k)]["logloss"] for k in range(FOLDS)]
    # (`--precision 4`: four significant digits)
    assert rows["spread.folds_mean_logloss"].iloc[0] == pytest.approx(np.mean(per_fold), rel=1e-3)
    assert rows["spread.folds_std_logloss"].iloc[0] == pytest.approx(np.std(per_fold, ddof=1), rel=1e-3)




CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NO_CHROMIUM = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (Debian: apt-get install chromium)")


@contextlib.contextmanager
def offline_page(refused: list):
    """A page of headless Chromium with no network: each request that is not for a local file
    is refused and listed in `refused`."""
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_context(offline=True).new_page()
            page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:")
                       else (refused.append(route.request.url), route.abort()))
            yield page
        finally:
            browser.close()


def cached_output(dst, rev: str, path: str) -> bytes:
    """An output of `rev` read by hand: its md5 in that commit's dvc.lock, then DVC's cache."""
    lock = yaml.safe_load(sh(f"git show {rev}:dvc.lock", dst).stdout)
    md5 = next(o["md5"] for s in lock["stages"].values() for o in s.get("outs", []) if o["path"] == path)
    return (dst / ".dvc/cache/files/md5" / md5[:2] / md5[2:]).read_bytes()


def test_a_report_per_experiment_from_its_own_files_logged_to_its_own_parent_run(project):
    """`foldwise-report EXP` reads EXP's files at its commit, not the workspace's: the report of
    the experiment `geometric` and of the commit it ran on (the first `dvc repro`) each name
    the params that differ from their baseline, their own OOF figure and their own MLflow
    parent run (read here from each commit's dvc.lock and DVC's cache), and each is logged to
    that run under report/."""
    dst, _, _ = project
    exp = geometric_experiment(dst)["name"]
    client, _ = mlflow_runs(dst)
    refs = sh("git for-each-ref --format='%(objectname) %(refname)' refs/exps", dst).stdout.split("\n")
    exp_commit = next(line.split()[0] for line in refs if line.endswith(f"/{exp}"))
    parents = set()
    for rev, name, changed in ((exp_commit, exp, "1 param differs from its baseline"),
                               ("HEAD", "HEAD", "The params of its baseline")):
        out = sh(f"foldwise-report {name}", dst).stdout
        md = (dst / "reports" / name / "report.md").read_text()
        assert changed in md, md[:1500]
        assert ("| bag.mean | arithmetic | geometric |" in md) == (name == exp)
        assert ("`dvc exp apply geometric` then `dvc repro`" in md) == (name == exp)
        metrics = json.loads(cached_output(dst, rev, "metrics/metrics.json"))
        assert f"| logloss | {metrics['oof']['logloss']:.4f} |" in md
        lineage = json.loads(cached_output(dst, rev, "metrics/mlflow.json"))
        assert lineage["url"] in md and f"logged to MLflow run {lineage['parent_run_id']}" in out
        arts = {a.path for a in client.list_artifacts(lineage["parent_run_id"], "report")}
        assert {"report/report.html", "report/report.md", "report/fold_curves.png"} <= arts
        assert "**Export checks.** The exported program (3 folds" in md
        parents.add(lineage["parent_run_id"])
    assert len(parents) == 2


@NO_CHROMIUM
def test_the_report_page_draws_every_figure_in_headless_chromium_with_the_network_off(project, tmp_path):
    """The report's page is one file: in headless Chromium with every request that is not a
    local file refused, every figure is decoded and drawn. The screenshot stays in the test's
    temporary folder."""
    dst, _, _ = project
    sh(f"foldwise-report --no-mlflow --out {tmp_path / 'report'}", dst)
    refused = []
    with offline_page(refused) as page:
        page.goto((tmp_path / "report/report.html").as_uri())
        drawn = page.evaluate("() => [...document.images].map(i => i.complete && i.naturalWidth)")
        headings = page.locator("h2").all_inner_texts()
        page.screenshot(path=str(tmp_path / "report-offline.png"), full_page=True)
    assert not refused, refused
    assert len(drawn) == 3 and all(w > 100 for w in drawn), drawn  # curves, reliability, hardest
    assert {"What was run", "Folds", "Confusion (out of fold)", "Model card", "Links"} <= set(headings)


def test_pseudo_label_rounds_reuse_round_1_and_every_later_stage_reads_them(project):
    """`pseudo.*` are params of the pseudo stages only: an experiment that turns them on after a
    bag takes round 1 (train@k) from DVC's cache and trains only the further rounds, each in an
    MLflow run of its own (round 1's curve replayed before round 2's) under the parent that
    then receives the bag's metrics; the bag's OOF table holds the last round's predictions."""
    dst, _, _ = project
    client, before = mlflow_runs(dst)
    out = sh("dvc exp run -S pseudo.rounds=1 -S pseudo.epochs=1 -S pseudo.lr=0.001", dst).stdout
    assert "Running stage 'train@0'" not in out and "Running stage 'pseudo@0'" in out
    _, after = mlflow_runs(dst)
    new = [r for r in after if r.info.run_id not in {b.info.run_id for b in before}]
    assert not [r for r in new if r.data.tags.get("foldwise.role") == "fold"]
    assert sorted(r.data.tags["foldwise.fold"] for r in new
                  if r.data.tags.get("foldwise.role") == "pseudo") == [str(k) for k in range(FOLDS)]
    classes = [f"c{k}" for k in range(10)]
    bagged = pd.read_csv(dst / "data/bagged/oof.csv", dtype={"id": str}).set_index("id")
    m = json.loads((dst / "metrics/metrics.json").read_text())
    for k in range(FOLDS):
        last = dst / f"models/pseudo_{k}"
        assert list(pd.read_csv(last / "history.csv")["round"]) == [1] * EPOCHS + [2]
        info = json.loads((last / "run.json").read_text())
        rounds = sorted(client.get_metric_history(info["run_id"], "round"), key=lambda h: h.step)
        assert [h.value for h in rounds] == [1.0] * EPOCHS + [2.0]
        oof = pd.read_csv(last / "oof.csv", dtype={"id": str})
        np.testing.assert_allclose(bagged.loc[oof["id"], classes].to_numpy(), oof[classes].to_numpy(),
                                   atol=1e-6)
        first = pd.read_csv(dst / f"models/fold_{k}/oof.csv", dtype={"id": str})
        assert np.abs(first[classes].to_numpy() - oof[classes].to_numpy()).max() > 1e-3
        parent = client.get_run(info["parent_run_id"])
        assert parent.data.metrics["oof_logloss"] == pytest.approx(m["oof"]["logloss"])


@NO_CHROMIUM
def test_dvc_plots_show_renders_every_chart_in_headless_chromium_with_the_network_off(project, tmp_path):
    """DVC's page loaded vega from a CDN, so offline only hardest.png rendered. With the
    project's template and the bundle `make here` writes, every vega chart renders in headless
    Chromium with every request that is not a local file refused, and dvc_plots/ stays out of
    git. The screenshot stays in the test's temporary folder."""
    dst, _, _ = project
    sh(f"{sys.executable} -m foldwise.ensemble.plots", dst)  # as `make here` does
    sh("dvc plots show", dst)
    page_file = dst / "dvc_plots/index.html"
    assert "cdn.jsdelivr" not in page_file.read_text()
    assert sh("git check-ignore dvc_plots/index.html", dst).returncode == 0
    refused, errors = [], []
    with offline_page(refused) as page:
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(page_file.as_uri())
        charts = page.locator(".vega-embed")
        charts.first.wait_for(timeout=30_000)
        page.wait_for_function(  # every chart drawn (vega-embed adds its svg or canvas)
            "() => [...document.querySelectorAll('.vega-embed')].every("
            "e => e.querySelector('svg.marks, canvas.marks'))", timeout=30_000)
        drawn = charts.count()
        page.screenshot(path=str(tmp_path / "dvc-plots-offline.png"), full_page=True)
    assert not refused and not errors, (refused, errors)
    assert drawn >= 5  # the folds' curves, the curves of every fold, confusion, reliability


@pytest.fixture
def mlflow_server(project):
    dst, _, _ = project
    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
         f"sqlite:///{dst / 'mlflow.db'}", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/health", proc, "mlflow server")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@NO_CHROMIUM
@pytest.mark.extended  # headless Chromium
def test_the_mlflow_ui_shows_the_parent_its_folds_and_the_oof_score(project, mlflow_server, tmp_path):
    """`mlflow server` on loopback over this pipeline's store, opened in headless Chromium
    (Playwright): the parent's page from metrics/mlflow.json in the model-training view, the
    parent by its name, its folds when expanded, the oof_logloss column
    with the parent's value, and in the chart view one val_logloss chart whose legend holds
    every fold; the screenshots stay in the test's temporary folder."""
    playwright = pytest.importorskip("playwright.sync_api")
    dst, params, _ = project
    client, _ = mlflow_runs(dst)
    lineage = json.loads((dst / "metrics/mlflow.json").read_text())
    parent = client.get_run(lineage["parent_run_id"])  # the workspace's (other tests add more)
    experiment = parent.info.experiment_id
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page(viewport={"width": 2400, "height": 1000})
            # the parent's page as metrics/mlflow.json (and make mlflow-ui) give it: MLflow opened
            # it in the GenAI view (Judges, Evaluation runs), now in the model-training one
            page.goto(lineage["url"].replace(dashboard.UI, mlflow_server))
            page.wait_for_selector("text=Model registry", timeout=90_000)
            page.wait_for_selector(f"text={parent.info.run_name}", timeout=30_000)
            view = page.inner_text("body")
            page.goto(f"{mlflow_server}/#/experiments/{experiment}/runs?{dashboard.TRAINING_VIEW}")
            page.wait_for_selector(f"text={parent.info.run_name}", timeout=90_000)
            for expand in page.locator('button[data-component-id*="runnamecellrenderer"]').all():
                expand.click()  # a parent's folds are nested under it, collapsed
            page.wait_for_selector("text=fold 0", timeout=30_000)
            page.get_by_text("Columns", exact=True).click()
            page.keyboard.type("oof_logloss")
            page.get_by_text("oof_logloss", exact=True).last.click()
            page.keyboard.press("Escape")
            page.wait_for_timeout(1500)
            page.screenshot(path=str(tmp_path / "mlflow-experiment.png"), full_page=True)
            text = page.inner_text("body")
            # the chart view: every visible run a line, so the folds' validation curves on one chart
            page.goto(f"{mlflow_server}/#/experiments/{experiment}/runs?compareRunsMode=CHART&{dashboard.TRAINING_VIEW}")
            page.get_by_placeholder("Search metric charts").first.fill("val_logloss", timeout=60_000)
            page.wait_for_selector("text=fold 0 (val_logloss)", timeout=30_000)
            page.screenshot(path=str(tmp_path / "mlflow-fold-curves.png"), full_page=True)
            charts = page.inner_text("body")
        finally:
            browser.close()
    assert "Judges" not in view and "Evaluation runs" not in view
    assert parent.info.run_name in text
    assert all(f"fold {k}" in text for k in range(FOLDS))
    headers = text[text.index("Run Name"):]
    assert "oof_logloss" in headers
    assert f"{parent.data.metrics['oof_logloss']:.4f}"[:5] in text
    assert (tmp_path / "mlflow-experiment.png").stat().st_size > 10_000
    assert all(f"fold {k} (val_logloss)" in charts for k in range(FOLDS))  # one chart's legend


def test_neighbours_rerun_only_what_follows_evaluate_and_average_the_submission(project, tmp_path):
    """`neighbours.k`: the OOF score with and without, neighbours of a training image only in its
    own validation fold, and the submission the exported model's predictions averaged over the
    test graph; the folds, the bag and evaluate stay as they are. foldwise-predict on the test
    folder writes the submission (it averaged nothing before: the averaging is set-level, done
    from the export's feature program), and no MLflow model is logged (a served request is no
    test set; the model silently dropped the averaging before)."""
    from foldwise.ensemble import knn
    dst, _, _ = project
    before = pd.read_csv(dst / "export/submission.csv")
    out = sh("dvc exp run -S neighbours.k=3", dst).stdout
    for stage in ("train@0", "bag", "evaluate"):
        assert f"Running stage '{stage}'" not in out
    assert "Running stage 'neighbours'" in out and "Running stage 'export'" in out
    near = json.loads((dst / "metrics/neighbours.json").read_text())
    assert near["k"] == 3 and {"logloss", "logloss_without", "accuracy", "accuracy_without"} <= set(near["oof"])
    metrics = json.loads((dst / "metrics/metrics.json").read_text())["oof"]
    assert near["oof"]["logloss_without"] == pytest.approx(metrics["logloss"], abs=1e-9)
    folds = pd.read_csv(dst / "data/folds.csv")["fold"].to_numpy()
    oof_graph = np.load(dst / "data/neighbours/oof_graph.npz")
    assert (folds[oof_graph["idx"]] == folds[:, None]).all()
    graph = np.load(dst / "data/neighbours/graph.npz")
    assert graph["idx"].shape == (len(before), 3)
    after = pd.read_csv(dst / "export/submission.csv")
    classes = [f"c{k}" for k in range(10)]
    want = knn.smooth(before[classes].to_numpy(), graph["idx"], graph["sim"])
    np.testing.assert_allclose(after[classes].to_numpy(), want, atol=2e-6)
    assert "MLflow model not logged: the submission also applies neighbours.k=3" in out
    assert "the test graph from the shipped features: 100.0% of the neighbours stage's" in out
    predict = f"foldwise-predict export/model data/sample/statefarm/imgs/test {tmp_path / 'p.csv'}"
    sh(predict, dst)
    np.testing.assert_allclose(pd.read_csv(tmp_path / "p.csv")[classes].to_numpy(),
                               after[classes].to_numpy(), atol=1e-5)
    sh(predict + " --bag-only", dst)  # asked for: the program's own, which the bag's are
    np.testing.assert_allclose(pd.read_csv(tmp_path / "p.csv")[classes].to_numpy(),
                               before[classes].to_numpy(), atol=1e-5)
    assert "oof.logloss_without" in sh("dvc metrics show", dst).stdout  # DVC reads it as metrics
    _, all_runs = mlflow_runs(dst)  # the figures on the parent run that evaluate finished
    evaluated = [r for r in all_runs if "neighbours_oof_logloss" in r.data.metrics]
    assert len(evaluated) == 1 and evaluated[0].data.tags["foldwise.role"] == "parent"
    assert evaluated[0].data.metrics["neighbours_oof_logloss"] == pytest.approx(near["oof"]["logloss"])


def test_a_second_level_model_over_oof_and_neighbours_is_cross_fitted_and_makes_the_submission(project, tmp_path):
    """`stack.model`: only stack and export run; its OOF predictions are scikit-learn's
    logistic regression fit fold by fold on the other folds' rows (features: the bag's OOF log
    probabilities and the within-fold neighbours'), its figure scikit-learn's log loss on them;
    the submission is the saved model applied to the test predictions and their neighbours',
    and foldwise-predict on the test folder writes it (from the shipped weights and features)."""
    from sklearn.linear_model import LogisticRegression

    from foldwise.data.cache import load_truth
    from foldwise.ensemble import stack_model
    dst, _, _ = project
    out = sh("dvc exp run -S neighbours.k=3 -S stack.model=logistic -S stack.neighbours=3", dst).stdout
    for stage in ("train@0", "bag", "evaluate"):  # (neighbours: run-cache, or run if alone)
        assert f"Running stage '{stage}'" not in out
    assert "Running stage 'stack'" in out and "Running stage 'export'" in out
    classes = [f"c{k}" for k in range(10)]
    oof = pd.read_csv(dst / "data/bagged/oof.csv")
    truth, folds = load_truth(dst / "data/processed"), oof["fold"].to_numpy()
    g = np.load(dst / "data/neighbours/oof_graph.npz")
    x = stack_model.features(oof[classes].to_numpy(), g["idx"], g["sim"], 3)
    stacked = pd.read_csv(dst / "data/stack/oof.csv")
    for k in range(FOLDS):
        rows = folds == k
        ref = LogisticRegression(C=1.0, max_iter=2000).fit(x[~rows], truth[~rows])
        want = np.zeros((rows.sum(), 10))
        want[:, ref.classes_] = ref.predict_proba(x[rows])
        np.testing.assert_allclose(stacked.loc[rows, classes].to_numpy(), want, atol=1e-6)
    summary = json.loads((dst / "metrics/stack.json").read_text())
    assert summary["oof"]["logloss"] == pytest.approx(
        log_loss(truth, stacked[classes].to_numpy(), labels=range(10)), abs=1e-6)
    # measured against the submission without the stack (here averaged over neighbours), not
    # the plain bag, which credited the stack with what the neighbours (or calibration) did
    near = json.loads((dst / "metrics/neighbours.json").read_text())["oof"]
    # (the stack scores the averaged OOF rows as data/neighbours/oof.csv holds them: 8 digits)
    assert summary["oof_bag"]["logloss"] == pytest.approx(near["logloss"], rel=1e-7)
    assert summary["oof_bag_is"] == "bag, averaged over neighbours"
    test = pd.read_csv(dst / "data/bagged/test.csv")
    graph = np.load(dst / "data/neighbours/graph.npz")
    model = stack_model.load_model(dst / "data/stack")
    want = stack_model.predict(model, stack_model.features(test[classes].to_numpy(), graph["idx"], graph["sim"], 3), 10)
    sub = pd.read_csv(dst / "export/submission.csv")
    np.testing.assert_allclose(sub[classes].to_numpy(), want, atol=1e-4)  # exported vs eager bag
    sh(f"foldwise-predict export/model data/sample/statefarm/imgs/test {tmp_path / 'p.csv'}", dst)
    np.testing.assert_allclose(pd.read_csv(tmp_path / "p.csv")[classes].to_numpy(),
                               sub[classes].to_numpy(), atol=1e-5)
    assert "stack.json" in sh("dvc metrics show", dst).stdout
    _, all_runs = mlflow_runs(dst)
    stacked_runs = [r for r in all_runs if "stack_oof_logloss" in r.data.metrics]
    assert len(stacked_runs) == 1 and stacked_runs[0].data.tags["foldwise.role"] == "parent"
    assert stacked_runs[0].data.metrics["stack_oof_logloss"] == pytest.approx(summary["oof"]["logloss"])


def test_a_logistic_stack_without_neighbours_ships_inside_the_exported_model(project, tmp_path):
    """Without neighbour features the logistic stack is a layer of the exported program: the
    submission, `foldwise-predict` and the MLflow model all give the saved model applied to the
    bag's test predictions."""
    import mlflow.pyfunc

    from foldwise.ensemble import stack_model
    dst, _, _ = project
    out = sh("dvc exp run -S neighbours.k=3 -S stack.model=logistic -S stack.neighbours=0", dst).stdout
    assert "Running stage 'train@0'" not in out and "Running stage 'export'" in out
    meta = json.loads((dst / "export/model/meta.json").read_text())
    assert meta["stack"] == {"model": "logistic", "neighbours": 0, "in_program": True, "weights": False}
    classes = [f"c{k}" for k in range(10)]
    test = pd.read_csv(dst / "data/bagged/test.csv")
    empty = np.zeros((len(test), 0), dtype=np.int64)
    want = stack_model.predict(stack_model.load_model(dst / "data/stack"),
                         stack_model.features(test[classes].to_numpy(), empty, empty, 0), 10)
    sub = pd.read_csv(dst / "export/submission.csv")
    np.testing.assert_allclose(sub[classes].to_numpy(), want, atol=1e-4)  # exported vs eager bag
    predicted = tmp_path / "pred.csv"
    sh(f"foldwise-predict export/model data/sample/statefarm/imgs/test {predicted}", dst)
    np.testing.assert_allclose(pd.read_csv(predicted)[classes].to_numpy(), sub[classes].to_numpy(),
                               atol=1e-5)
    uri = re.search(r"MLflow model (models:/[^,\s]+)", out).group(1)
    mlflow.set_tracking_uri(f"sqlite:///{dst / 'mlflow.db'}")
    images = np.load(dst / "data/processed/test.npy")
    np.testing.assert_allclose(mlflow.pyfunc.load_model(uri).predict(images), sub[classes].to_numpy(),
                               atol=1e-5)


@pytest.fixture(scope="module")
def one_network(project):
    """One experiment on the finished pipeline with both one-network deployments on: the
    distilled student and the refit network (only their stages and the speed stage run)."""
    dst, _, _ = project
    assert json.loads((dst / "metrics/distill.json").read_text()) == {"model": ""}  # off so far
    assert json.loads((dst / "metrics/refit.json").read_text()) == {"epochs": 0}
    out = sh("dvc exp run -S distill.model=resnet10t -S distill.epochs=2 -S refit.epochs=auto",
             dst).stdout
    for stage in ("train@0", "bag", "stack", "export"):
        assert f"Running stage '{stage}'" not in out
    assert "Running stage 'distill'" in out and "Running stage 'refit'" in out
    return out


def test_a_distilled_network_ships_as_one_forward_pass_with_its_figures_labelled(project, one_network,
                                                                                 tmp_path):
    """`distill.model`: only the distill stage runs; its student learns the stack's
    probabilities (the teacher the pipeline ships), is exported as a one-network program that
    `foldwise-predict` and its MLflow model reproduce, and its figures are what they say:
    fidelity to the teacher on the test images by hand, the training images' figures
    scikit-learn's and labelled not out-of-fold; its run a child of the pipeline's parent."""
    import mlflow.pyfunc
    from sklearn.metrics import accuracy_score

    from foldwise.data.cache import load_truth
    from foldwise.deploy import program
    from foldwise.ensemble import stack_model
    dst, _, _ = project
    out = one_network
    classes = [f"c{k}" for k in range(10)]
    test = pd.read_csv(dst / "data/bagged/test.csv")
    # the stack tests before this one set stack.model; run alone, the teacher is the bag
    stacked = yaml.safe_load((dst / "params.yaml").read_text())["stack"]["model"]
    if stacked:
        empty = np.zeros((len(test), 0), dtype=np.int64)
        teacher = stack_model.predict(stack_model.load_model(dst / "data/stack"),  # the stack in the program
                                      stack_model.features(test[classes].to_numpy(), empty, empty, 0), 10)
    else:  # the bag's test rows, tempered by hand with evaluate's temperature
        t = json.loads((dst / "metrics/metrics.json").read_text())["oof"].get("temperature", 1.0)
        teacher = test[classes].to_numpy() ** (1 / t)
        teacher /= teacher.sum(axis=1, keepdims=True)
    model, meta = program.load(dst / "export/distilled/model")
    assert meta["folds"] == 1
    assert meta["distilled"] == {"model": "resnet10t", "teacher": "stack" if stacked else "bag"}
    raw = program.run_model(model, np.load(dst / "data/processed/test.npy"))
    figures = json.loads((dst / "metrics/distill.json").read_text())
    p = np.clip(raw, 1e-15, 1)
    p /= p.sum(axis=1, keepdims=True)
    assert figures["test_fidelity"]["logloss"] == pytest.approx(-(teacher * np.log(p)).sum(axis=1).mean(), rel=1e-6)
    assert figures["test_fidelity"]["agreement"] == np.mean(teacher.argmax(1) == raw.argmax(1))
    truth = load_truth(dst / "data/processed")
    on_train = program.run_model(model, np.load(dst / "data/processed/train.npy"))
    on_train /= on_train.sum(axis=1, keepdims=True)  # float32 softmax rows, to scikit-learn's tolerance
    assert figures["train_not_out_of_fold"]["logloss"] == pytest.approx(log_loss(truth, on_train, labels=range(10)), rel=1e-6)
    assert figures["train_not_out_of_fold"]["accuracy"] == pytest.approx(accuracy_score(truth, on_train.argmax(1)))
    speed = json.loads((dst / "metrics/speed.json").read_text())  # the speed stage, after both
    assert "Running stage 'speed'" in out and speed["distill"] == "resnet10t"
    assert speed["student_images_per_s"] > 0 and speed["bag_images_per_s"] > 0
    ship = dst / "src/foldwise/deploy/export.py"  # a change to the export alone ...
    original = ship.read_text()
    try:
        ship.write_text(original + "\n# an export-only change\n")
        status = sh("dvc status", dst).stdout
    finally:
        ship.write_text(original)
    assert "export:" in status and "distill:" not in status, status  # ... keeps the student
    sub = pd.read_csv(dst / "export/distilled/submission.csv")
    assert list(sub.columns) == list(pd.read_csv(dst / "export/submission.csv").columns)
    clip = meta["decision"]["clip"]  # the teacher's, fit on its OOF rows
    want = np.clip(raw, clip, 1 - clip) if clip else raw
    np.testing.assert_allclose(sub[classes].to_numpy(), want / want.sum(axis=1, keepdims=True), atol=1e-5)
    predicted = tmp_path / "pred.csv"
    sh(f"foldwise-predict export/distilled/model data/sample/statefarm/imgs/test {predicted}", dst)
    np.testing.assert_allclose(pd.read_csv(predicted)[classes].to_numpy(), sub[classes].to_numpy(), atol=1e-4)
    uri = re.search(r"distilled .* MLflow model (models:/\S+)", out).group(1)
    mlflow.set_tracking_uri(f"sqlite:///{dst / 'mlflow.db'}")
    images = np.load(dst / "data/processed/test.npy")
    np.testing.assert_allclose(mlflow.pyfunc.load_model(uri).predict(images), sub[classes].to_numpy(), atol=1e-5)
    client, all_runs = mlflow_runs(dst)
    students = [r for r in all_runs if r.data.tags.get("foldwise.role") == "distilled"]
    assert len(students) == 1 and students[0].info.status == "FINISHED"
    parent = client.get_run(students[0].data.tags["mlflow.parentRunId"])
    assert parent.data.tags["foldwise.role"] == "parent"  # the parent that holds the folds
    assert ("stack_oof_logloss" in parent.data.metrics) == bool(stacked)  # ... and the stack
    assert len(client.get_metric_history(students[0].info.run_id, "val_agreement")) == 2
    assert students[0].data.metrics["test_fidelity_agreement"] == figures["test_fidelity"]["agreement"]
    assert "distill.json" in sh("dvc metrics show", dst).stdout


def test_a_refit_network_trains_on_every_image_for_the_folds_median_epochs_and_ships(project, one_network,
                                                                                    tmp_path):
    """`refit.epochs: auto`: one network of the folds' recipe trained on every training image
    for the median of the folds' kept epochs, in-sample figures named so and no OOF figure;
    exported with the bag's temperature and decision, its program reproduced by
    `foldwise-predict`; compared with the bag on the test images by hand; its run a child of
    the pipeline's parent with its history, learning curve and MLflow model; timed beside the
    bag."""
    import mlflow.pyfunc

    from foldwise.data.cache import load_truth
    from foldwise.deploy import program
    from foldwise.ensemble import calibration
    dst, _, _ = project
    out = one_network
    kept = sorted(json.loads((dst / f"models/fold_{k}/run.json").read_text())["best_epoch"] + 1
                  for k in range(FOLDS))
    figures = json.loads((dst / "metrics/refit.json").read_text())
    assert figures["epochs"] == kept[FOLDS // 2] and figures["oof"] is None and figures["no_oof"]
    history = pd.read_csv(dst / "metrics/history/refit.csv")
    assert len(history) == figures["epochs"] and not [c for c in history if "val_" in c]
    assert "insample_logloss" in history and "insample_metric" in history
    model, meta = program.load(dst / "export/refit/model")
    metrics = json.loads((dst / "metrics/metrics.json").read_text())["oof"]
    assert meta["folds"] == 1 and meta["refit"]["epochs"] == figures["epochs"]
    assert meta["temperature"] == metrics.get("temperature", 1.0)  # the bag's, fit out of fold
    got = program.run_model(model, np.load(dst / "data/processed/test.npy"))
    classes = [f"c{k}" for k in range(10)]
    bag = calibration.temper(pd.read_csv(dst / "data/bagged/test.csv")[classes].to_numpy(),
                             metrics.get("temperature", 1.0))
    near = figures["vs_bag_on_test"]
    assert near["agreement"] == np.mean(bag.argmax(1) == got.argmax(1))
    assert near["mean_abs_diff"] == pytest.approx(np.abs(got - bag).mean(), rel=1e-5)
    on_train = program.run_model(model, np.load(dst / "data/processed/train.npy"))
    on_train /= on_train.sum(axis=1, keepdims=True)
    truth = load_truth(dst / "data/processed")
    assert figures["train_not_out_of_fold"]["logloss"] == pytest.approx(
        log_loss(truth, on_train, labels=range(10)), rel=1e-6)
    sub = pd.read_csv(dst / "export/refit/submission.csv")
    clip = meta["decision"]["clip"]
    want = np.clip(got, clip, 1 - clip) if clip else got
    np.testing.assert_allclose(sub[classes].to_numpy(), want / want.sum(axis=1, keepdims=True), atol=1e-5)
    predicted = tmp_path / "pred.csv"
    sh(f"foldwise-predict export/refit/model data/sample/statefarm/imgs/test {predicted}", dst)
    np.testing.assert_allclose(pd.read_csv(predicted)[classes].to_numpy(), sub[classes].to_numpy(), atol=1e-4)
    client, runs = mlflow_runs(dst)
    [refit] = [r for r in runs if r.data.tags.get("foldwise.role") == "refit"]
    assert refit.info.status == "FINISHED" and refit.info.run_id == figures["mlflow_run_id"]
    parent = client.get_run(refit.data.tags["mlflow.parentRunId"])
    assert parent.data.tags.get("foldwise.role") == "parent" and "oof_logloss" in parent.data.metrics
    assert {a.path for a in client.list_artifacts(refit.info.run_id)} >= {"history.csv", "learning_curve.png"}
    assert len(client.get_metric_history(refit.info.run_id, "insample_logloss")) == figures["epochs"]
    assert not [k for k in refit.data.metrics if k.startswith("val_")]
    uri = re.search(r"refit .* MLflow model (models:/\S+)", out).group(1)
    mlflow.set_tracking_uri(f"sqlite:///{dst / 'mlflow.db'}")
    np.testing.assert_allclose(mlflow.pyfunc.load_model(uri).predict(np.load(dst / "data/processed/test.npy")),
                               sub[classes].to_numpy(), atol=1e-5)
    speed = json.loads((dst / "metrics/speed.json").read_text())
    assert speed["refit_images_per_s"] > 0 and speed["refit_speedup"] > 0


@pytest.mark.extended  # a model server
def test_the_best_export_is_the_registered_champion_and_served_as_foldwise_predict_predicts(project, tmp_path):
    """Every export is a version of the registered model named after the experiment, the task
    and the data set (foldwise-statefarm-sample), tagged with the OOF log loss of what it
    computes (the stack's where the program holds it, the bag's otherwise) and with its task,
    metric and training table; the alias `champion` is on the lowest (the earliest of equals);
    `mlflow models serve --env-manager local` of models:/foldwise-statefarm-sample@champion
    answers images posted on loopback with what `foldwise-predict` writes from that version's
    own export folder."""
    import mlflow.artifacts
    from mlflow.tracking import MlflowClient
    dst, params, _ = project
    uri = f"sqlite:///{dst / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    name = "foldwise-statefarm-sample"
    versions = client.search_model_versions(f"name = '{name}'")
    assert len(versions) >= 1
    assert {v.tags["foldwise.task"] for v in versions} == {"statefarm"}
    assert {v.tags["foldwise.data"] for v in versions} == {
        hashlib.sha256((dst / "data/processed/train.csv").read_bytes()).hexdigest()[:16]}
    scores = {v.version: float(v.tags["oof_logloss"]) for v in versions}
    stacked = json.loads((dst / "metrics/stack.json").read_text())["oof"]["logloss"]
    for v in versions:  # a plain export: its bag's figure (the pseudo rounds' bag is another)
        bag = client.get_run(v.run_id).data.metrics["oof_logloss"]
        assert scores[v.version] in (bag, stacked), v.version
    assert stacked in scores.values()  # the stack in the program
    champion = client.get_model_version_by_alias(name, "champion")
    best = min(scores.values())
    assert scores[champion.version] == best  # ties: the earliest such version keeps it
    assert int(champion.version) == min(int(v) for v, score in scores.items() if score == best)
    port = free_port()
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri,
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m",
                               f"models:/{name}@champion", "--env-manager", "local", "--host",
                               "127.0.0.1", "--port", str(port)], cwd=dst, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/ping", server, "mlflow models serve")
        images = np.load(dst / "data/processed/test.npy")[:5]
        request = urllib.request.Request(f"{url}/invocations", method="POST",
                                         data=json.dumps({"inputs": images.tolist()}).encode(),
                                         headers={"Content-Type": "application/json"})
        served = np.array(json.loads(urllib.request.urlopen(request, timeout=120).read())["predictions"])
    finally:
        server.terminate()
        server.wait(timeout=30)
    source = client.get_model_version_download_uri(name, champion.version)
    model = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(tmp_path / "champion"),
                                                tracking_uri=uri)
    export_dir = next(Path(model).rglob("bagged.pt2")).parent
    ids = pd.read_csv(dst / "data/bagged/test.csv")["id"][:5]
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    for i in ids:
        shutil.copy(dst / "data/sample/statefarm/imgs/test" / i, images_dir / i)
    sh(f"foldwise-predict {export_dir} {images_dir} {tmp_path / 'predicted.csv'}", dst)
    predicted = pd.read_csv(tmp_path / "predicted.csv").set_index("img").loc[list(ids)]
    np.testing.assert_allclose(served, predicted[[f"c{k}" for k in range(10)]].to_numpy(), atol=1e-5)

