"""Baselines beside every evaluation: CLIP image-only, CLIP text-only and joint encoders, in one table.

* ``clip_image`` — the query image's CLIP embedding (``fc`` of the query feature file) against the KB;
* ``clip_text`` — the CLIP text embedding of the question (a text feature file keyed by query id, e.g.
  ``clip_prepro_feats --texts questions.jsonl``) against the KB;
* any saved query encoders (``--encoder NAME=DIR``), e.g. the untrained one (``OUT/init``) and the trained one.

    vlt5r baselines --kb kb.jsonl --kb-features kb.h5 --queries queries.test.jsonl \
        --query-features scenes.h5 --question-features questions.h5 \
        --encoder joint_untrained=runs/x/init --encoder joint=runs/x/best --json comparison.json
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from feature_extraction.store import FeatureStore
from retrieval.formats import Query
from retrieval.indexing import Index
from retrieval.metrics import format_means
from foundations.rows import normalise_rows
from retrieval.training.data import KBVectors
from retrieval.training.evaluation import DEFAULT_METRICS, encode_queries, evaluate_vectors, flat_index
from vlt5 import QueryEncoder
from foundations.errors import UserError

logger = logging.getLogger(__name__)

CLIP_SOURCES = ("clip-image", "clip-text")


def clip_vectors(source: str, queries: Sequence[Query], query_store: FeatureStore | None,
                 question_store: FeatureStore | None, kb_dim: int) -> np.ndarray:
    """(Q, D) normalised CLIP vectors of the queries' images (``clip-image``) or questions (``clip-text``)."""
    if source == "clip-image":
        if query_store is None:
            raise UserError("clip-image needs the query image features (--query-features)")
        store, keys = query_store, [q.image for q in queries]
    elif source == "clip-text":
        if question_store is None:
            raise UserError("clip-text needs CLIP text features of the questions keyed by query id "
                             "(--question-features)")
        store, keys = question_store, [q.id for q in queries]
    else:
        raise UserError(f"unknown baseline {source!r}; expected one of {CLIP_SOURCES}")
    fc = np.asarray(store.get_many(keys).fc, dtype=np.float32)  # (Q, D)
    if fc.shape[1] != kb_dim:
        raise UserError(f"{store.path}: fc dim {fc.shape[1]} != KB embedding dim {kb_dim}; the {source} baseline "
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
            raise UserError("evaluating an encoder needs the query image features")
        vectors = encode_queries(encoder, queries, query_store, batch_size)
        table[name] = evaluate_vectors(vectors, queries, index, metrics, name=name)
    return table


def format_table(table: Mapping[str, Mapping[str, float]]) -> str:
    metrics = list(next(iter(table.values())).keys()) if table else []
    return format_means(table, metrics)
