"""What every stage entrypoint shares: logging, and bad input reported as one clear line."""
from __future__ import annotations

import logging
import sys

from foldwise.errors import InputError


def run(main) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        main()
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
