"""The speed stage: the one-network programs (the distilled student, the refit network) timed
beside the exported bag's on the same test images, one after the other in one process (timings
on one machine vary between days; a ratio measured side by side does not). A stage of its own,
after export, distill and refit, so that a new export is timed again without retraining them.
Off (`distill.model: ''` and `refit.epochs: 0`), it writes `{"distill": "", "refit": 0}` and
imports nothing heavy."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np

from foldwise.deploy.student import MODEL
from foldwise.files import write_json
from foldwise.params import Params

TIMED = 1024  # test images timed through each program


@dataclass(frozen=True)
class Paths:
    bag: Annotated[Path, "the exported bag"]
    distilled: Annotated[Path, "the distill stage's folder"]
    refit: Annotated[Path, "the refit stage's folder"]
    processed: Annotated[Path, "the preprocess cache (test.npy)"]
    out_json: Annotated[Path, "the figures"]


def run(params: Params, paths: Paths) -> dict:
    """Time the programs and write `out_json`: images, each program's images/s and each
    one-network program's speedup over the bag (`speedup`: the student's, `refit_speedup`)."""
    figures = {"distill": params.distill.model, "refit": params.refit.epochs}
    ones = {name: folder / MODEL for name, folder, on in (
        ("student", paths.distilled, params.distill.model),
        ("refit", paths.refit, params.refit.epochs)) if on}
    if ones:
        figures.update(timed({**ones, "bag": paths.bag}, paths.processed))
    write_json(figures, paths.out_json)
    return figures


def timed(programs: dict, processed) -> dict:
    """Each program's images/s on the first TIMED test images, after a warm-up."""
    from foldwise.deploy import program
    from foldwise.train.loader import open_cache
    device = program.default_device()
    images = np.asarray(open_cache(Path(processed) / "test.npy")[:TIMED])
    rates = {}
    for name, folder in programs.items():
        model = program.load(folder, device)[0]
        program.run_model(model, images[:2], device=device, desc="warm-up")
        t0 = time.perf_counter()
        program.run_model(model, images, device=device, desc=f"timing {name}")
        rates[name] = len(images) / max(time.perf_counter() - t0, 1e-9)
    out = {"images": len(images), "device": device.type}
    for name, rate in rates.items():
        out[f"{name}_images_per_s"] = rate
    if "student" in rates:
        out["speedup"] = rates["student"] / rates["bag"]
    if "refit" in rates:
        out["refit_speedup"] = rates["refit"] / rates["bag"]
    return out
