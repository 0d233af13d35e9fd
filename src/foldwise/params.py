"""params.yaml is the single source of hyperparameters; this reads it and checks it against
`SCHEMA`, naming every unknown, missing or mistyped key.

The schema holds key names and types only, never values: a default in code would be a second
copy that drifts from params.yaml, and a misspelt key read with a default would silently turn
a feature off."""
from __future__ import annotations

from pathlib import Path

import yaml

from foldwise.errors import InputError

_MISSING = object()
NUMBER = (int, float)

SCHEMA = {
    "seed": int,
    "lr": NUMBER,
    "folds": list,
    "data": {"source": str, "root": str},
    "split": {"dedupe": bool, "hash_distance": int},
    "sample": {
        "statefarm": {"drivers": int, "per_class": int, "test_drivers": int, "test_per_class": int},
        "keypoints": {"train": int, "test": int, "variant": str, "sparse_fraction": NUMBER},
        "dogscats": {"per_class": int, "test": int},
        "folders": {"classes": int, "per_class": int, "test": int, "layout": str},
    },
    "preprocess": {"height": int, "width": int, "crop": list, "mode": str, "workers": int},
    "train": {
        "model": str, "model_kwargs": dict, "pretrained": bool, "pretrained_fallback": bool,
        "weights_file": str, "weights_match": str, "epochs": int, "batch_size": int, "optimizer": str,
        "momentum": NUMBER, "weight_decay": NUMBER, "scheduler": str, "warmup_epochs": int,
        "warmup_lr": NUMBER, "min_lr": NUMBER, "decay_epochs": NUMBER, "decay_rate": NUMBER,
        "label_smoothing": NUMBER, "patience": int, "channels_last": bool, "amp": bool,
        "compile": bool, "devices": int, "sync_bn": bool, "lr_per_step": bool,
        "clip_grad": NUMBER, "clip_mode": str,
        "ema": {"decay": NUMBER, "warmup": bool},
        "mixup": {"mixup_alpha": NUMBER, "cutmix_alpha": NUMBER, "prob": NUMBER,
                  "switch_prob": NUMBER},
        "augment": {"hflip": bool, "shift": NUMBER, "scale": NUMBER, "rotate": NUMBER,
                    "brightness": NUMBER, "contrast": NUMBER, "saturation": NUMBER,
                    "crop_area": NUMBER},
    },
    "tta": {"hflip": bool, "shift": NUMBER, "scale": NUMBER},
    "bag": {"mean": str},
    "calibration": {"temperature": bool},
    "neighbours": {"k": int},
    "mlflow": {"experiment": str, "tracking_uri": str},
}


def check(params: dict, schema: dict = SCHEMA, path: str = "", where: str = "params.yaml") -> None:
    """Every key of `schema` present with its type, and no key it does not know."""
    unknown = [f"{path}{k}" for k in params if k not in schema]
    if unknown:
        raise InputError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))} "
                         f"(misspelt? known here: {', '.join(schema)})")
    for key, kind in schema.items():
        name = f"{path}{key}"
        if key not in params:
            raise InputError(f"{where}: missing key {name!r}")
        value = params[key]
        if isinstance(kind, dict):
            if not isinstance(value, dict):
                raise InputError(f"{where}: {name} must be a mapping of {', '.join(kind)}")
            check(value, kind, f"{name}.", where)
        elif not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)
                                             and bool not in (kind if isinstance(kind, tuple) else ())):
            names = "/".join(t.__name__ for t in (kind if isinstance(kind, tuple) else (kind,)))
            raise InputError(f"{where}: {name}={value!r} must be {names}")


def load(path: str | Path = "params.yaml") -> dict:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: not found")
    with open(path) as f:
        params = yaml.safe_load(f)
    if not isinstance(params, dict):
        raise InputError(f"{path}: expected a mapping of parameters")
    check(params, where=str(path))
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
