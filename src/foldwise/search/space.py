"""`search.yaml`: what `foldwise-search` searches, for what, and for how long, read into typed
settings and checked against params.yaml before anything trains.

    study: search            # the study's name; its trials are DVC experiments search-<id>-000, ...
    trials: 20               # the study ends with this many finished or pruned trials
    objective: logloss       # a figure of metrics/metrics.json's "oof" (its _calibrated value
    direction: minimize      #   where calibration is on); minimize | maximize
    sampler: tpe             # tpe | random (Optuna's), seeded by `seed` plus the trials so far
    seed: 0
    tpe: {n_startup_trials: 10, n_ei_candidates: 24, multivariate: true, group: false,
          constant_liar: true}   # every TPE setting given: Optuna's defaults move
    heartbeat: 60            # seconds between a running trial's heartbeats; a trial silent for 3
    #                          of them is failed and queued once more (its searcher died)
    pruner: median           # median | none: after the first fold, against earlier trials'
    startup_trials: 3        #   first folds, once this many trials have finished
    epochs: 0                # > 0: train.epochs of the search's trials (a cheaper search)
    until: ''                # '' the whole pipeline; a stage from evaluate on: trials stop there
    storage: ''              # the study's database: '' .foldwise/search.db (SQLite); server: the
    #                          PostgreSQL of `make mlflow-server` here; else an SQLAlchemy URL
    space:                   # params.yaml keys, dotted
      lr: {low: 3.0e-4, high: 3.0e-3, log: true}
      train.model: {choices: [test_resnet, resnet10t]}
    start:                   # optional: named settings tried first, in this order (a key left
      defaults: {lr: 1.0e-3} #   out is sampled), e.g. the defaults and a known recipe
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import yaml

from foldwise import params as P
from foldwise.errors import InputError

FIXED = ("folds", "split", "sample", "data")  # the folds every trial is scored on, and the data
DIRECTIONS = ("minimize", "maximize")
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "none")


@dataclass(frozen=True)
class Dimension:
    """One searched key: a range (`low`..`high`, `log` scale, integers for an int key) or
    `choices`."""
    key: str
    value_type: type
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()

    def suggest(self, trial):
        if self.choices:
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.value_type is int:
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, log=self.log)

    def holds(self, value) -> bool:
        """Whether `value` is one this dimension can suggest."""
        if self.choices:
            return value in self.choices
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and self.low is not None and self.high is not None
                and self.low <= value <= self.high)


@dataclass(frozen=True)
class Search:
    study: str
    trials: int
    objective: str
    direction: str
    sampler: str
    seed: int
    pruner: str
    startup_trials: int
    epochs: int
    until: str
    storage: str
    heartbeat: int
    tpe: dict
    space: tuple
    start: tuple = ()        # (name, {key: value}) pairs: the first trials, enqueued

    def changes(self, trial) -> dict:
        """The trial's params.yaml changes, dotted: its suggestions and the search's epochs."""
        values = {d.key: d.suggest(trial) for d in self.space}
        if self.epochs:
            values["train.epochs"] = self.epochs
        return values


DEFAULTS = {"study": "search", "trials": 20, "objective": "logloss", "direction": "minimize",
            "sampler": "tpe", "seed": 0, "pruner": "median", "startup_trials": 3, "epochs": 0,
            "until": "", "storage": "", "heartbeat": 60}
# TPE's settings, each passed to Optuna (its own defaults changed in Optuna 5, and may again):
# these are Optuna 5.1's for one objective
TPE = {"n_startup_trials": 10, "n_ei_candidates": 24, "multivariate": True, "group": False,
       "constant_liar": True}


def load(path: str | Path, base: P.Params) -> Search:
    """search.yaml as typed settings; an InputError naming the file and key at fault."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: not found (foldwise-search reads its search space there)")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a mapping")
    unknown = sorted(set(raw) - set(DEFAULTS) - {"space", "start", "tpe"})
    if unknown:
        raise InputError(f"{path}: unknown key(s) {', '.join(unknown)} (known: "
                         f"{', '.join([*DEFAULTS, 'tpe', 'space', 'start'])})")
    settings = {k: raw.get(k, v) for k, v in DEFAULTS.items()}
    for key, value in settings.items():
        kind = type(DEFAULTS[key])
        if not isinstance(value, kind) or isinstance(value, bool):
            raise InputError(f"{path}: {key}={value!r} must be {kind.__name__}")
    for key, allowed in (("direction", DIRECTIONS), ("sampler", SAMPLERS), ("pruner", PRUNERS)):
        if settings[key] not in allowed:
            raise InputError(f"{path}: {key}={settings[key]!r} must be one of {', '.join(allowed)}")
    if settings["trials"] < 1 or settings["epochs"] < 0 or settings["startup_trials"] < 0:
        raise InputError(f"{path}: trials must be >= 1, epochs and startup_trials >= 0")
    if settings["heartbeat"] < 1:
        raise InputError(f"{path}: heartbeat must be >= 1 (seconds)")
    if settings["until"]:
        after = stages_from(path.parent / "dvc.yaml", "evaluate")
        if settings["until"] not in after:
            raise InputError(f"{path}: until={settings['until']!r} must be '' (the whole "
                             f"pipeline) or a stage that has the objective: {', '.join(after)}")
    space = raw.get("space") or {}
    if not isinstance(space, dict) or not space:
        raise InputError(f"{path}: space must map params.yaml keys to a range or choices")
    dims = tuple(dimension(path, key, spec, base) for key, spec in space.items())
    return Search(**settings, tpe=tpe_settings(path, raw.get("tpe")), space=dims,
                  start=starts(path, raw.get("start"), dims))


def tpe_settings(path: Path, raw) -> dict:
    """`tpe`: TPE's settings, each of `TPE` (a key left out takes foldwise's value, never
    Optuna's default of the day), of its type."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise InputError(f"{path}: tpe must map TPE settings ({', '.join(TPE)}) to values")
    unknown = sorted(set(raw) - set(TPE))
    if unknown:
        raise InputError(f"{path}: tpe: unknown key(s) {', '.join(unknown)} (known: "
                         f"{', '.join(TPE)})")
    for key, value in raw.items():
        if type(value) is not type(TPE[key]) or (type(value) is int and value < 1):
            raise InputError(f"{path}: tpe.{key}={value!r} must be {type(TPE[key]).__name__}"
                             + (" >= 1" if type(TPE[key]) is int else ""))
    settings = {**TPE, **raw}
    if settings["group"] and not settings["multivariate"]:
        raise InputError(f"{path}: tpe.group needs tpe.multivariate: true")
    return settings


def starts(path: Path, raw, dims: tuple) -> tuple:
    """`start`: named settings of searched keys, each value one its dimension can suggest."""
    if raw is None:
        return ()
    if not isinstance(raw, dict) or not all(isinstance(v, dict) and v for v in raw.values()):
        raise InputError(f"{path}: start must map names to settings ({{lr: 0.001, ...}})")
    by_key = {d.key: d for d in dims}
    for name, values in raw.items():
        for key, value in values.items():
            if key not in by_key:
                raise InputError(f"{path}: start.{name}.{key}: not a key of space (a start "
                                 "sets searched keys only)")
            if not by_key[key].holds(value):
                raise InputError(f"{path}: start.{name}.{key}: {value!r} is outside its space")
    return tuple((str(name), dict(values)) for name, values in raw.items())


def stages_from(dvc_yaml: Path, first: str) -> list[str]:
    """dvc.yaml's stages from `first` on, in the file's order (those that follow evaluate have
    its metrics.json, the objective)."""
    names = list((yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {})) if dvc_yaml.is_file() else []
    return names[names.index(first):] if first in names else []


def dimension(path: Path, key: str, spec, base: P.Params) -> Dimension:
    """One key of `space`, checked: a params key outside the fixed sections, a non-empty range
    or choice list, values of the key's type (and timm models for train.model)."""
    where = f"{path}: space.{key}"
    kind = P.field_type(P.Params, key)
    if kind is None or dataclasses.is_dataclass(kind):
        raise InputError(f"{where}: not a key of params.yaml (dotted, like train.epochs)")
    if key.split(".")[0] in FIXED:
        raise InputError(f"{where}: {', '.join(FIXED)} stay fixed across trials: they decide the "
                         "folds and data every trial is scored on, and trials scored on other "
                         "folds cannot be compared (`seed` changes the training only)")
    if not isinstance(spec, dict) or not ({"low", "high"} <= set(spec) or "choices" in spec):
        raise InputError(f"{where}: give {{low: , high: [, log: true]}} or {{choices: [...]}}")
    extra = sorted(set(spec) - {"low", "high", "log", "choices"})
    if extra:
        raise InputError(f"{where}: unknown field(s) {', '.join(extra)}")
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise InputError(f"{where}: choices must be a non-empty list")
        for value in choices:
            _check_value(where, key, value, base)
        return Dimension(key, kind, choices=tuple(choices))
    return _range(where, key, kind, spec, base)


def _range(where: str, key: str, kind, spec: dict, base: P.Params) -> Dimension:
    if kind not in (int, float):
        raise InputError(f"{where}: a {kind.__name__} key takes choices, not a range")
    low, high, log = spec["low"], spec["high"], spec.get("log", False)
    numbers = (int,) if kind is int else (int, float)
    if not all(isinstance(v, numbers) and not isinstance(v, bool) for v in (low, high)):
        raise InputError(f"{where}: low and high must be {kind.__name__}s")
    if not low < high:
        raise InputError(f"{where}: empty range: low {low} is not below high {high}")
    if not isinstance(log, bool) or (log and low <= 0):
        raise InputError(f"{where}: log must be true or false, and a log range above 0")
    for value in (low, high):
        _check_value(where, key, value, base)
    return Dimension(key, kind, low=float(low), high=float(high), log=log)


def _check_value(where: str, key: str, value, base: P.Params) -> None:
    try:
        P.evolve(base, P.nested({key: value}))
    except InputError as err:
        raise InputError(f"{where}: {value!r} is not a valid value ({err})") from None
    if key == "train.model":
        from foldwise.names import timm_with_ours  # imports timm
        if not timm_with_ours().is_model(value):
            raise InputError(f"{where}: {value!r} is not a timm model (timm.list_models() names "
                             "them)")
