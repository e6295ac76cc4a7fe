"""vlt5r export-vladapter — write a feature file in VL_adapter's CLIP layout (one {id}.h5 per image).

examples:
  vlt5r export-vladapter feats.h5 data_clip_RN101_att
  vlt5r export-vladapter feats.h5 data_clip_RN101_att --fc-dir data_clip_RN101_fc

Same as `python -m feature_extraction.export_vladapter`. See docs/extraction.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from foundations.cli import CLIParser, command, setup_logging


def build_parser() -> CLIParser:
    p = CLIParser(prog="vlt5r export-vladapter", description=__doc__)
    p.add_argument("features", type=Path, help="feature file (or any layout feature_extraction.readers.open_features reads)")
    p.add_argument("out_dir", type=Path, help="folder for {id}.h5 grid files")
    p.add_argument("--fc-dir", type=Path, help="also write the pooled vectors here, as (1, D)")
    return p


@command
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    from feature_extraction.export_vladapter import export_vladapter
    from feature_extraction.readers import open_features

    with open_features(args.features) as store:
        n = export_vladapter(store, args.out_dir, args.fc_dir)
    print(f"exported {n} items to {args.out_dir}")
    return 0
