"""The speed stage: the distilled student's exported program timed beside the exported bag's on
the same test images, one after the other in one process (timings on one machine vary between
days; a ratio measured side by side does not). A stage of its own, after export and distill, so
that a new export is timed again without retraining the student. Off (`distill.model: ''`), it
writes `{"distill": ""}` and imports nothing heavy."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from foldwise.deploy.student import MODEL
from foldwise.files import write_json
from foldwise.params import Params

TIMED = 1024  # test images timed through each program


def run(params: Params, bag_dir, distilled_dir, processed, out_json) -> dict:
    """Time both programs and write `out_json` (images, each one's images/s, the speedup)."""
    if not params.distill.model:
        figures = {"distill": ""}
        write_json(figures, out_json)
        return figures
    from foldwise.deploy import export
    from foldwise.train.loader import open_cache
    device = export.default_device()
    images = np.asarray(open_cache(Path(processed) / "test.npy")[:TIMED])
    programs = {"student": export.load(Path(distilled_dir) / MODEL, device)[0],
                "bag": export.load(bag_dir, device)[0]}
    rates = {}
    for name, model in programs.items():
        export.run_model(model, images[:2], device=device, desc="warm-up")
        t0 = time.perf_counter()
        export.run_model(model, images, device=device, desc=f"timing {name}")
        rates[name] = len(images) / max(time.perf_counter() - t0, 1e-9)
    figures = {"distill": params.distill.model, "images": len(images), "device": device.type,
               "student_images_per_s": rates["student"], "bag_images_per_s": rates["bag"],
               "speedup": rates["student"] / rates["bag"]}
    write_json(figures, out_json)
    return figures
