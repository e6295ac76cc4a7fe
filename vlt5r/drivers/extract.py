"""vlt5r extract — CLIP features (fc + grid) for an image folder, an image list or a JSONL of texts, into one HDF5.

examples:
  vlt5r extract --images /data/coco/val2014 --out coco_rn101.h5 --backbone RN101
  vlt5r extract --images DIR --out feats.h5 --backbone ViT-B/32 --batch-size 256
  vlt5r extract --images DIR --out feats.h5 --backbone ViT-B/32 --precision bf16 --no-grid   # CPU with bf16/AMX
  vlt5r extract --images DIR --out feats.h5 --backbone ViT-B/32 --decode gpu --batch-size auto   # one GPU
  vlt5r extract --texts kb.jsonl --out kb_text.h5 --backbone ViT-B/32          # {"id", "text"} per line
  vlt5r extract --image-list list.tsv --out feats.h5 --backbone my_clip.pt     # OpenAI-format .pt
  vlt5r extract --images DIR --out feats.h5 --backbone hf:openai/clip-vit-base-patch32
  torchrun --nproc-per-node 8 -m vlt5r extract --images DIR --out feats.h5 --backbone RN101   # one shard per rank

Batched, resumable after any crash (rerun the same command), never stopped by a bad file (skipped, counted and
listed in OUT.skipped.tsv). Same as `python feature_extraction/clip_prepro_feats.py`. See docs/extraction.md.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from feature_extraction.config import DECODERS, DTYPES, PRECISIONS
from foundations.cli import CLIParser, command, setup_logging
from foundations.images import DEFAULT_MAX_PIXELS


def build_parser() -> CLIParser:
    p = CLIParser(prog="vlt5r extract", description=__doc__)
    src = p.add_argument_group("input (exactly one)")
    src.add_argument("--images", type=Path, help="folder, searched recursively; id = relative path without suffix")
    src.add_argument("--image-list", type=Path, help="file of lines 'path' or 'id<TAB>path'")
    src.add_argument("--texts", type=Path, help='JSONL of {"id", "text"} (text mode, e.g. knowledge-base passages)')
    p.add_argument("--out", type=Path, required=True, help="output .h5 (resumed/appended if it exists)")
    p.add_argument("--backbone", default="ViT-B/32",
                   help="OpenAI CLIP name (RN50, RN101, RN50x4, ViT-B/32, ViT-B/16, ViT-L/14), a local "
                        "OpenAI-format .pt, or hf:<dir or hub id>")
    p.add_argument("--batch-size", type=batch_size_arg, default=64,
                   help="items per forward, or auto (CPU: 32; CUDA: the largest power of two <= 512 whose "
                        "activations fit in 40%% of the GPU's memory, measured by one probe batch)")
    p.add_argument("--num-workers", type=int,
                   help="DataLoader workers decoding + preprocessing (default: 0 on CPU, min(4, CPUs) on GPU)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: CPUs minus --num-workers, >= 1)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (torchrun: cuda:LOCAL_RANK)")
    p.add_argument("--dtype", default="float16", choices=DTYPES, help="stored dtype")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="the forward's arithmetic (default: fp16 on CUDA, fp32 on CPU; bf16: autocast, fast on CPUs "
                        "with AVX512-BF16/AMX); recorded in the file, appending with another one is refused")
    p.add_argument("--decode", default="cpu", choices=DECODERS,
                   help="gpu: decode JPEGs with nvJPEG and resize/crop/normalise on the GPU, in batches (other "
                        "formats and failures fall back to the CPU per file, logged)")
    p.add_argument("--compile", action="store_true", help="torch.compile the image tower (warm-up reported)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                   help="channels_last ResNet towers (default: on in bf16/fp16; off in fp32, whose numbers it moves "
                        "by ~5e-8, so that the default output stays what it was)")
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


def batch_size_arg(text: str) -> int | str:
    """``--batch-size``: an integer or ``auto``."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or auto, got {text!r}") from None


@command
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.quiet)
    from feature_extraction.config import ExtractConfig, resolve_shard

    cfg = ExtractConfig(
        out=args.out, backbone=args.backbone, images=args.images, image_list=args.image_list, texts=args.texts,
        batch_size=args.batch_size, num_workers=args.num_workers, threads=args.threads, device=args.device,
        dtype=args.dtype, precision=args.precision, decode=args.decode, compile=args.compile,
        channels_last=args.channels_last,
        image_size=args.image_size, grid=not args.no_grid,
        shard=resolve_shard(args.num_shards, args.shard_id), max_pixels=args.max_pixels, chunk_size=args.chunk_size,
        retry_skipped=args.retry_skipped, progress=not args.no_progress)
    from tqdm.contrib.logging import logging_redirect_tqdm

    from feature_extraction.extract import extract  # heavy imports (torch, clip) only after the flags are ok

    try:
        with logging_redirect_tqdm():
            summary = extract(cfg)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    print(summary.text())
    return 0
