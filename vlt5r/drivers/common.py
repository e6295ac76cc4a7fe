"""Flags shared by several drivers (the knowledge base's vectors: baselines, mine-negatives)."""

from __future__ import annotations

import argparse

from foundations.errors import UsageError

KB_SIDES = ("image", "text", "mean")


def add_kb_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kb", required=True, help="knowledge base JSONL")
    p.add_argument("--kb-features", help="CLIP image features of the KB entries")
    p.add_argument("--kb-text-features", help="CLIP text features of the KB entries")
    p.add_argument("--kb-side", choices=KB_SIDES, default="image", help="which KB vectors to search")


def kb_from_args(args: argparse.Namespace):  # -> retrieval.training.data.KBVectors
    if args.kb_side in ("image", "mean") and not args.kb_features:
        raise UsageError(f"--kb-side {args.kb_side} needs --kb-features")
    if args.kb_side in ("text", "mean") and not args.kb_text_features:
        raise UsageError(f"--kb-side {args.kb_side} needs --kb-text-features")
    from retrieval.training.data import load_kb

    return load_kb(args.kb, args.kb_features, args.kb_text_features, args.kb_side)
