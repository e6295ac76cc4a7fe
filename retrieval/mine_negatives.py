"""Shim: ``python -m retrieval.mine_negatives ARGS`` = ``vlt5r mine-negatives ARGS``
(:mod:`vlt5r.drivers.mine_negatives`; the library is :mod:`retrieval.mining`)."""

import sys

from vlt5r.drivers.mine_negatives import main

if __name__ == "__main__":
    sys.exit(main())
