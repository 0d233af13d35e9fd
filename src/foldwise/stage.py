"""What every stage entrypoint shares: its command line, logging, and bad input reported as
one clear line."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import foldwise
from foldwise.errors import InputError
from foldwise.files import project_root, source_digest
from foldwise.scale import twins


def arguments(doc: str, *names: tuple[str, str]) -> list[str]:
    """Parse the stage's positional arguments, given as (name, help) pairs; `--help` prints
    the stage's docstring (what it reads from params.yaml and what it writes) and each one.
    A wrong number of arguments is a usage line, not a traceback."""
    title, _, rest = doc.strip().partition("\n")
    parser = argparse.ArgumentParser(description=title, epilog=rest.strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, help_text in names:
        parser.add_argument(name, help=help_text)
    args = parser.parse_args()
    return [getattr(args, name) for name, _ in names]


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
