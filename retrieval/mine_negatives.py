"""Hard-negative mining: search the training queries, keep the top-ranked KB entries that are not positives.

    python -m retrieval.mine_negatives --encoder runs/x/best --kb kb.jsonl --kb-features kb.h5 \
        --queries queries.train.jsonl --query-features scenes.h5 --out queries.train.mined.jsonl --top 8
    python -m retrieval.mine_negatives --encoder clip-image ...        # or clip-text --question-features q.h5

``--encoder`` is a saved query encoder directory or a CLIP baseline (``clip-image``: the query image's fc;
``clip-text``: the question's CLIP text embedding from ``--question-features``, keyed by query id). The search is
exact (faiss Flat, cosine). Each output record is the input record (all fields kept) with ``hard_negatives``
replaced by the mined ids, best first (``--merge`` appends the ones it already had, without repeats). Train on
the new file with ``python -m retrieval.train --train-queries OUT`` (DPR's / ANCE's second round).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from feature_extraction.store import FeatureStore
from retrieval.formats import exit_on_user_error, iter_jsonl
from foundations.cli import CLIParser
from retrieval.training.baselines import CLIP_SOURCES, add_kb_args, clip_vectors, kb_from_args
from retrieval.training.data import load_queries, open_features
from retrieval.training.evaluation import encode_queries, flat_index

logger = logging.getLogger(__name__)


def mine(top_ids: np.ndarray, positives: list[list[str]], top: int) -> list[list[str]]:
    """Per query, the first ``top`` retrieved ids that are not positives (``top_ids`` (Q, k), best first)."""
    out = []
    for row, pos in zip(top_ids, positives):
        keep = set(pos)
        out.append([str(i) for i in row if i and str(i) not in keep][:top])
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = CLIParser(prog="python -m retrieval.mine_negatives", description=__doc__.split("\n\n")[0])
    p.add_argument("--encoder", required=True, help="a saved QueryEncoder dir, clip-image or clip-text")
    add_kb_args(p)
    p.add_argument("--queries", required=True, type=Path, help="queries JSONL to mine for (usually train)")
    p.add_argument("--query-features", help="CLIP features of the query images (encoder and clip-image)")
    p.add_argument("--question-features", help="CLIP text features of the questions keyed by query id (clip-text)")
    p.add_argument("--out", required=True, type=Path, help="the new queries JSONL")
    p.add_argument("--top", type=int, default=8, help="hard negatives kept per query")
    p.add_argument("--merge", action="store_true", help="append the query's existing hard negatives after the mined")
    p.add_argument("--batch-size", type=int, default=128)
    args = p.parse_args(argv)
    if args.top < 1:
        p.error(f"--top must be >= 1, got {args.top}")
    if args.out.resolve() == args.queries.resolve():
        p.error("--out must differ from --queries (the input is read while writing)")
    return args


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    kb = kb_from_args(args)
    need_images = args.encoder != "clip-text"
    if need_images and not args.query_features:
        raise ValueError(f"--encoder {args.encoder} needs --query-features")
    query_store = open_features(args.query_features) if args.query_features else None
    queries = load_queries(str(args.queries), set(kb.ids), query_store if need_images else None, "mining")
    if args.encoder in CLIP_SOURCES:
        questions = FeatureStore.open(args.question_features) if args.question_features else None
        vectors = clip_vectors(args.encoder, queries, query_store, questions, kb.dim)
    else:
        from vlt5 import QueryEncoder

        encoder = QueryEncoder.from_pretrained(args.encoder)
        if encoder.config.proj_dim != kb.dim:
            raise ValueError(f"{args.encoder}: output dim {encoder.config.proj_dim} != KB dim {kb.dim}")
        vectors = encode_queries(encoder, queries, query_store, args.batch_size)
    depth = min(len(kb.ids), args.top + max(len(q.positives) for q in queries))
    _, top_ids = flat_index(kb.ids, kb.vectors).search(vectors, depth)  # (Q, depth)
    mined = mine(top_ids, [q.positives for q in queries], args.top)
    hits = sum(bool(set(q.positives) & set(map(str, row[: args.top]))) for q, row in zip(queries, top_ids))
    by_id = {q.id: m for q, m in zip(queries, mined)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        for _, record in iter_jsonl(args.queries):
            negatives = by_id[str(record["id"])]
            if args.merge:
                negatives += [n for n in record.get("hard_negatives") or [] if n not in negatives]
            f.write(json.dumps({**record, "hard_negatives": negatives}) + "\n")
    print(f"mined {args.top} hard negatives for {len(queries)} queries with {args.encoder} "
          f"(a positive in the top {args.top}: {hits / len(queries):.1%}); wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
