"""Baselines beside every evaluation: CLIP image-only, CLIP text-only and joint encoders, in one table.

* ``clip_image`` — the query image's CLIP embedding (``fc`` of the query feature file) against the KB;
* ``clip_text`` — the CLIP text embedding of the question (a text feature file keyed by query id, e.g.
  ``clip_prepro_feats --texts questions.jsonl``) against the KB;
* any saved query encoders (``--encoder NAME=DIR``), e.g. the untrained one (``OUT/init``) and the trained one.

    python -m retrieval.training.baselines --kb kb.jsonl --kb-features kb.h5 --queries queries.test.jsonl \
        --query-features scenes.h5 --question-features questions.h5 \
        --encoder joint_untrained=runs/x/init --encoder joint=runs/x/best --json comparison.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from foundations.cli import CLIParser
from feature_extraction.store import FeatureStore
from retrieval.formats import Query, exit_on_user_error
from retrieval.indexing import Index
from retrieval.metrics import format_means
from retrieval.training.config import KB_SIDES
from retrieval.training.data import KBVectors, normalise_rows, load_kb, load_queries, open_features
from retrieval.training.evaluation import DEFAULT_METRICS, encode_queries, evaluate_vectors, flat_index
from vlt5 import QueryEncoder

logger = logging.getLogger(__name__)

CLIP_SOURCES = ("clip-image", "clip-text")


def clip_vectors(source: str, queries: Sequence[Query], query_store: FeatureStore | None,
                 question_store: FeatureStore | None, kb_dim: int) -> np.ndarray:
    """(Q, D) normalised CLIP vectors of the queries' images (``clip-image``) or questions (``clip-text``)."""
    if source == "clip-image":
        if query_store is None:
            raise ValueError("clip-image needs the query image features (--query-features)")
        store, keys = query_store, [q.image for q in queries]
    elif source == "clip-text":
        if question_store is None:
            raise ValueError("clip-text needs CLIP text features of the questions keyed by query id "
                             "(--question-features)")
        store, keys = question_store, [q.id for q in queries]
    else:
        raise ValueError(f"unknown baseline {source!r}; expected one of {CLIP_SOURCES}")
    fc = np.asarray(store.get_many(keys).fc, dtype=np.float32)  # (Q, D)
    if fc.shape[1] != kb_dim:
        raise ValueError(f"{store.path}: fc dim {fc.shape[1]} != KB embedding dim {kb_dim}; the {source} baseline "
                         "needs features from the same CLIP model as the KB")
    return normalise_rows(fc)


def baseline_table(queries: Sequence[Query], kb: KBVectors, query_store: FeatureStore | None = None,
                   question_store: FeatureStore | None = None, encoders: Mapping[str, QueryEncoder] | None = None,
                   metrics: Sequence[str] = DEFAULT_METRICS, batch_size: int = 128,
                   index: Index | None = None) -> dict[str, dict[str, float]]:
    """``{name: {metric: mean}}`` for clip_image (with ``query_store``), clip_text (with ``question_store``)
    and each encoder, on the same queries and the same exact KB index (``index``, or a Flat one built here)."""
    index = index if index is not None else flat_index(kb.ids, kb.vectors)
    table: dict[str, dict[str, float]] = {}
    for source, store in (("clip-image", query_store), ("clip-text", question_store)):
        if store is not None:
            vectors = clip_vectors(source, queries, query_store, question_store, kb.dim)
            table[source.replace("-", "_")] = evaluate_vectors(vectors, queries, index, metrics, name=source)
    for name, encoder in (encoders or {}).items():
        if query_store is None:
            raise ValueError("evaluating an encoder needs the query image features")
        vectors = encode_queries(encoder, queries, query_store, batch_size)
        table[name] = evaluate_vectors(vectors, queries, index, metrics, name=name)
    return table


def format_table(table: Mapping[str, Mapping[str, float]]) -> str:
    metrics = list(next(iter(table.values())).keys()) if table else []
    return format_means(table, metrics)


# -- shared CLI pieces (also used by retrieval.mine_negatives) ---------------------------------------------------
def add_kb_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kb", required=True, help="knowledge base JSONL")
    p.add_argument("--kb-features", help="CLIP image features of the KB entries")
    p.add_argument("--kb-text-features", help="CLIP text features of the KB entries")
    p.add_argument("--kb-side", choices=KB_SIDES, default="image", help="which KB vectors to search")


def kb_from_args(args: argparse.Namespace) -> KBVectors:
    if args.kb_side in ("image", "mean") and not args.kb_features:
        raise ValueError(f"--kb-side {args.kb_side} needs --kb-features")
    if args.kb_side in ("text", "mean") and not args.kb_text_features:
        raise ValueError(f"--kb-side {args.kb_side} needs --kb-text-features")
    return load_kb(args.kb, args.kb_features, args.kb_text_features, args.kb_side)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = CLIParser(prog="python -m retrieval.training.baselines", description=__doc__.split("\n\n")[0])
    add_kb_args(p)
    p.add_argument("--queries", required=True, help="queries JSONL to evaluate (with positives)")
    p.add_argument("--query-features", help="CLIP features of the query images (clip_image and encoders)")
    p.add_argument("--question-features", help="CLIP text features of the questions, keyed by query id")
    p.add_argument("--encoder", action="append", default=[], metavar="NAME=DIR", help="a saved query encoder")
    p.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--json", type=Path, help="write {name: {metric: value}} here")
    return p.parse_args(argv)


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    kb = kb_from_args(args)
    query_store = open_features(args.query_features) if args.query_features else None
    question_store = FeatureStore.open(args.question_features) if args.question_features else None
    queries = load_queries(args.queries, set(kb.ids), query_store, "eval")
    encoders = {}
    for spec in args.encoder:
        name, sep, directory = spec.partition("=")
        if not sep or not name or not directory:
            raise ValueError(f"--encoder expects NAME=DIR, got {spec!r}")
        encoders[name] = QueryEncoder.from_pretrained(directory)
    table = baseline_table(queries, kb, query_store, question_store, encoders, args.metrics, args.batch_size)
    print(f"{args.queries}: {len(queries)} queries, KB {len(kb.ids)} entries ({args.kb_side})")
    print(format_table(table))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(table, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
