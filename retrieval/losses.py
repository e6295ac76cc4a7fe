"""Contrastive losses as small pure functions: tensors in, scalar out.

* :func:`dpr_loss` — DPR-style softmax cross-entropy of each query over a shared candidate pool (Karpukhin et
  al. 2020, "Dense Passage Retrieval", §3.2: positives, in-batch negatives and BM25 hard negatives), with cosine
  similarity divided by a temperature and several positives per query allowed (the loss then maximises the
  probability mass on the query's positives, ``-log Σ_{p∈P} softmax(s)_p``).
* :func:`build_candidates` — the pool: the union, without repeats, of every query's positives and hard
  negatives in the (global) batch, and which of them are positives of which query. A KB entry that is one
  query's positive is an in-batch negative for every other query, unless it is also one of *their* positives.
* :func:`kb_candidates` — KB-wide negatives: the KB side is frozen vectors, so a query can be scored against the
  whole KB (``negatives="all"``) or against the batch pool plus ``n_sampled`` random KB rows, at the cost of one
  matmul; each rank scores its own queries (no gather needed).

The knowledge-base side is frozen CLIP embeddings, so gathering candidates across ranks needs no autograd:
gather the ids (or rows), build the pool, and each rank scores its own queries against the global pool.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from foundations.errors import UserError

__all__ = ["build_candidates", "dpr_loss", "kb_candidates"]


def build_candidates(positives: Sequence[Sequence[str]], hard_negatives: Sequence[Sequence[str]] | None = None,
                     queries: Sequence[int] | None = None) -> tuple[list[str], Tensor]:
    """Candidate ids (first-seen order) and the (Q, C) boolean positive mask.

    ``positives[i]`` / ``hard_negatives[i]`` are the KB ids of query i of the *global* batch; ``queries``
    selects which rows of the mask to return (a rank's own queries), default all.
    """
    hard_negatives = hard_negatives if hard_negatives is not None else [[] for _ in positives]
    if len(hard_negatives) != len(positives):
        raise ValueError(f"{len(positives)} positive lists but {len(hard_negatives)} hard-negative lists")
    index: dict[str, int] = {}
    for pos, neg in zip(positives, hard_negatives):
        for kb_id in list(pos) + list(neg):
            index.setdefault(kb_id, len(index))
    rows = list(range(len(positives))) if queries is None else list(queries)
    mask = torch.zeros(len(rows), len(index), dtype=torch.bool)
    for r, i in enumerate(rows):
        if not positives[i]:
            raise UserError(f"query {i} of the batch has no positive")
        mask[r, [index[p] for p in positives[i]]] = True
    return list(index), mask


def kb_candidates(positive_rows: Sequence[Sequence[int]], pool_rows: Sequence[int], n_kb: int, mode: str,
                  n_sampled: int = 0, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """KB rows to score and the (Q, C) positive mask, for KB-wide negatives.

    ``positive_rows[i]``: KB rows of query i's positives; ``pool_rows``: the batch pool (positives + hard negatives
    of the batch, :func:`build_candidates` mapped to rows). ``mode="all"``: every KB row (C = ``n_kb``, in row
    order). ``mode="batch"``: the pool followed by ``n_sampled`` distinct random rows not in it (drawn with
    ``generator``). Returns ``(rows (C,) long, mask (Q, C) bool)``.
    """
    if mode == "all":
        rows = torch.arange(n_kb)
    else:
        rows = torch.as_tensor(list(pool_rows), dtype=torch.long)
        if n_sampled > 0:
            free = torch.ones(n_kb, dtype=torch.bool)
            free[rows] = False
            candidates = free.nonzero().squeeze(1)
            pick = torch.randperm(len(candidates), generator=generator)[:n_sampled]
            rows = torch.cat([rows, candidates[pick]])
    # the column of each KB row (the identity for the whole KB: no per-step dict over N rows)
    column = None if mode == "all" else {int(r): c for c, r in enumerate(rows.tolist())}
    mask = torch.zeros(len(positive_rows), len(rows), dtype=torch.bool)
    for i, positives in enumerate(positive_rows):
        if not positives:
            raise UserError(f"query {i} of the batch has no positive")
        mask[i, list(positives) if column is None else [column[r] for r in positives]] = True
    return rows, mask


def dpr_loss(queries: Tensor, candidates: Tensor, positive_mask: Tensor, temperature: Tensor | float,
             candidates_normalized: bool = False) -> Tensor:
    """Mean over queries of ``-log Σ_{p ∈ P_i} softmax_j(cos(q_i, c_j) / τ)_p``.

    queries (Q, D) and candidates (C, D) are L2-normalised here (cosine) — the candidates only unless
    ``candidates_normalized`` says their float32 rows already are (a frozen KB: saves an N x D pass per step);
    positive_mask is (Q, C) bool with at least one True per row, temperature is a float or a scalar tensor.
    """
    q = F.normalize(queries.float(), dim=-1)  # (Q, D)
    c = candidates.float() if candidates_normalized else F.normalize(candidates.float(), dim=-1)  # (C, D)
    scores = q @ c.T / temperature  # (Q, C)
    positive = scores.masked_fill(~positive_mask, float("-inf"))  # (Q, C)
    return (torch.logsumexp(scores, dim=-1) - torch.logsumexp(positive, dim=-1)).mean()
