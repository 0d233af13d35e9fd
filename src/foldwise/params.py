"""params.yaml is the single source of hyperparameters; this reads it and names missing keys."""
from __future__ import annotations

from pathlib import Path

import yaml

from foldwise.errors import InputError

_MISSING = object()


def load(path: str | Path = "params.yaml") -> dict:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: not found")
    with open(path) as f:
        params = yaml.safe_load(f)
    if not isinstance(params, dict):
        raise InputError(f"{path}: expected a mapping of parameters")
    return params


def get(params: dict, dotted: str):
    """`get(p, "train.epochs")`; a missing key is an InputError that names it."""
    node = params
    for part in dotted.split("."):
        node = node.get(part, _MISSING) if isinstance(node, dict) else _MISSING
        if node is _MISSING:
            raise InputError(f"params.yaml: missing key {dotted!r}")
    return node


def flatten(params: dict, prefix: str = "") -> dict:
    """{"train": {"epochs": 3}} -> {"train.epochs": 3}, for logging to MLflow."""
    flat = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
