"""vlt5r mine-negatives — mine hard negatives: search the training queries, keep the top non-positive KB entries.

examples:
  vlt5r mine-negatives --encoder runs/x/best --kb kb.jsonl --kb-features kb.h5 \
      --queries queries.train.jsonl --query-features scenes.h5 --out queries.train.mined.jsonl --top 8
  vlt5r mine-negatives --encoder clip-image ...                  # or clip-text --question-features q.h5

--encoder is a saved query encoder directory or a CLIP baseline (clip-image: the query image's fc; clip-text: the
question's CLIP text embedding from --question-features, keyed by query id). The search is exact (faiss Flat,
cosine). Each output record is the input record (all fields kept) with "hard_negatives" replaced by the mined ids,
best first (--merge appends the ones it already had, without repeats). Then train on it:
`vlt5r train --train-queries OUT ...`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from foundations.cli import CLIParser, command, setup_logging
from foundations.errors import UsageError, UserError
from foundations.io import refuse_overwrite
from vlt5r.drivers.common import add_kb_args, kb_from_args


def build_parser() -> CLIParser:
    p = CLIParser(prog="vlt5r mine-negatives", description=__doc__)
    p.add_argument("--encoder", required=True, help="a saved QueryEncoder dir, clip-image or clip-text")
    add_kb_args(p)
    p.add_argument("--queries", required=True, type=Path, help="queries JSONL to mine for (usually train)")
    p.add_argument("--query-features", help="CLIP features of the query images (encoder and clip-image)")
    p.add_argument("--question-features", help="CLIP text features of the questions keyed by query id (clip-text)")
    p.add_argument("--out", required=True, type=Path, help="the new queries JSONL")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--top", type=int, default=8, help="hard negatives kept per query")
    p.add_argument("--merge", action="store_true", help="append the query's existing hard negatives after the mined")
    p.add_argument("--batch-size", type=int, default=128)
    return p


@command
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.top < 1:
        raise UsageError(f"--top must be >= 1, got {args.top}")
    inputs = [args.queries, args.kb, args.kb_features, args.kb_text_features, args.query_features,
              args.question_features]
    refuse_overwrite(args.out, args.overwrite, inputs=[p for p in inputs if p])
    setup_logging(quiet=True)
    from feature_extraction.readers import open_features as open_feature_file
    from retrieval.mining import mine_queries, write_mined
    from retrieval.training.baselines import CLIP_SOURCES, clip_vectors
    from retrieval.training.data import load_queries, open_features
    from retrieval.training.evaluation import encode_queries

    kb = kb_from_args(args)
    need_images = args.encoder != "clip-text"
    if need_images and not args.query_features:
        raise UsageError(f"--encoder {args.encoder} needs --query-features")
    if not need_images and not args.question_features:
        raise UsageError("--encoder clip-text needs --question-features (CLIP text features keyed by query id)")
    query_store = open_features(args.query_features) if args.query_features else None
    queries = load_queries(str(args.queries), set(kb.ids), query_store if need_images else None, "mining")
    if args.encoder in CLIP_SOURCES:
        questions = open_feature_file(args.question_features) if args.question_features else None
        vectors = clip_vectors(args.encoder, queries, query_store, questions, kb.dim)
    else:
        from vlt5 import QueryEncoder

        encoder = QueryEncoder.from_pretrained(args.encoder)
        if encoder.config.proj_dim != kb.dim:
            raise UserError(f"{args.encoder}: output dim {encoder.config.proj_dim} != KB dim {kb.dim}")
        vectors = encode_queries(encoder, queries, query_store, args.batch_size)
    mined, hit_rate = mine_queries(vectors, kb.ids, kb.vectors, queries, args.top)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_mined(args.queries, args.out, mined, args.merge)
    print(f"mined {args.top} hard negatives for {len(queries)} queries with {args.encoder} "
          f"(a positive in the top {args.top}: {hit_rate:.1%}); wrote {args.out}")
    return 0
