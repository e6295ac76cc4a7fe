"""Hard-negative mining (DPR's / ANCE's second round): search the training queries, keep the top-ranked KB entries
that are not positives. The search is exact (faiss Flat, cosine)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from foundations.io import atomic_write_text
from foundations.jsonl import iter_jsonl
from retrieval.formats import Query


def mine(top_ids: np.ndarray, positives: Sequence[Sequence[str]], top: int) -> list[list[str]]:
    """Per query, the first ``top`` retrieved ids that are not positives (``top_ids`` (Q, k), best first)."""
    out = []
    for row, pos in zip(top_ids, positives):
        keep = set(pos)
        out.append([str(i) for i in row if i and str(i) not in keep][:top])
    return out


def mine_queries(vectors: np.ndarray, kb_ids: Sequence[str], kb_vectors: np.ndarray, queries: Sequence[Query],
                 top: int) -> tuple[dict[str, list[str]], float]:
    """``({query id: mined ids, best first}, share of queries with a positive in the top ``top``)``."""
    from retrieval.training.evaluation import flat_index

    depth = min(len(kb_ids), top + max(len(q.positives) for q in queries))
    _, top_ids = flat_index(list(kb_ids), kb_vectors).search(vectors, depth)  # (Q, depth)
    mined = mine(top_ids, [q.positives for q in queries], top)
    hits = sum(bool(set(q.positives) & set(map(str, row[:top]))) for q, row in zip(queries, top_ids))
    return {q.id: m for q, m in zip(queries, mined)}, hits / len(queries)


def write_mined(source: Path, out: Path, mined: Mapping[str, list[str]], merge: bool) -> None:
    """Each record of ``source`` (all fields kept) with ``hard_negatives`` replaced by its mined ids (``merge``:
    followed by the ones it already had, without repeats), written atomically to ``out``."""
    lines = []
    for _, record in iter_jsonl(source):
        negatives = list(mined[str(record["id"])])
        if merge:
            negatives += [n for n in record.get("hard_negatives") or [] if n not in negatives]
        lines.append(json.dumps({**record, "hard_negatives": negatives}, ensure_ascii=False) + "\n")
    atomic_write_text(out, "".join(lines))
