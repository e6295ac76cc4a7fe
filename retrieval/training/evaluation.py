"""Evaluation of query vectors against the KB: exact faiss search, ranx metrics.

The KB index is ``Flat`` (exhaustive inner product on L2-normalised vectors = cosine), built with
:func:`retrieval.indexing.build_index`; metrics (MRR@k, R@k) come from :func:`retrieval.evaluate.evaluate_run`
(ranx). The same functions serve the dev evaluation during training, the baselines and negative mining.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from feature_extraction.store import FeatureStore
from retrieval.metrics import evaluate_run, metric_depth
from retrieval.formats import Query, Run, qrels_from_queries
from retrieval.indexing import Index, IndexConfig, build_index
from retrieval.querying.features import encode_with_features
from vlt5 import QueryEncoder

logger = logging.getLogger(__name__)

DEFAULT_METRICS = ("mrr@10", "recall@1", "recall@5", "recall@10")


def flat_index(kb_ids: Sequence[str], kb_vectors: np.ndarray) -> Index:
    """Exact inner-product index over the (normalised) KB vectors."""
    cfg = IndexConfig(factory="Flat", normalize=True, use_gpu=False)
    return build_index(np.asarray(kb_vectors, dtype=np.float32), list(kb_ids), cfg, source={"path": "kb vectors"})


def search_run(index: Index, query_ids: Sequence[str], query_vectors: np.ndarray, depth: int) -> Run:
    """``{query id: {kb id: score}}`` of the top ``depth`` KB entries per query."""
    scores, ids = index.search(np.asarray(query_vectors, dtype=np.float32), min(depth, len(index)))  # (Q, k) each
    return {qid: {str(d): float(s) for d, s in zip(row_ids, row_scores) if d}
            for qid, row_ids, row_scores in zip(query_ids, ids, scores)}


def evaluate_vectors(query_vectors: np.ndarray, queries: Sequence[Query], index: Index,
                     metrics: Sequence[str] = DEFAULT_METRICS, name: str = "run") -> dict[str, float]:
    """Mean metrics of precomputed query vectors (row i = ``queries[i]``) against a KB index."""
    if len(query_vectors) != len(queries):
        raise ValueError(f"{len(query_vectors)} query vectors for {len(queries)} queries")
    run = search_run(index, [q.id for q in queries], query_vectors, metric_depth(metrics, len(index)))
    return evaluate_run(run, qrels_from_queries(queries), list(metrics), name=name)  # type: ignore[return-value]


def encode_queries(encoder: QueryEncoder, queries: Sequence[Query], store: FeatureStore,
                   batch_size: int = 128) -> np.ndarray:
    """(Q, D) float32 query vectors from the joint encoder (eval mode, no grad)."""
    return encode_with_features(encoder, store, [q.question for q in queries], [q.image for q in queries],
                                batch_size=batch_size)


def evaluate_encoder(encoder: QueryEncoder, queries: Sequence[Query], query_store: FeatureStore,
                     kb_ids: Sequence[str] | None = None, kb_vectors: np.ndarray | None = None,
                     metrics: Sequence[str] = DEFAULT_METRICS, index: Index | None = None,
                     batch_size: int = 128) -> dict[str, float]:
    """Encode ``queries`` (question + image from ``query_store``), search the KB exactly, return mean metrics
    (``{"mrr@10": ..., "recall@1": ...}``). Pass ``kb_ids`` + ``kb_vectors`` or a prebuilt ``index``."""
    if index is None:
        if kb_ids is None or kb_vectors is None:
            raise ValueError("pass kb_ids and kb_vectors, or index")
        index = flat_index(kb_ids, kb_vectors)
    vectors = encode_queries(encoder, queries, query_store, batch_size)
    return evaluate_vectors(vectors, queries, index, metrics, name="joint")
