"""vlt5r merge — merge the shard files of one sharded extraction into a single feature file.

examples:
  vlt5r merge --out feats.h5 feats-0000*-of-00004.h5
  vlt5r merge --out feats.h5 --overwrite feats-*-of-00008.h5      # replace an existing feats.h5

Shards are ordered by their shard_id attribute; mismatched, missing, repeated or unfinished shards are refused.
An existing --out is replaced only with --overwrite. Same as `python feature_extraction/merge_feats.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from foundations.cli import CLIParser, command, setup_logging
from foundations.io import refuse_overwrite


def build_parser() -> CLIParser:
    p = CLIParser(prog="vlt5r merge", description=__doc__)
    p.add_argument("--out", type=Path, required=True, help="merged .h5 to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("shards", type=Path, nargs="+", help="the shard files (any order)")
    return p


@command
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    refuse_overwrite(args.out, args.overwrite, inputs=args.shards)
    from feature_extraction.merge_feats import merge_shards

    n = merge_shards(args.shards, args.out)
    print(f"merged {len(args.shards)} shards, {n} rows -> {args.out}")
    return 0
