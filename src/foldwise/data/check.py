"""The check stage's body: every key of params.yaml against the schema and timm's registries,
before any stage that writes results runs."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from foldwise.errors import InputError
from foldwise.names import check_timm_names
from foldwise.params import UNDO, load

CHECKED = "params.yaml: every key checked against foldwise's params schema\n"


@dataclass(frozen=True)
class Paths:
    out: Annotated[Path, "the marker the later stages depend on"]


def run(params_file: str | Path, paths: Paths) -> None:
    """`params_file` loaded against the schema and timm's registries, then `paths.out` written
    (always the same line). A bad value is an InputError that names the key, the value and
    the allowed ones, and says how to get back."""
    try:
        check_timm_names(load(params_file), where=str(params_file))
    except InputError as err:
        raise InputError(f"{err}\n  {UNDO}") from None
    paths.out.parent.mkdir(parents=True, exist_ok=True)
    paths.out.write_text(CHECKED)
