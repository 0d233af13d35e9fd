"""params.yaml is the single source of hyperparameters; this reads it into one typed object,
`Params`, naming every unknown, missing or mistyped key.

The classes hold key names and types only, never values: a default in code would be a second
copy that drifts from params.yaml, and a misspelt key read with a default would silently turn
a feature off. After `load`, every value has its declared type (an `int` given for a `float`
key becomes a float), so code reads `params.train.batch_size` and casts nothing.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from foldwise.errors import InputError


@dataclass(frozen=True)
class Data:
    source: str
    root: str


@dataclass(frozen=True)
class Split:
    dedupe: bool
    hash_distance: int


@dataclass(frozen=True)
class StateFarmSample:
    drivers: int
    per_class: int
    test_drivers: int
    test_per_class: int


@dataclass(frozen=True)
class KeypointsSample:
    train: int
    test: int
    variant: str
    sparse_fraction: float


@dataclass(frozen=True)
class DogsCatsSample:
    per_class: int
    test: int


@dataclass(frozen=True)
class FoldersSample:
    classes: int
    per_class: int
    test: int
    layout: str


@dataclass(frozen=True)
class MultiLabelSample:
    train: int
    test: int
    tags: int


@dataclass(frozen=True)
class Sample:
    """Each source's embedded synthetic set, under the source's name."""
    statefarm: StateFarmSample
    keypoints: KeypointsSample
    dogscats: DogsCatsSample
    folders: FoldersSample
    multilabel: MultiLabelSample


@dataclass(frozen=True)
class Preprocess:
    height: int
    width: int
    crop: list
    mode: str
    workers: int


@dataclass(frozen=True)
class Ema:
    decay: float
    warmup: bool


@dataclass(frozen=True)
class Mixup:
    mixup_alpha: float
    cutmix_alpha: float
    prob: float
    switch_prob: float


@dataclass(frozen=True)
class Augment:
    hflip: bool
    shift: float
    scale: float
    rotate: float
    brightness: float
    contrast: float
    saturation: float
    crop_area: float


@dataclass(frozen=True)
class Train:
    model: str
    model_kwargs: dict
    pretrained: bool
    pretrained_fallback: bool
    weights_file: str
    weights_match: str
    epochs: int
    batch_size: int
    optimizer: str
    momentum: float
    weight_decay: float
    scheduler: str
    warmup_epochs: int
    warmup_lr: float
    min_lr: float
    decay_epochs: float
    decay_rate: float
    label_smoothing: float
    patience: int
    channels_last: bool
    amp: bool
    compile: bool
    devices: int
    sync_bn: bool
    lr_per_step: bool
    clip_grad: float
    clip_mode: str
    ema: Ema
    mixup: Mixup
    augment: Augment


@dataclass(frozen=True)
class Tta:
    hflip: bool
    shift: float
    scale: float


@dataclass(frozen=True)
class Bag:
    mean: str


@dataclass(frozen=True)
class Calibration:
    temperature: bool


@dataclass(frozen=True)
class Neighbours:
    k: int


@dataclass(frozen=True)
class Stack:
    model: str
    neighbours: int
    c: float


@dataclass(frozen=True)
class Pseudo:
    rounds: int
    mode: str
    threshold: float
    weight: float
    epochs: int
    validation: bool  # the fold's own validation images join further rounds, unlabelled
    lr: float  # further rounds: 0 restart as round 1 did (lr, warm-up); else fine-tune from it


@dataclass(frozen=True)
class Distill:
    model: str
    epochs: int
    test: bool  # the test images join the student's training against the teacher's rows


@dataclass(frozen=True)
class Mlflow:
    experiment: str
    tracking_uri: str
    register: bool


@dataclass(frozen=True)
class Params:
    seed: int
    lr: float
    folds: list
    data: Data
    split: Split
    sample: Sample
    preprocess: Preprocess
    train: Train
    pseudo: Pseudo
    tta: Tta
    bag: Bag
    calibration: Calibration
    neighbours: Neighbours
    stack: Stack
    distill: Distill
    mlflow: Mlflow

    def as_dict(self) -> dict:
        """The nested mapping params.yaml holds (for hashing, logging and the exported meta)."""
        return dataclasses.asdict(self)


def names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def field_type(cls, dotted: str):
    """The type of params key `dotted` (`train.ema.decay` -> float) in the dataclass `cls`, or
    None where there is no such key."""
    kind = cls
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(kind) or part not in names(kind):
            return None
        kind = typing.get_type_hints(kind)[part]
    return kind


def nested(changes: dict) -> dict:
    """{"train.epochs": 3, "lr": 0.1} -> {"train": {"epochs": 3}, "lr": 0.1}"""
    out: dict = {}
    for dotted, value in changes.items():
        *head, last = dotted.split(".")
        node = out
        for part in head:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def _value(value, kind, name: str, where: str):
    """`value` as `kind` (a float key takes an int), or an InputError naming the key."""
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise InputError(f"{where}: {name}={value!r} must be int/float")
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise InputError(f"{where}: {name}={value!r} must be {kind.__name__}")
    return value


def build(cls, value, where: str = "params.yaml", path: str = ""):
    """An instance of the dataclass `cls` from a mapping: every field present with its type,
    and no key it does not know."""
    known = names(cls)
    if not isinstance(value, dict):
        raise InputError(f"{where}: {path.rstrip('.')} must be a mapping of {', '.join(known)}")
    unknown = [f"{path}{k}" for k in value if k not in known]
    if unknown:
        raise InputError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))} "
                         f"(misspelt? known here: {', '.join(known)})")
    hints = typing.get_type_hints(cls)
    fields = {}
    for key in known:
        name = f"{path}{key}"
        if key not in value:
            raise InputError(f"{where}: missing key {name!r}")
        kind = hints[key]
        fields[key] = (build(kind, value[key], where, f"{name}.") if dataclasses.is_dataclass(kind)
                       else _value(value[key], kind, name, where))
    return cls(**fields)


def evolve(obj, changes: dict):
    """A copy of the settings `obj` with `changes` (a nested mapping changes keys of a nested
    section and keeps the rest), checked as params.yaml is."""
    return build(type(obj), _merged(type(obj), dataclasses.asdict(obj), changes), where="settings")


def _merged(cls, base: dict, changes: dict) -> dict:
    hints = typing.get_type_hints(cls)
    out = dict(base)
    for key, value in changes.items():
        kind = hints.get(key)
        if dataclasses.is_dataclass(kind) and isinstance(value, dict) and key in base:
            out[key] = _merged(kind, base[key], value)
        else:
            out[key] = value
    return out


def load(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: not found")
    with open(path) as f:
        raw = yaml.safe_load(f)
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a mapping of parameters")
    return build(Params, raw, where=str(path))


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
