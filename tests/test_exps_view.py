"""`make exps` drops every column `dvc exp show` names by a path (the hash of a stage's
dependency), your own data root's too, and keeps params and metrics: with data.root outside
the project, a column `../fm` of hashes crowded the OOF figures out of a terminal."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def dropped() -> re.Pattern:
    line = next(l for l in (ROOT / "Makefile").read_text().splitlines() if l.startswith("EXPS_DROP ?="))
    return re.compile(line.split("?=", 1)[1].strip().replace("$$", "$"))


def test_every_path_column_is_dropped_and_params_and_metrics_stay():
    drop = dropped()
    for column in ("../fm", "/data/own/set", "src/foldwise/tasks.py", "data/processed", "stages/train.py",
                   "metrics/metrics.json", "folds.0.logloss", "k", "sample.statefarm.drivers", "weights"):
        assert drop.match(column), column  # as DVC matches it
    for column in ("oof.logloss", "spread.folds_std_logloss", "bag.mean", "lr", "train.augment.crop_area",
                   "data.root", "preprocess.height", "seed"):
        assert not drop.match(column), column
