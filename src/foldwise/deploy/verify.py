"""The exported bag checked before anything is shipped: it must compute what the folds'
networks compute.

The exported program is compared like for like: with the same networks run eagerly, on the
same device, over the same batches, in float32 (`TOLERANCE`). The folds' own test predictions
were made another way (another batch size and memory layout, perhaps compiled, in bfloat16,
with cuDNN free to pick TF32 kernels), so against them the export only reports the drift, as a
percentile of the differences, and warns when it passes `DRIFT`: one borderline image among
80,000 must not fail a run after all its training.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

log = logging.getLogger(__name__)

TOLERANCE = 1e-4  # the exported program against the same networks run eagerly, like for like
DRIFT = 0.05  # the folds' own predictions, relative to their scale: more is worth a warning
PERCENTILE = 99.0


@dataclass(frozen=True)
class Check:
    worst: float  # max |exported - eager|
    drift: float  # the PERCENTILE-th |exported - the folds' bagged predictions|, relative
    drift_max: float  # ... and the largest of them


class Verified(NamedTuple):
    """A shipped program's test predictions, accepted by `check_export`."""
    preds: np.ndarray  # what the exported program predicts on the test images
    loaded: tuple  # the program loaded back: (module, its meta.json)
    check: Check  # against the same networks run eagerly, and the drift from the loop's own


def check_export(exported: np.ndarray, eager: np.ndarray, bagged: np.ndarray,
                 runs: list[dict]) -> Check:
    """Raise RuntimeError unless the exported bag's predictions reproduce the same networks run
    eagerly; warn when they drift from the folds' bagged test predictions (`bagged`, tempered
    as the bag is; `runs`: the folds' run.json, which say how they predicted)."""
    worst = float(np.abs(exported - eager).max())
    if worst > TOLERANCE:
        raise RuntimeError(f"exported model differs from the bagged networks run eagerly by "
                           f"{worst:.2e} (more than {TOLERANCE:g})")
    scale = max(1.0, float(np.abs(bagged).max()))
    diff = np.abs(exported - bagged) / scale
    check = Check(worst, float(np.percentile(diff, PERCENTILE)), float(diff.max()))
    if check.drift > DRIFT:
        log.warning("the exported model's predictions differ from the folds' own (%s on %s) by "
                    "%.2e at the %gth percentile (largest %.2e): more than precision explains; "
                    "check the folds' predictions", describe(runs, "precision"),
                    describe(runs, "device"), check.drift, PERCENTILE, check.drift_max)
    return check


def describe(runs: list[dict], key: str) -> str:
    return ", ".join(sorted({str(r.get(key, "?")) for r in runs}))
