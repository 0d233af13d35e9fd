"""The pseudo stage's body: one fold's further pseudo-label rounds after its round 1
(`train.fold_folder` with `after`), or with `pseudo.rounds` 0 only a marker saying round 1 is
the fold's model. Off, it imports nothing heavy: the stage runs once per fold in every
pipeline, and torch, timm and MLflow cost seconds a process."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from foldwise.params import Params
from foldwise.train import outputs


@dataclass(frozen=True)
class Paths:
    fold: Annotated[int, "which fold (0..k-1)"]
    folds_csv: Annotated[Path, "split's fold table"]
    processed: Annotated[Path, "the preprocess cache"]
    models: Annotated[Path, "holds round 1, fold_FOLD"]
    out: Annotated[Path, "the fold's last round"]


def run(params: Params, paths: Paths) -> int:
    """Write fold `fold`'s pseudo-label folder `out` from round 1's in `models`. Returns the
    exit status (torchrun's, when the rounds relaunched this process on several devices)."""
    if params.pseudo.rounds == 0:
        outputs.write_no_rounds(paths.out)
        print(f"fold {paths.fold}: pseudo.rounds is 0, round 1 is the fold's model")
        return 0
    from foldwise.train import train
    return train.fold_folder(params, paths.fold, train.FoldPaths(
        paths.folds_csv, paths.processed, paths.out, None, after=paths.models))
