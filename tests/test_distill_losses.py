"""The distillation losses on a hand-worked 3×3 example: MSE, cosine, the contrastive ``cl`` (both directions at
temperature 0.5), the exact ``alpha`` mixture and the layer-wise term."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from foundations.errors import ConfigError
from multilingual.losses import contrastive_loss, cosine_loss, distill_loss, layer_kd_loss, mse_loss

S = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 1.0, 0.0]])  # student rows
T = torch.eye(3)  # teacher rows


def test_mse_by_hand() -> None:
    # squared differences: row 0: 0; row 1: (2-1)^2 = 1; row 2: 1 + 1 + 1 = 3 -> 4 over 9 elements
    assert float(mse_loss(S, T)) == pytest.approx(4 / 9)


def test_cosine_by_hand() -> None:
    # cos: 1, 1 (same direction, other length), 0 ([1,1,0] vs [0,0,1]) -> mean of 1 - cos = 1/3
    assert float(cosine_loss(S, T)) == pytest.approx(1 / 3)


def test_contrastive_by_hand() -> None:
    # normalised: s0 = e0, s1 = e1, s2 = (e0 + e1)/sqrt 2; teacher = identity; scale 1/0.5 = 2
    r = math.sqrt(2)
    # teacher row i against every student row: [2, 0, r], [0, 2, r], [0, 0, 0] (labels 0, 1, 2)
    teacher_side = [-2 + math.log(math.e ** 2 + 1 + math.e ** r)] * 2 + [math.log(3)]
    # student row j against every teacher row: [2, 0, 0], [0, 2, 0], [r, r, 0]
    student_side = [-2 + math.log(math.e ** 2 + 2)] * 2 + [math.log(2 * math.e ** r + 1)]
    expected = (sum(teacher_side) / 3 + sum(student_side) / 3) / 2
    assert float(contrastive_loss(S, T, temperature=0.5)) == pytest.approx(expected, rel=1e-6)


def test_alpha_mixing_is_exact() -> None:
    cl, mse = contrastive_loss(S, T, 0.5), mse_loss(S, T)
    mixed, parts = distill_loss(S, T, "cl", 0.25, "mse", temperature=0.5)
    assert float(mixed) == pytest.approx(0.75 * float(cl) + 0.25 * float(mse), rel=1e-7)
    assert set(parts) == {"loss_cl", "loss_mse"}
    alone, parts = distill_loss(S, T, "cosine", 0.0)
    assert float(alone) == pytest.approx(1 / 3) and set(parts) == {"loss_cosine"}
    assert float(distill_loss(S, T, "mse", 1.0, "cosine")[0]) == pytest.approx(1 / 3)
    with pytest.raises(ConfigError, match="loss must be one of"):
        distill_loss(S, T, "kl")


def test_layer_kd_by_hand() -> None:
    maps = nn.ModuleList([nn.Linear(2, 3, bias=False), nn.Linear(2, 3, bias=False)])
    with torch.no_grad():
        maps[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))  # (x, y) -> (x, y, 0)
        maps[1].weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 0.0]]))  # (x, y) -> (2x, 0, 0)
    student = [torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 5.0]])]
    teacher = [torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[0.0, 0.0, 0.0]])]
    # pair 0: (1, 2, 0) vs (1, 2, 3): 9 / 3 = 3; pair 1: (2, 0, 0) vs 0: 4 / 3; mean = (3 + 4/3) / 2
    assert layer_kd_loss(student, teacher, maps).item() == pytest.approx((3 + 4 / 3) / 2)
    with pytest.raises(ConfigError, match="as many"):
        layer_kd_loss(student[:1], teacher, maps)
