"""The second-level model against test neighbours on a sample, on the same trained folds.

  python benchmarks/stack_sample.py WORK_DIR [--source statefarm] [--k 5] [--c 1 10]
                                    [--out benchmarks/stack-statefarm.json]

Copies this project into WORK_DIR/project (the source's preset), runs `dvc repro` with
calibration on and `neighbours.k` K, then one `dvc exp run` per second-level model (the folds,
bag, evaluate and neighbours restored from DVC's run-cache): logistic regression on the bag's
OOF predictions alone, with the K neighbours' too, and histogram gradient boosting with them,
each at every `stack.c` given (the inverse regularisation strength).
Then one more with `neighbours.k=0` (the calibrated bag alone). Reads each one's OOF figures
(metrics/metrics.json, neighbours.json, stack.json) and, for State Farm's sample, scores its
submission against the sample's test labels (`statefarm.sample_test_labels`, which no stage
reads; scikit-learn's log loss and accuracy), so that each OOF gain over the calibrated bag
stands beside the gain it made on the test set. Times each command, prints a table and writes
it as JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import project  # noqa: E402

STACKS = {"logistic": ["stack.model=logistic", "stack.neighbours=0"],
          "logistic + neighbours": ["stack.model=logistic", "stack.neighbours={k}"],
          "hist_gradient_boosting + neighbours": ["stack.model=hist_gradient_boosting",
                                                  "stack.neighbours={k}"]}


def timed(cmd: str, dst: Path) -> float:
    t0 = time.perf_counter()
    project.run(cmd, dst)
    return time.perf_counter() - t0


def read(dst: Path, name: str) -> dict:
    return json.loads((dst / "metrics" / name).read_text())


def test_scores(dst: Path, source: str) -> dict:
    """The submission's test log loss and accuracy against the sample's own labels (State
    Farm's sample only: the other sources' samples are scored by their tests)."""
    import pandas as pd
    import yaml
    from sklearn.metrics import accuracy_score, log_loss

    from foldwise.data.sources import statefarm
    if source != "statefarm":
        return {}
    params = yaml.safe_load((dst / "sample.yaml").read_text())["sample"]
    labels = statefarm.sample_test_labels(**params["statefarm"], seed=params["seed"])
    sub = pd.read_csv(dst / "export/submission.csv")
    y = [statefarm.CLASSES.index(labels[name]) for name in sub["img"]]
    p = sub[list(statefarm.CLASSES)].to_numpy()
    p = p / p.sum(axis=1, keepdims=True)
    return {"test_logloss": log_loss(y, p, labels=range(len(statefarm.CLASSES))),
            "test_accuracy": accuracy_score(y, p.argmax(axis=1))}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work_dir", type=Path)
    ap.add_argument("--source", default="statefarm")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--c", type=float, nargs="+", default=[1.0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "stack-statefarm.json")
    args = ap.parse_args(argv)
    dst = args.work_dir / "project"
    dst.mkdir(parents=True, exist_ok=True)

    def change(p):
        p["calibration"]["temperature"] = True
        p["neighbours"]["k"] = args.k
    project.copy(dst, change)
    if args.source != "statefarm":
        project.run(f"python -m foldwise.presets {args.source} && git commit -qam preset", dst)
    seconds = timed("dvc repro", dst)
    oof, near = read(dst, "metrics.json")["oof"], read(dst, "neighbours.json")["oof"]
    rows = [{"what": "bag", "logloss": oof["logloss"], "accuracy": oof["accuracy"]},
            {"what": "bag, calibrated (cross-fitted)", "logloss": oof["logloss_calibrated"]},
            {"what": f"+ {args.k} test neighbours", "logloss": near["logloss"],
             "accuracy": near["accuracy"], "seconds": seconds, **test_scores(dst, args.source)}]
    for c in args.c:
        for name, sets in STACKS.items():
            flags = " ".join(f"-S {s.format(k=args.k)}" for s in sets) + f" -S stack.c={c:g}"
            flags += f" -S neighbours.k={args.k}"
            seconds = timed(f"dvc exp run {flags}", dst)
            stack = read(dst, "stack.json")
            rows.append({"what": f"stack: {name}, c {c:g}", "logloss": stack["oof"]["logloss"],
                         "accuracy": stack["oof"]["accuracy"], "features": stack["features"],
                         "seconds": seconds, **test_scores(dst, args.source)})
            print(rows[-1], flush=True)
    seconds = timed("dvc exp run -S neighbours.k=0 -S \"stack.model=''\"", dst)
    rows[1].update(seconds=seconds, **test_scores(dst, args.source))
    args.out.write_text(json.dumps({"source": args.source, "k": args.k, "rows": rows}, indent=2) + "\n")
    base = rows[1]
    print(f"{'':<40} OOF log loss (gain) / test log loss (gain) / accuracy OOF, test")
    for r in rows:
        oof_gain = base["logloss"] - r["logloss"]
        test = (f"{r['test_logloss']:.4f} ({base['test_logloss'] - r['test_logloss']:+.4f})"
                if "test_logloss" in r and "test_logloss" in base else "-")
        print(f"{r['what']:<40} {r['logloss']:.4f} ({oof_gain:+.4f})  {test}  "
              f"{r.get('accuracy', float('nan')):.4f} {r.get('test_accuracy', float('nan')):.4f}  "
              f"{r.get('seconds', 0):.0f} s")


if __name__ == "__main__":
    main()
