"""Shim: ``python retrieval/build_index.py ARGS`` = ``vlt5r build-index ARGS`` (:mod:`vlt5r.drivers.build_index`)."""

import sys
from pathlib import Path

if not __package__:  # run as a script: import the packages, not this folder's modules as top-level names
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from vlt5r.drivers.build_index import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
