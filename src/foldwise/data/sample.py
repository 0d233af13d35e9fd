"""The sample stage's body: the embedded synthetic set of `data.source`, in its real layout."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from foldwise.data.sources import get_source
from foldwise.files import write_off
from foldwise.params import Params


@dataclass(frozen=True)
class Paths:
    out: Annotated[Path, "where the sample goes (replaced whole)"]


def run(params: Params, paths: Paths) -> str:
    """The sample into `paths.out`, or, where `data.root` points elsewhere (your own data),
    only a note saying so (the sample would be written, and then read by nothing). Returns
    the line the stage prints."""
    source, root = params.data.source, params.data.root
    if Path(root).resolve() != paths.out.resolve():
        write_off(paths.out, f"data.root: {root} (not the sample)")
        return f"sample: not written, data.root is {root}"
    options = dataclasses.asdict(getattr(params.sample, source))
    get_source(source).write_sample(paths.out, seed=params.sample.seed, **options)
    return f"sample: the {source} sample written to {paths.out}"
