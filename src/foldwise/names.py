"""timm's registries, with foldwise's networks for small images (`foldwise.smallnets`) in
them: the names `train.model`, `distill.model` and `train.optimizer` may take, and the check
stage's body, which asks them. Apart from `params.py`, so that the stages that only read
params.yaml do not depend on the networks' code.
"""
from __future__ import annotations

import difflib
from pathlib import Path

from foldwise.errors import InputError
from foldwise.params import Params, get, timm_keys


def timm_with_ours():
    """timm, with foldwise's networks for small images (`foldwise.smallnets`) in its registry."""
    import timm
    import foldwise.smallnets  # noqa: F401  (registers them)
    return timm


def timm_registry(kind: str) -> list[str]:
    """The names timm's own registry of `kind` holds (model names without a pretrained tag)."""
    from timm import optim
    if kind == "model":
        return timm_with_ours().list_models()
    return optim.list_optimizers()


def known_timm_names() -> dict[str, set]:
    """timm's registries as the last import of this timm version listed them, kept in the user's
    cache (`~/.cache/foldwise/timm-VERSION.json`): importing timm costs the check stage 4 s of
    its 4.3, in every pipeline whose params change. Only a hit is trusted; a name missing here
    is looked up in the live registry (a model registered since, or a misspelling)."""
    import json
    import os
    from importlib.metadata import version
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "foldwise"
    path = cache / f"timm-{version('timm')}.json"
    try:
        return {k: set(v) for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError):
        pass
    names = {kind: timm_registry(kind) for kind in ("model", "optimizer")}
    try:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(names))
        tmp.replace(path)
    except OSError:  # a read-only home: the check works, only slower
        pass
    return {k: set(v) for k, v in names.items()}


def check_timm_names(params: Params, where: str = "params.yaml") -> None:
    """Every key that names a timm model or optimizer names one timm knows."""
    cached = known_timm_names()
    for dotted, kind, _blank in timm_keys():
        value = get(params, dotted)
        if not value or value in cached[kind] or value.split(".")[0] in cached[kind]:
            continue
        timm = timm_with_ours()
        known = (timm.is_model(value) or timm.is_model(value.split(".")[0]) if kind == "model"
                 else value in timm_registry(kind))
        if not known:
            close = difflib.get_close_matches(value, timm_registry(kind), n=5)
            raise InputError(f"{where}: {dotted}={value!r} is not a timm {kind}"
                             + (f"; close ones: {', '.join(close)}" if close else "")
                             + (" (timm.list_models() lists them)" if kind == "model" else
                                " (timm.optim.list_optimizers() lists them)"))
