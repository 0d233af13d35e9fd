"""The pseudo stage: one fold's further pseudo-label rounds after its round 1 (`fold.run` with
`after`), or with `pseudo.rounds` 0 only a marker saying round 1 is the fold's model. Off, it
imports nothing heavy: the stage runs once per fold in every pipeline, and torch, timm and
MLflow cost seconds a process."""
from __future__ import annotations

from pathlib import Path

from foldwise.params import Params
from foldwise.train import outputs


def run(params: Params, fold: int, folds_csv, processed, models, out) -> int:
    """Write fold `fold`'s pseudo-label folder `out` from round 1's in `models`. Returns the
    exit status (torchrun's, when the rounds relaunched this process on several devices)."""
    if params.pseudo.rounds == 0:
        outputs.write_no_rounds(Path(out))
        print(f"fold {fold}: pseudo.rounds is 0, round 1 is the fold's model")
        return 0
    from foldwise.train import fold as fold_run
    return fold_run.run(params, fold, folds_csv, processed, out, after=models)
