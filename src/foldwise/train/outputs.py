"""A trained fold's folder, `models/fold_K/` (round 1) or `models/pseudo_K/` (its last
pseudo-label round, where `pseudo.rounds` > 0): the one module that writes and reads them.
Readers get a fold's final folder (`final_dir`): the pseudo-label rounds' where they trained,
and only while they were built from the round 1 beside them (their run.json's `round_1`, the
digest of round 1's model.pt): a later round left from another round 1 (a checkout where only
`train@K` ran since) is refused, never read.

    model.pt     the checkpoint: {"spec": models' spec, "state_dict", "fold"}
    oof.csv      id, group, fold, [label,] one column per output: the validation predictions
    test.csv     id, one column per output: the test predictions
    run.json     the fold's MLflow run ids, device, precision and summary figures
    history.csv  one row per epoch
"""
from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np

from foldwise.errors import InputError
from foldwise.files import atomic_dir, write_csv

if TYPE_CHECKING:  # pandas where it is used: a stage switched off never loads it (0.3 s)
    import pandas as pd

FLOATS = "%.8g"


def fold_dir(models: str | Path, fold: int) -> Path:
    """Round 1's folder (the train stage's)."""
    return Path(models) / f"fold_{fold}"


def pseudo_dir(models: str | Path, fold: int) -> Path:
    """The pseudo stage's folder: the last round's files, or only `rounds.json` (rounds 0)."""
    return Path(models) / f"pseudo_{fold}"


def final_dir(models: str | Path, fold: int) -> Path:
    """The fold's final model: its last pseudo-label round where one trained from the round 1
    in `models`, else round 1; an InputError for a later round of another round 1."""
    later = pseudo_dir(models, fold)
    if not (later / "model.pt").exists():
        return fold_dir(models, fold)
    built_from = json.loads((later / "run.json").read_text()).get("round_1")
    if built_from != round_1_digest(models, fold):
        raise InputError(f"{later} was trained from another round 1 than {fold_dir(models, fold)}"
                         f" holds now (stale: left by an earlier run); run `dvc repro "
                         f"pseudo@{fold}` to rebuild it from this one")
    return later


def round_1_digest(models: str | Path, fold: int) -> str:
    """What a later round records as its start: round 1's model.pt, by content."""
    path = fold_dir(models, fold) / "model.pt"
    stat = path.stat()
    return _digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_no_rounds(out: str | Path) -> None:
    """The pseudo stage's folder when `pseudo.rounds` is 0: round 1 stays the fold's model."""
    with atomic_dir(out) as tmp:
        (tmp / "rounds.json").write_text(json.dumps({"rounds": 0}) + "\n")


def prediction_table(ids, preds, columns, **extra) -> pd.DataFrame:
    """ids first, then `extra` columns in order, then one column per output."""
    import pandas as pd
    df = pd.DataFrame(np.asarray(preds), columns=list(columns))
    for i, (name, values) in enumerate({"id": ids, **extra}.items()):
        df.insert(i, name, np.asarray(values))
    return df


def oof_table(ids, groups, fold: int, labels: np.ndarray, preds, columns) -> pd.DataFrame:
    """A fold's validation rows: the label column only where labels are one class per row."""
    extra = {"group": groups, "fold": np.full(len(ids), fold)}
    if np.asarray(labels).ndim == 1:
        extra["label"] = labels
    return prediction_table(ids, preds, columns, **extra)


def write(out: str | Path, checkpoint: dict, oof: pd.DataFrame, test: pd.DataFrame,
          run_info: dict, history: pd.DataFrame) -> None:
    """The whole folder in one atomic replacement: a kill leaves the old folder or the new."""
    from foldwise.train import checkpoints  # torch: the readers of this module need none
    with atomic_dir(out) as tmp:
        checkpoints.save(checkpoint, tmp / "model.pt")
        write_csv(oof, tmp / "oof.csv", float_format=FLOATS)
        write_csv(test, tmp / "test.csv", float_format=FLOATS)
        (tmp / "run.json").write_text(json.dumps(run_info, indent=2) + "\n")
        write_csv(history, tmp / "history.csv")


def read_oof(models: str | Path, fold: int, where=final_dir) -> pd.DataFrame:
    import pandas as pd
    return pd.read_csv(where(models, fold) / "oof.csv", dtype={"id": str, "group": str})


def read_test(models: str | Path, fold: int, where=final_dir) -> pd.DataFrame:
    import pandas as pd
    return pd.read_csv(where(models, fold) / "test.csv", dtype={"id": str})


def read_run(models: str | Path, fold: int, where=final_dir) -> dict:
    return json.loads((where(models, fold) / "run.json").read_text())


def read_history(models: str | Path, fold: int, where=final_dir) -> pd.DataFrame:
    import pandas as pd
    return pd.read_csv(where(models, fold) / "history.csv")


def checkpoint_path(models: str | Path, fold: int, where=final_dir) -> Path:
    return where(models, fold) / "model.pt"
