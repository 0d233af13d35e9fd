"""params.yaml is the single source of hyperparameters; this reads it into one typed object,
`Params`, naming every unknown, missing, mistyped or out-of-range key.

The classes hold key names, types and the values each key allows (`one_of`, `within`: the
params schema, in this one place), never defaults: a default in code would be a second copy
that drifts from params.yaml, and a misspelt key read with a default would silently turn a
feature off. After `load`, every value has its declared type (an `int` given for a `float` key
becomes a float) and lies in its allowed set, so code reads `params.train.batch_size` and
casts nothing. The names that timm's own registries decide (models, optimizers) are checked by `names.check_timm_names`, which the pipeline's first stage (`check`) runs.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from foldwise.errors import InputError

UNDO = ("no stage ran; put params.yaml back with `git checkout params.yaml` (a failed `dvc exp "
        "run -S` leaves its change there), or set a valid value; where `folds` changed, DVC set "
        "the dropped folds' outputs aside, and `dvc checkout` brings them back from its cache")


def one_of(*choices):
    """A key whose value is one of `choices`."""
    return dataclasses.field(metadata={"choices": choices})


def within(low=None, high=None, *, above=None, below=None):
    """A number from `low` (or strictly `above`) to `high` (or strictly `below`); for a list
    key, each element."""
    return dataclasses.field(metadata={"low": low, "high": high, "above": above, "below": below})


def count_or(word: str):
    """A whole number >= 0, or the one `word` (e.g. "auto")."""
    return dataclasses.field(metadata={"word": word, "low": 0, "high": None, "above": None,
                                       "below": None})


def named():
    """A name that may not be ''."""
    return dataclasses.field(metadata={"named": True})


def timm_name(kind: str, blank: bool = False):
    """A name that timm's registry of `kind` ("model", "optimizer") knows; '' too where `blank`
    (the feature off). Checked by `names.check_timm_names`, apart: it imports timm."""
    return dataclasses.field(metadata={"timm": kind, "blank": blank})


@typing.dataclass_transform(frozen_default=True, field_specifiers=(
    dataclasses.field, one_of, within, count_or, named, timm_name))
def schema(cls):
    """A section of the schema: a frozen dataclass whose keys carry their rules (`one_of`, ...;
    none of them a default, which a type checker knows through this decorator)."""
    return dataclass(frozen=True)(cls)


@schema
class Data:
    source: str = one_of("statefarm", "keypoints", "dogscats", "folders", "multilabel")
    root: str


@schema
class Split:
    seed: int = within(0)  # the folds' own seed: `seed` changes the training, never the split
    dedupe: bool
    hash_distance: int = within(0, 63)


@schema
class StateFarmSample:
    drivers: int = within(2)
    per_class: int = within(1)
    test_drivers: int = within(1)
    test_per_class: int = within(1)


@schema
class KeypointsSample:
    train: int = within(2)
    test: int = within(1)
    variant: str = one_of("kaggle", "course")
    sparse_fraction: float = within(0, 1)


@schema
class DogsCatsSample:
    per_class: int = within(1)
    test: int = within(1)


@schema
class FoldersSample:
    classes: int = within(2)
    per_class: int = within(1)
    test: int = within(1)
    layout: str = one_of("folders", "csv")


@schema
class MultiLabelSample:
    train: int = within(2)
    test: int = within(1)
    tags: int = within(1, 8)


@schema
class Sample:
    """Each source's embedded synthetic set, under the source's name."""
    seed: int = within(0)  # the sample's own: neither `seed` nor `split.seed` rewrites the data
    statefarm: StateFarmSample
    keypoints: KeypointsSample
    dogscats: DogsCatsSample
    folders: FoldersSample
    multilabel: MultiLabelSample


@schema
class Preprocess:
    height: int = within(8)
    width: int = within(8)
    crop: list = within(0, 1)
    mode: str = one_of("RGB", "L")
    workers: int = within(1)


@schema
class Ema:
    decay: float = within(0, below=1)
    warmup: bool


@schema
class Mixup:
    mixup_alpha: float = within(0)
    cutmix_alpha: float = within(0)
    prob: float = within(0, 1)
    switch_prob: float = within(0, 1)


@schema
class Augment:
    hflip: bool
    shift: float = within(0, below=1)
    scale: float = within(0, below=1)
    rotate: float = within(0, 180)
    brightness: float = within(0, 1)
    contrast: float = within(0, 1)
    saturation: float = within(0, 1)
    crop_area: float = within(above=0, high=1)
    erase: float = within(0, 1)
    erase_mode: str = one_of("const", "rand", "pixel")


@schema
class Train:
    model: str = timm_name("model")
    model_kwargs: dict
    pretrained: bool
    pretrained_fallback: bool
    weights_file: str
    weights_match: str = one_of("name", "order")
    epochs: int = within(1)
    batch_size: int = within(1)
    optimizer: str = timm_name("optimizer")
    momentum: float = within(0, below=1)
    weight_decay: float = within(0)
    scheduler: str = one_of("cosine", "tanh", "step", "constant", "multistep", "plateau", "poly",
                            "wsd", "rsqrt")  # timm create_scheduler_v2's (it lists them nowhere)
    warmup_epochs: int = within(0)
    warmup_lr: float = within(above=0, high=1)
    min_lr: float = within(0, 1)
    decay_epochs: float = within(above=0)
    decay_rate: float = within(above=0, high=1)
    label_smoothing: float = within(0, below=1)
    patience: int = within(1)
    channels_last: bool
    amp: bool
    compile: bool
    devices: int = within(1)
    sync_bn: bool
    lr_per_step: bool
    clip_grad: float = within(0)
    clip_mode: str = one_of("norm", "value", "agc")
    ema: Ema
    mixup: Mixup
    augment: Augment


@schema
class Tta:
    hflip: bool
    shift: float = within(0, below=1)
    scale: float = within(0, below=1)


@schema
class Bag:
    mean: str = one_of("arithmetic", "geometric")


@schema
class Calibration:
    temperature: bool


@schema
class Neighbours:
    k: int = within(0)


@schema
class Stack:
    model: str = one_of("", "logistic", "hist_gradient_boosting")
    neighbours: int = within(0)
    c: float = within(above=0)


@schema
class Pseudo:
    rounds: int = within(0)
    mode: str = one_of("soft", "hard")
    threshold: float = within(0, 1)
    weight: float = within(above=0)
    epochs: int = within(0)
    validation: bool  # the fold's own validation images join further rounds, unlabelled
    lr: float = within(0)  # further rounds: 0 restart as round 1 did (lr, warm-up); else fine-tune from it


@schema
class Distill:
    model: str = timm_name("model", blank=True)
    epochs: int = within(0)
    test: bool  # the test images join the student's training against the teacher's rows


@schema
class Refit:
    # 0 off; N epochs; auto: the folds' median kept epoch count (docs/refit.md)
    epochs: int | str = count_or("auto")
    tta: bool  # the bag's test-time views in its program; false: one pass per image


@schema
class Mlflow:
    experiment: str = named()
    tracking_uri: str
    register: bool
    model_name: str  # the registered model; '' names it after experiment, task and data set


@schema
class Params:
    seed: int = within(0)  # the training's randomness (split.seed: the folds')
    lr: float = within(above=0)
    folds: list = within(0)
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
    refit: Refit
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
    if isinstance(kind, types.UnionType):  # e.g. int | str: the rule says which values
        if not isinstance(value, kind) or isinstance(value, bool):
            raise InputError(f"{where}: {name}={value!r} must be {kind}")
        return value
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
        if dataclasses.is_dataclass(kind):
            fields[key] = build(kind, value[key], where, f"{name}.")
        else:
            fields[key] = _value(value[key], kind, name, where)
            _allowed(fields[key], _rules(cls)[key], name, where)
    return cls(**fields)


def _rules(cls) -> dict:
    return {f.name: f.metadata for f in dataclasses.fields(cls)}


def _allowed(value, rule, name: str, where: str) -> None:
    """`value` within the key's rule (`one_of`, `within`, `named`; each element of a list),
    or an InputError with the key, the value and what is allowed."""
    if rule.get("word") is not None and value == rule["word"]:
        return
    if "choices" in rule and value not in rule["choices"]:
        raise InputError(f"{where}: {name}={value!r} is not allowed; allowed: "
                         + ", ".join(map(repr, rule["choices"])))
    if rule.get("named") and not value:
        raise InputError(f"{where}: {name} may not be empty")
    if rule.get("timm") and not value and not rule.get("blank"):
        raise InputError(f"{where}: {name} may not be empty (a timm {rule['timm']} name)")
    if any(rule.get(k) is not None for k in ("low", "high", "above", "below")):
        for item in (value if isinstance(value, list) else [value]):
            if isinstance(item, bool) or not isinstance(item, (int, float)) or not _inside(item, rule):
                raise InputError(f"{where}: {name}={value!r} is out of range; allowed: "
                                 f"{_range_text(rule)}" + (f" or {rule['word']!r}" if rule.get("word") else "")
                                 + (" (each element)"
                                                           if isinstance(value, list) else ""))


def _inside(x, rule) -> bool:
    return ((rule["low"] is None or x >= rule["low"]) and (rule["high"] is None or x <= rule["high"])
            and (rule["above"] is None or x > rule["above"])
            and (rule["below"] is None or x < rule["below"]))


def _range_text(rule) -> str:
    parts = [f">= {rule['low']}" if rule["low"] is not None else "",
             f"> {rule['above']}" if rule["above"] is not None else "",
             f"<= {rule['high']}" if rule["high"] is not None else "",
             f"< {rule['below']}" if rule["below"] is not None else ""]
    return " and ".join(p for p in parts if p)


def allowed(cls, key: str) -> tuple:
    """The values `one_of` allows for `cls`'s key (the code that dispatches on them reads
    them here: one list)."""
    return _rules(cls)[key]["choices"]


def timm_keys(cls=None, path: str = "") -> list[tuple[str, str, bool]]:
    """(dotted key, timm registry kind, '' allowed) of every key that names a timm thing."""
    cls = cls or Params
    hints, found = typing.get_type_hints(cls), []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            found += timm_keys(hints[f.name], f"{path}{f.name}.")
        elif f.metadata.get("timm"):
            found.append((f"{path}{f.name}", f.metadata["timm"], bool(f.metadata.get("blank"))))
    return found


def get(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


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


SAMPLE_FILE = "sample.yaml"  # beside params.yaml: the embedded sample's sizes, not hyperparameters


def read_mapping(path: Path) -> dict:
    if not path.is_file():
        raise InputError(f"{path}: not found")
    with open(path) as f:
        raw = yaml.safe_load(f)
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a mapping of parameters")
    return raw


def change_files(folder: str | Path, change) -> None:
    """`change(params)` applied to the nested mapping of `folder`'s params.yaml with
    sample.yaml's `sample` inside it, and both files written back (without their comments): how
    tests and benchmarks size a small project."""
    folder = Path(folder)
    merged = {**read_mapping(folder / "params.yaml"),
              "sample": read_mapping(folder / SAMPLE_FILE)["sample"]}
    change(merged)
    sample = {"sample": merged.pop("sample")}
    (folder / "params.yaml").write_text(yaml.safe_dump(merged, sort_keys=False))
    (folder / SAMPLE_FILE).write_text(yaml.safe_dump(sample, sort_keys=False))


def load(path: str | Path = "params.yaml") -> Params:
    """params.yaml's hyperparameters with the sample's sizes from sample.yaml beside it (its
    `sample` key), as one typed object; a bad key names the file it is in."""
    path = Path(path)
    beside = path.parent / SAMPLE_FILE
    return parse(read_mapping(path), read_mapping(beside), str(path), str(beside))


def parse(raw: dict, sample: dict, where: str, sample_where: str) -> Params:
    """`Params` from params.yaml's mapping and sample.yaml's (named `where` and `sample_where`
    in errors)."""
    if "sample" in raw:
        raise InputError(f"{where}: 'sample' belongs in {sample_where} (the embedded sample's "
                         "sizes are not hyperparameters); move the section there")
    if not isinstance(sample, dict):
        raise InputError(f"{sample_where}: expected a mapping with one key, 'sample'")
    unknown = sorted(set(sample) - {"sample"})
    if unknown:
        raise InputError(f"{sample_where}: unknown key(s) {', '.join(map(repr, unknown))} (it "
                         "holds only 'sample')")
    build(Sample, sample.get("sample"), where=sample_where, path="sample.")
    return consistent(build(Params, {**raw, "sample": sample["sample"]}, where=where), where=where)


def consistent(params: Params, where: str = "params.yaml") -> Params:
    """The rules between keys: folds 0..k-1 with k >= 2, a crop box inside the frame, a stack's
    neighbours within the neighbour graph."""
    folds = list(params.folds)
    if len(folds) < 2 or folds != list(range(len(folds))):
        raise InputError(f"{where}: folds={folds} must be 0, 1, ..., k-1 with k >= 2 (one entry "
                         "per fold)")
    crop = params.preprocess.crop
    if len(crop) != 4 or not (crop[0] < crop[2] and crop[1] < crop[3]):
        raise InputError(f"{where}: preprocess.crop={crop} must be [left, top, right, bottom] "
                         "with left < right and top < bottom")
    if params.stack.model and params.stack.neighbours > params.neighbours.k:
        raise InputError(f"{where}: stack.neighbours={params.stack.neighbours} needs "
                         f"neighbours.k >= {params.stack.neighbours} (it is {params.neighbours.k})")
    return params


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
