"""Shim: ``python feature_extraction/clip_prepro_feats.py ARGS`` = ``vlt5r extract ARGS`` (see :mod:`vlt5r.drivers.extract`).

The successor of VL-T5/VL_adapter's and CLIP-ViL's ``clip_prepro_feats.py`` (one image at a time, one file per
image), rebuilt as a batched, resumable, kill-safe and shardable pipeline; see ``docs/extraction.md``.
"""

import sys
from pathlib import Path

if not __package__:  # run as a script: import the packages, not this folder's modules as top-level names
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from vlt5r.drivers.extract import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
