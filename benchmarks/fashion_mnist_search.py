"""`foldwise-search` on real data: a study over Fashion-MNIST, its trials scored on the test labels.

  python benchmarks/fashion_mnist.py write DATA_DIR --per-class 1000
  python benchmarks/fashion_mnist_search.py run DATA_DIR WORK_DIR [--trials 14] [--folds 3]
                                            [--epochs 4] [--workers 1]
  python benchmarks/fashion_mnist_search.py screenshot WORK_DIR [--out DIR]

`run` copies this project into WORK_DIR/project, points it at DATA_DIR (timm's test_resnet at
56x56 grey, `--folds` folds, `--epochs` epochs, batch 64: `fashion_mnist.py`'s base), commits
the study below as its `search.yaml` and runs `foldwise-search` there (run it again after a kill:
the study resumes). The study's first two trials are its `start`: the defaults (the benchmarks
doc's "foldwise, defaults" rows) and the hand-tuned recipe of that doc (random resized crops of
at least 88% of the area and no shift, scale or rotation, gradient clipping at 1.0, EMA 0.998,
mirror and shift TTA, calibration). The trials stop at evaluate (`until: evaluate`: the
objective, no export each). Then the best trial and the two starts are brought into the
project (`dvc exp apply`), finished with `dvc repro` (export; the rest from the run-cache) and
their submissions scored on the 10,000 test labels (scikit-learn); pruned trials ran fold 0
only. Writes the table as JSON.

`screenshot` serves the project's MLflow store on loopback (`mlflow server`) and opens the study
in headless Chromium (Playwright): the study run, its trials nested under it, the best trial's
folds under that; writes a PNG.
"""
from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fashion_mnist as fm  # noqa: E402
import project  # noqa: E402

STUDY = "fmnist"
SPACE = {
    "lr": {"low": 5.0e-4, "high": 1.0e-2, "log": True},
    "train.weight_decay": {"low": 0.01, "high": 0.2, "log": True},
    "train.label_smoothing": {"low": 0.0, "high": 0.1},
    "train.augment.crop_area": {"low": 0.7, "high": 1.0},
    "train.augment.shift": {"low": 0.0, "high": 0.1},
    "train.augment.scale": {"low": 0.0, "high": 0.1},
    "train.augment.rotate": {"low": 0.0, "high": 10.0},
    "train.clip_grad": {"choices": [0.0, 1.0]},
    "train.ema.decay": {"choices": [0.0, 0.99, 0.998]},
    "tta.hflip": {"choices": [False, True]},
    "tta.shift": {"choices": [0.0, 0.04]},
    "calibration.temperature": {"choices": [False, True]},
}
DEFAULTS = {"lr": 0.002, "train.weight_decay": 0.05, "train.label_smoothing": 0.0,
            "train.augment.crop_area": 1.0, "train.augment.shift": 0.06,
            "train.augment.scale": 0.06, "train.augment.rotate": 5.0, "train.clip_grad": 0.0,
            "train.ema.decay": 0.0, "tta.hflip": False, "tta.shift": 0.0,
            "calibration.temperature": False}
RECIPE = {**DEFAULTS, "train.augment.crop_area": 0.88, "train.augment.shift": 0.0,
          "train.augment.scale": 0.0, "train.augment.rotate": 0.0, "train.clip_grad": 1.0,
          "train.ema.decay": 0.998, "tta.hflip": True, "tta.shift": 0.04,
          "calibration.temperature": True}


def base(data: Path, folds: int, epochs: int):
    fashion = fm.base_params(data, folds, epochs)

    def change(p):
        fashion(p)
        p["preprocess"].update(height=56, width=56)
        p["train"]["model"] = "test_resnet"
    return change


def prepare(data: Path, work: Path, trials: int, folds: int, epochs: int) -> Path:
    dst = work / "project"
    dst.mkdir(parents=True, exist_ok=True)
    project.copy(dst, base(data.resolve(), folds, epochs))
    search = {"study": STUDY, "trials": trials, "objective": "logloss", "direction": "minimize",
              "sampler": "tpe", "seed": 0, "pruner": "median", "startup_trials": 3,
              "until": "evaluate", "space": SPACE, "start": {"defaults": DEFAULTS, "recipe": RECIPE}}
    (dst / "search.yaml").write_text(yaml.safe_dump(search, sort_keys=False))
    project.run("git add -A && (git diff --cached --quiet || git commit -qm search)", dst)
    return dst


def load_study(dst: Path) -> optuna.Study:
    return optuna.load_study(study_name=STUDY, storage=f"sqlite:///{dst / '.foldwise/search.db'}")


def trial_row(dst: Path, data: Path, t, score: bool) -> dict:
    """One trial's row; a finished one's OOF figures from its experiment, and with `score` its
    submission (the trial applied and `dvc repro`: export, the rest from the run-cache) scored
    on the test labels."""
    row = {"trial": t.number, "state": t.state.name, "start": t.user_attrs.get("start", ""),
           "experiment": t.user_attrs.get("experiment"), "params": t.params,
           "fold0_val_logloss": t.intermediate_values.get(0),
           "minutes": (t.datetime_complete - t.datetime_start).total_seconds() / 60
           if t.datetime_complete else None}
    if t.state.name != "COMPLETE":
        return row
    # `dvc exp apply` applies the trial's params and lock, then fails checking out the outputs
    # of the stages after `until` that no trial ran; evaluate's and upstream come back from the
    # cache, and the objective read back from them proves the trial's are in place
    project.run(f"dvc exp apply {row['experiment']}; dvc checkout -q --with-deps evaluate", dst)
    oof = json.loads((dst / "metrics" / "metrics.json").read_text())["oof"]
    if abs(oof.get("logloss_calibrated", oof["logloss"]) - t.value) > 1e-9:
        raise RuntimeError(f"trial {t.number}: {row['experiment']} was not applied")
    row.update(objective=t.value, oof_logloss=oof["logloss"], oof_accuracy=oof["accuracy"],
               oof_logloss_calibrated=oof.get("logloss_calibrated"))
    if score:
        t0 = time.perf_counter()
        project.run("dvc repro", dst)
        row["export_minutes"] = (time.perf_counter() - t0) / 60
        row.update(fm.test_scores(dst / "export" / "submission.csv", data))
    return row


def run(data: Path, work: Path, trials: int, folds: int, epochs: int, workers: int,
        out: Path) -> None:
    dst = prepare(data, work, trials, folds, epochs)
    t0 = time.perf_counter()
    project.run(f"foldwise-search --workers {workers} > {work / 'search.log'} 2>&1", dst)
    minutes = (time.perf_counter() - t0) / 60
    study = load_study(dst)
    best = study.best_trial
    scored = {best.number} | {t.number for t in study.trials if t.user_attrs.get("start")}
    rows = [trial_row(dst, data, t, t.number in scored)  # a killed trial's queued retry: not run
            for t in sorted(study.trials, key=lambda t: t.number) if t.state.name != "WAITING"]
    # the project's own params.yaml and dvc.lock again, no outputs a rerun's copy would commit
    project.run("git checkout -q -- . && rm -rf models metrics export data/processed data/bagged "
                "data/neighbours data/stack data/folds.csv", dst)
    report = {"data": str(data), "folds": folds, "epochs": epochs, "workers": workers,
              "search_minutes": minutes, "best_trial": best.number, "space": SPACE,
              "rows": rows}
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(table(rows, best.number))


def table(rows: list[dict], best: int) -> str:
    lines = ["| trial | start | state | fold 0 val log loss | OOF log loss | OOF acc | test log loss "
             "| test acc | minutes |", "|---|---|---|---|---|---|---|---|---|"]
    def f(v, digits=4):
        return "" if v is None else f"{v:.{digits}f}"
    for r in rows:
        name = f"**{r['trial']}**" if r["trial"] == best else str(r["trial"])
        lines.append(f"| {name} | {r['start']} | {r['state']} | {f(r['fold0_val_logloss'])} | "
                     f"{f(r.get('objective'))} | {f(r.get('oof_accuracy'))} | "
                     f"{f(r.get('test_logloss'))} | {f(r.get('test_accuracy'))} | "
                     f"{f(r['minutes'], 1)} |")
    return "\n".join(lines)


def serve(store: Path):
    """`mlflow server` over the project's store on a free loopback port; (process, url)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server",
                             "--backend-store-uri", f"sqlite:///{store}", "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            urllib.request.urlopen(f"{url}/health", timeout=1)
            return proc, url
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    sys.exit("mlflow server did not answer on /health within 2 minutes")


def screenshot(work: Path, out: Path) -> None:
    from playwright.sync_api import sync_playwright
    dst = work / "project"
    with sqlite3.connect(dst / "mlflow.db") as db:
        experiment, study_run = db.execute(
            "select r.experiment_id, r.name from runs r join tags t on t.run_uuid = r.run_uuid "
            "where t.key = 'foldwise.role' and t.value = 'study'").fetchone()
    out.mkdir(parents=True, exist_ok=True)
    proc, url = serve(dst / "mlflow.db")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True)
            page = browser.new_page(viewport={"width": 2000, "height": 1400})
            page.goto(f"{url}/#/experiments/{experiment}/runs")
            page.wait_for_selector(f"text={study_run}", timeout=90_000)
            expand = 'button[data-component-id*="runnamecellrenderer"]'
            page.locator(expand).first.click()  # the study: its trials
            page.wait_for_timeout(1500)
            best = load_study(dst).best_trial.user_attrs["experiment"]
            row = page.locator('[role="row"]', has_text=best)  # the best trial: its folds
            (row.locator(expand).first if row.count() else page.locator(expand).nth(1)).click()
            page.wait_for_timeout(1500)
            page.screenshot(path=str(out / "fashion-mnist-search-mlflow.png"), full_page=True)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(f"wrote {out / 'fashion-mnist-search-mlflow.png'}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="the study, then its finished trials scored on the test labels")
    r.add_argument("data_dir", type=Path)
    r.add_argument("work_dir", type=Path)
    r.add_argument("--trials", type=int, default=16)
    r.add_argument("--folds", type=int, default=3)
    r.add_argument("--epochs", type=int, default=4)
    r.add_argument("--workers", type=int, default=1)
    r.add_argument("--out", type=Path, default=Path(__file__).parent / "fashion-mnist-search.json")
    s = sub.add_parser("screenshot", help="the study in the MLflow UI, headless Chromium")
    s.add_argument("work_dir", type=Path)
    s.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args(argv)
    if args.command == "run":
        run(args.data_dir, args.work_dir, args.trials, args.folds, args.epochs, args.workers,
            args.out)
    else:
        screenshot(args.work_dir, args.out)


if __name__ == "__main__":
    main()
