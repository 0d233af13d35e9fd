"""The exported bag checked before anything is shipped: it must compute what the folds'
networks compute.

Like for like (the folds predicted the test set in float32 on the device that runs the export)
the exported program is compared with the folds' bagged test predictions themselves. Otherwise
(bfloat16 folds, another device) it is compared with the same networks run eagerly in float32
on this device, and the folds' own predictions only have to agree within what precision
explains (`DRIFT`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TOLERANCE = 1e-4  # the exported program against the same networks run eagerly, like for like
DRIFT = 0.05  # vs fold predictions made in bfloat16 or on another device, relative to their scale


@dataclass(frozen=True)
class Check:
    worst: float  # |exported - reference|, the reference being `against`
    drift: float  # |exported - the folds' bagged predictions| relative to their scale
    against: str  # "bagged" (the folds' own predictions) or "eager" (the networks rerun here)


def like_for_like(runs: list[dict], device_type: str) -> bool:
    """Every fold predicted in float32 on this kind of device (run.json of each)."""
    return all(r.get("precision") == "float32" and r.get("device") == device_type for r in runs)


def check_export(exported: np.ndarray, bagged: np.ndarray, runs: list[dict], device_type: str,
                 eager=None) -> Check:
    """Raise RuntimeError unless the exported bag's predictions `exported` reproduce the folds'.
    `bagged`: the folds' bagged test predictions (tempered as the bag is); `eager()`: the same
    networks run eagerly here, called only when the folds predicted another way."""
    drift = float(np.abs(exported - bagged).max()) / max(1.0, float(np.abs(bagged).max()))
    if like_for_like(runs, device_type):
        check = Check(drift, drift, "bagged")
    else:
        check = Check(float(np.abs(exported - eager()).max()), drift, "eager")
        if drift > DRIFT:
            raise RuntimeError(
                f"exported model differs from the folds' bagged test predictions "
                f"({', '.join(sorted({r.get('precision', '?') for r in runs}))} on "
                f"{', '.join(sorted({r.get('device', '?') for r in runs}))}) by {drift:.2e}: "
                "more than precision explains")
    if check.worst > TOLERANCE:
        raise RuntimeError(f"exported model differs from the bagged networks by {check.worst:.2e}")
    return check
