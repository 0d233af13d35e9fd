"""What every stage entrypoint shares: its command line, logging, and bad input reported as
one clear line."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import typing
from pathlib import Path

import foldwise
from foldwise.errors import InputError
from foldwise.files import project_root, source_digest
from foldwise.scale import twins


def parser(doc: str, **kwargs) -> argparse.ArgumentParser:
    """A command's parser whose `--help` is its whole docstring as written: the first
    paragraph above the options, the rest below them."""
    head, _, rest = doc.strip().partition("\n\n")
    return argparse.ArgumentParser(description=head, epilog=rest,
                                   formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)


def arguments(doc: str, *names: tuple[str, str]) -> list[str]:
    """Parse the stage's positional arguments, given as (name, help) pairs; `--help` prints
    the stage's docstring (what it reads from params.yaml and what it writes) and each one.
    A wrong number of arguments is a usage line, not a traceback."""
    ap = parser(doc)
    for name, help_text in names:
        ap.add_argument(name, help=help_text)
    args = ap.parse_args()
    return [getattr(args, name) for name, _ in names]


def paths(doc: str, cls):
    """The stage's positional arguments as its body's `Paths`: a dataclass whose fields, in
    order, are the arguments, each `Annotated[type, "help"]` (a Path, or an int such as a fold
    number); `--help` prints the stage's docstring and each field's help."""
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = [(f.name, hints[f.name]) for f in dataclasses.fields(cls)]
    values = arguments(doc, *((name, hint.__metadata__[0]) for name, hint in fields))
    return cls(*(hint.__origin__(value) for (_, hint), value in zip(fields, values)))


def check_code(cwd: str | Path | None = None) -> None:
    """The editable install is the one way foldwise reaches the path, so a stage run in another
    checkout of the project (a DVC experiment's temporary copy, a test's project) imports the
    installed checkout's code, while DVC hashes the copy's. Same code: fine. Other code: the
    results would not be what dvc.lock records, so the stage refuses to run."""
    own = Path(cwd or Path.cwd()).resolve() / "src" / "foldwise"
    imported = Path(foldwise.__file__).resolve().parent
    if own.is_dir() and own != imported and source_digest(own) != source_digest(imported):
        raise InputError(f"this checkout's code ({own}) differs from the foldwise installed in "
                         f"this Python ({imported}); run `pip install -e .` here, or commit the "
                         f"change in {project_root()} before queuing experiments")


def run(main) -> None:
    # foldwise's own progress lines; other libraries only when they warn (MLflow's table
    # creation and matplotlib's font cache are INFO lines a user cannot act on)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("foldwise").setLevel(logging.INFO)
    try:
        check_code()
        with twins.turn(sys.argv):
            main()
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C: one line, not the traceback of wherever torch was
        print(f"\n{interrupted(sys.argv)}", file=sys.stderr)
        sys.exit(130)


def interrupted(argv: list[str]) -> str:
    """The line a command prints when Ctrl-C stops it: what stopped, what was kept, how to go on."""
    stem = Path(argv[0]).stem
    if stem in KEPT:
        return f"interrupted: {stem}; {KEPT[stem]}"
    what = f"the {stem} stage" + (f" (fold {argv[1]})" if stem in FOLD_STAGES and len(argv) > 1 else "")
    kept = ("its finished epochs are kept (.foldwise/resume/)" if stem in FOLD_STAGES else
            "nothing half-written is kept (each output is written whole or not at all)")
    return (f"interrupted: {what}; {kept}; `dvc repro` goes on from there, and finished stages "
            "are not run again")


KEPT = {"foldwise-search": "its finished trials are kept in the study and as DVC experiments, "
                           "and its runs in MLflow are marked KILLED; run it again to go on (the "
                           "trials cut short are failed and retried)"}
FOLD_STAGES = ("train", "pseudo")
