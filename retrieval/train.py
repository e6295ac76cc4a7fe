"""Shim: ``python -m retrieval.train ARGS`` = ``vlt5r train ARGS`` (:mod:`vlt5r.drivers.train`; the library is
:mod:`retrieval.training`)."""

import sys

from vlt5r.drivers.train import main

if __name__ == "__main__":
    sys.exit(main())
