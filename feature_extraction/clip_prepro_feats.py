"""Extract CLIP features (fc + grid) for an image folder, an image list or a JSONL of texts into one HDF5 file.

    python feature_extraction/clip_prepro_feats.py --images DIR --out feats.h5 --backbone RN101
    python -m feature_extraction.clip_prepro_feats --texts kb.jsonl --out kb.h5 --backbone ViT-B/32

The successor of VL-T5/VL_adapter's and CLIP-ViL's ``clip_prepro_feats.py`` (one image at a time, one file per
image), rebuilt as a batched, resumable, kill-safe and shardable pipeline; see ``docs/extraction.md``.
This file only maps flags onto :class:`~feature_extraction.config.ExtractConfig` and prints the summary.
A user error ends in a one-line ``error: ...`` and exit status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a script: import the package, not this folder's modules as top-level names
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import logging

from feature_extraction.config import ExtractConfig, resolve_shard
from foundations.cli import CLIParser, report_error
from foundations.errors import UsageError
from foundations.images import DEFAULT_MAX_PIXELS


def build_parser() -> argparse.ArgumentParser:
    p = CLIParser(prog="clip_prepro_feats.py", description=__doc__.split("\n")[0])
    src = p.add_argument_group("input (exactly one)")
    src.add_argument("--images", type=Path, help="folder, searched recursively; id = relative path without suffix")
    src.add_argument("--image-list", type=Path, help="file of lines 'path' or 'id<TAB>path'")
    src.add_argument("--texts", type=Path, help='JSONL of {"id", "text"} (text mode, e.g. knowledge-base passages)')
    p.add_argument("--out", type=Path, required=True, help="output .h5 (resumed/appended if it exists)")
    p.add_argument("--backbone", default="ViT-B/32",
                   help="OpenAI CLIP name (RN50, RN101, RN50x4, ViT-B/32, ViT-B/16, ViT-L/14), a local "
                        "OpenAI-format .pt, or hf:<dir or hub id>")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int,
                   help="DataLoader workers decoding + preprocessing (default: 0 on CPU, min(4, CPUs) on GPU)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: CPUs minus --num-workers, >= 1)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (torchrun: cuda:LOCAL_RANK)")
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"], help="stored dtype")
    p.add_argument("--image-size", type=int, help="input size; non-native sizes interpolate positional embeddings")
    p.add_argument("--no-grid", action="store_true", help="store fc only")
    p.add_argument("--num-shards", type=int, help="write contiguous block --shard-id of this many")
    p.add_argument("--shard-id", type=int, help="0-based; defaults to torchrun's RANK (of WORLD_SIZE)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="skip larger images")
    p.add_argument("--chunk-size", type=int, default=1024, help="items per committed spool chunk (resume grain)")
    p.add_argument("--retry-skipped", action="store_true", help="retry items an earlier run skipped")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    p.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    return p


def config_from_args(args: argparse.Namespace) -> ExtractConfig:
    return ExtractConfig(
        out=args.out, backbone=args.backbone, images=args.images, image_list=args.image_list, texts=args.texts,
        batch_size=args.batch_size, num_workers=args.num_workers, threads=args.threads, device=args.device,
        dtype=args.dtype, image_size=args.image_size, grid=not args.no_grid,
        shard=resolve_shard(args.num_shards, args.shard_id), max_pixels=args.max_pixels, chunk_size=args.chunk_size,
        retry_skipped=args.retry_skipped, progress=not args.no_progress)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, stream=sys.stderr,
                            format="%(levelname)s %(name)s: %(message)s")
        cfg = config_from_args(args)
        from tqdm.contrib.logging import logging_redirect_tqdm

        from feature_extraction.extract import extract  # heavy imports (torch, clip) only after the flags are ok
        from feature_extraction.store import FeatureFileError

        try:
            with logging_redirect_tqdm():
                summary = extract(cfg)
        except FeatureFileError as exc:
            raise UsageError(str(exc)) from exc
    except UsageError as exc:
        return report_error(exc)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    print(summary.text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
