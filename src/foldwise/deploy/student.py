"""The distilled student's shared shapes: its folder's names, its seed, the distill stage's
paths and its teacher, and its figures as MLflow metrics. Light (no torch), so the distill
stage when off, its training (`distill_train`) and the speed stage all read them from here, and
none of those modules imports another's.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np

from foldwise.params import flatten

MODEL, SUBMISSION = "model", "submission.csv"
STUDENT_SEED = 999  # the student's seed: params.seed * 1000 + this (folds use + fold)


@dataclass(frozen=True)
class DistillPaths:
    """The distill stage's arguments by what they hold."""
    root: Annotated[Path, "the data set (some submissions follow its lookup table)"]
    models: Annotated[Path, "folder of the fold_k runs (the MLflow parent)"]
    processed: Annotated[Path, "the preprocess cache"]
    bagged: Annotated[Path, "bag's output (oof.csv, test.csv)"]
    metrics_json: Annotated[Path, "evaluate's metrics.json (the temperature)"]
    neighbours: Annotated[Path, "the neighbours stage's test graph"]
    stack: Annotated[Path, "the stack stage's model and OOF rows"]
    stack_json: Annotated[Path, "its figures"]
    out: Annotated[Path, "the distilled model's folder"]
    out_json: Annotated[Path, "its figures"]
    history_csv: Annotated[Path, "per-epoch history (DVC plots it)"]


@dataclass(frozen=True)
class Teacher:
    name: str  # "bag" or "stack"
    train: np.ndarray  # each training image's out-of-fold row
    test: np.ndarray  # each test image's row
    oof: dict  # the teacher's own OOF figures against the labels
    decision: dict  # what its submission applies (the clip bound fit on its OOF rows)


def flat_figures(figures: dict) -> dict:
    """The figures as MLflow metrics (`test_fidelity.agreement` -> `test_fidelity_agreement`)."""
    return {k.replace(".", "_"): float(v) for k, v in flatten(figures).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}
