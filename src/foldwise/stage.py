"""What every stage entrypoint shares: its command line, logging, and bad input reported as
one clear line."""
from __future__ import annotations

import argparse
import logging
import sys

from foldwise.errors import InputError


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


def run(main) -> None:
    # foldwise's own progress lines; other libraries only when they warn (MLflow's table
    # creation and matplotlib's font cache are INFO lines a user cannot act on)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("foldwise").setLevel(logging.INFO)
    try:
        main()
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
