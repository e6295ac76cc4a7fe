"""Shim: ``python -m retrieval.importers ARGS`` = ``vlt5r import ARGS`` (:mod:`vlt5r.drivers.importers`)."""

import sys

from vlt5r.drivers.importers import main

sys.exit(main())
