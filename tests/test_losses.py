"""retrieval/losses.py against hand computations (math.exp / math.log, not the same code path)."""

from __future__ import annotations

import math

import pytest
import torch

from retrieval.losses import build_candidates, dpr_loss

# Three queries; q2 has two positives; hard negatives overlap other queries' positives.
POSITIVES = [["A"], ["B", "C"], ["E"]]
HARD_NEGATIVES = [["B"], ["D"], ["A", "C"]]
# 2-d vectors chosen so the cosines are easy to write down; some are not unit length (the loss normalises).
QUERIES = torch.tensor([[1.0, 0.0], [0.0, 3.0], [2.0, 2.0]])
CANDIDATES = {"A": [1.0, 0.0], "B": [0.0, 1.0], "C": [3.0, 4.0], "D": [-2.0, 0.0], "E": [0.8, -0.6]}
TAU = 0.5


def hand_loss() -> float:
    """-log sum_{p in P_i} softmax_j(cos_ij / tau)_p averaged over the 3 queries, written out by hand.

    cosines (columns A, B, C, D, E; pool = first-seen order over positives + hard negatives):
      q1 = (1, 0):         1,      0,      0.6,     -1,     0.8
      q2 = (0, 1):         0,      1,      0.8,      0,    -0.6
      q3 = (1, 1)/sqrt2:   1/r2,   1/r2,   1.4/r2,  -1/r2,  0.2/r2
    """
    e, r2 = math.exp, math.sqrt(2)
    s = 1 / TAU
    l1 = math.log(e(s * 1) + e(0) + e(s * 0.6) + e(-s) + e(s * 0.8)) - s * 1
    l2 = math.log(e(0) + e(s) + e(s * 0.8) + e(0) + e(-s * 0.6)) - math.log(e(s) + e(s * 0.8))
    l3 = math.log(e(s / r2) + e(s / r2) + e(s * 1.4 / r2) + e(-s / r2) + e(s * 0.2 / r2)) - s * 0.2 / r2
    return (l1 + l2 + l3) / 3


def test_build_candidates_is_the_union_with_a_positive_mask() -> None:
    ids, mask = build_candidates(POSITIVES, HARD_NEGATIVES)
    assert ids == ["A", "B", "C", "D", "E"]
    assert mask.tolist() == [[True, False, False, False, False],
                             [False, True, True, False, False],
                             [False, False, False, False, True]]
    _, rows = build_candidates(POSITIVES, HARD_NEGATIVES, queries=[2])  # one rank's own queries
    assert rows.tolist() == [[False, False, False, False, True]]
    with pytest.raises(ValueError, match="no positive"):
        build_candidates([["A"], []])


def test_dpr_loss_equals_the_hand_computation() -> None:
    ids, mask = build_candidates(POSITIVES, HARD_NEGATIVES)
    candidates = torch.tensor([CANDIDATES[i] for i in ids])
    loss = dpr_loss(QUERIES, candidates, mask, TAU)
    assert loss.item() == pytest.approx(hand_loss(), rel=1e-6)
    learned = torch.tensor(math.log(TAU), requires_grad=True)  # learnable tau stored as log tau
    loss_t = dpr_loss(QUERIES, candidates, mask, learned.exp())
    assert loss_t.item() == pytest.approx(hand_loss(), rel=1e-6)
    loss_t.backward()
    assert learned.grad is not None and learned.grad.item() != 0.0


def test_per_rank_losses_average_to_the_global_loss() -> None:
    """What DDP with gathered candidates computes: each rank's queries against the global pool."""
    ids, _ = build_candidates(POSITIVES, HARD_NEGATIVES)
    candidates = torch.tensor([CANDIDATES[i] for i in ids])
    per_query = []
    for i in range(3):
        _, rows = build_candidates(POSITIVES, HARD_NEGATIVES, queries=[i])
        per_query.append(dpr_loss(QUERIES[i:i + 1], candidates, rows, TAU))
    assert torch.stack(per_query).mean().item() == pytest.approx(hand_loss(), rel=1e-6)


def test_candidates_normalized_skips_only_a_redundant_normalisation() -> None:
    """``candidates_normalized=True`` (a frozen KB of unit rows) gives the loss of the default path on unit rows,
    and differs on rows that are not unit (so the flag really skips the normalisation)."""
    gen = torch.Generator().manual_seed(0)
    queries, raw = torch.randn(3, 4, generator=gen), torch.randn(5, 4, generator=gen) * 3
    unit = torch.nn.functional.normalize(raw, dim=-1)
    mask = torch.zeros(3, 5, dtype=torch.bool)
    mask[0, 1] = mask[1, 0] = mask[2, 4] = True
    assert dpr_loss(queries, unit, mask, 0.1, candidates_normalized=True).item() == pytest.approx(
        dpr_loss(queries, raw, mask, 0.1).item(), rel=1e-6)
    assert dpr_loss(queries, raw, mask, 0.1, candidates_normalized=True).item() != pytest.approx(
        dpr_loss(queries, raw, mask, 0.1).item(), rel=1e-3)
