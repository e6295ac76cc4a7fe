"""Parity with VL-T5's own JointEncoder, and proof that each point of DESIGN.md §4 matters.

The reference outputs were produced by j-min/VL-T5's ``modeling_t5.py`` under transformers 4.2.1 on the committed
tiny checkpoint (tests/data/vlt5/README.md). Each "flip" below changes one fact of §4 in our encoder and shows
that parity then breaks (and, where the fact only concerns some inputs, that the other regimes are untouched).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn
from vlt5_fixtures import REQUIRED_REGIMES, load_parity_encoder, load_reference, run_regime
from transformers.models.t5.modeling_t5 import T5Attention, T5LayerNorm

import vlt5.modeling as modeling
from vlt5.modeling import JointEncoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOL = 1e-5
REGIMES = sorted(load_reference())
MASKED = ("explicit_vis_mask", "padded_text_implicit_mask", "all_explicit")
WITH_BOXES = ("detector_boxes", "two_images", "explicit_vis_mask", "padded_text_implicit_mask", "all_explicit")


def test_reference_covers_the_required_regimes() -> None:
    assert set(REQUIRED_REGIMES) <= set(REGIMES)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("regime", REGIMES)
def test_parity_with_vlt5(regime: str, attn: str, reference: dict) -> None:
    enc = load_parity_encoder(attn_implementation=attn)
    ours, theirs = run_regime(enc, reference[regime])
    assert ours.shape == theirs.shape  # (B, L+V, d): padded text positions included (§4.8)
    assert (ours - theirs).abs().max().item() <= TOL


def diffs(enc: JointEncoder, reference: dict) -> dict[str, float]:
    return {r: (lambda o, t: (o - t).abs().max().item())(*run_regime(enc, reference[r])) for r in REGIMES}


def check_flip(enc: JointEncoder, reference: dict, breaks: tuple[str, ...] = tuple(REGIMES),
               unchanged: tuple[str, ...] = ()) -> None:
    d = diffs(enc, reference)
    for r in breaks:
        assert d[r] > 1e-3, f"{r}: flipping this fact should break parity, max diff {d[r]:.2e}"
    for r in unchanged:
        assert d[r] <= TOL, f"{r}: this fact should not matter here, max diff {d[r]:.2e}"


# -- §4.3 text embeddings -------------------------------------------------------------------------------------
def test_flip_scaled_text_embeddings(reference: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    enc = load_parity_encoder()
    original = enc.embed_text
    scale = math.sqrt(enc.config.d_model)
    monkeypatch.setattr(enc, "embed_text", lambda ids, mask: (original(ids, mask)[0] * scale, original(ids, mask)[1]))
    check_flip(enc, reference)


# -- §4.4 visual token ---------------------------------------------------------------------------------------
def wrap_output(module: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    module.register_forward_hook(lambda m, args, out: fn(out))


def test_flip_norm_over_the_visual_sum(reference: dict) -> None:
    enc = load_parity_encoder()
    norm = T5LayerNorm(enc.config.d_model)
    wrap_output(enc.encoder.visual_embedding, norm)
    check_flip(enc, reference)


def test_flip_no_per_part_rmsnorm(reference: dict) -> None:
    enc = load_parity_encoder()
    enc.encoder.visual_embedding.feat_embedding[1] = nn.Identity()
    check_flip(enc, reference)


def test_flip_obj_order_from_the_front_of_shared(reference: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    enc = load_parity_encoder()
    monkeypatch.setattr(modeling, "obj_order_token_ids", lambda ids, vocab: ids)  # shared[k], not shared[V-1-k]
    check_flip(enc, reference)


def test_flip_ignore_image_order(reference: dict) -> None:
    enc = load_parity_encoder()
    visual = enc.encoder.visual_embedding
    original = visual.forward
    visual.forward = lambda feats, boxes, img, obj, table, fc=None: original(feats, boxes, torch.zeros_like(img),
                                                                              obj, table, fc)
    single_image = tuple(r for r in REGIMES if r not in ("two_images", "all_explicit"))
    check_flip(enc, reference, breaks=("two_images", "all_explicit"), unchanged=single_image)


# -- §4.5 area -----------------------------------------------------------------------------------------------
def test_flip_true_area(reference: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    enc = load_parity_encoder()
    monkeypatch.setattr(modeling, "vlt5_box_area",
                        lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]))
    # zero boxes (VL_adapter's CLIP grid): the area is 0 either way
    check_flip(enc, reference, breaks=WITH_BOXES, unchanged=("clip_grid_zero_boxes",))


def test_zero_boxes_give_one_constant_position_term(reference: dict) -> None:
    enc = load_parity_encoder()
    boxes = torch.zeros(1, 4, 5)  # (B, V, 5) with area
    pos = enc.encoder.visual_embedding.absolute_vis_pos_embedding(boxes)  # (1, 4, d)
    assert torch.equal(pos[0, 0], pos[0, 3])


# -- §4.6 relative position bias and masks -------------------------------------------------------------------
def test_flip_relative_bias_for_visual_tokens(reference: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    enc = load_parity_encoder()
    monkeypatch.setattr(modeling, "joint_position_bias",
                        lambda attn, L, V: attn.compute_bias(L + V, L + V))
    check_flip(enc, reference)


def test_flip_mask_not_folded_into_the_bias(reference: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """transformers 4.2.1 ignores ``mask`` when a precomputed ``position_bias`` is passed: a mask that is not
    folded into the bias is a mask that is not applied."""
    enc = load_parity_encoder()
    monkeypatch.setattr(modeling, "additive_mask", lambda mask, dtype: torch.zeros(()))
    unmasked = tuple(r for r in REGIMES if r not in MASKED)
    check_flip(enc, reference, breaks=MASKED, unchanged=unmasked)


def test_the_mask_value_is_vlt5s() -> None:
    mask = torch.tensor([[1.0, 0.0]])
    assert modeling.additive_mask(mask, torch.float32).flatten().tolist() == [0.0, -10000.0]


# -- §4.7 T5 attention and blocks ----------------------------------------------------------------------------
def test_flip_scaled_dot_product(reference: dict) -> None:
    enc = load_parity_encoder()
    for module in enc.modules():
        if isinstance(module, T5Attention):
            module.scaling = module.key_value_proj_dim**-0.5
    check_flip(enc, reference)


def test_flip_gelu_feed_forward(reference: dict) -> None:
    enc = load_parity_encoder()
    for block in enc.encoder.block:
        block.layer[-1].DenseReluDense.act = nn.GELU()
    check_flip(enc, reference)


def test_flip_no_final_rmsnorm(reference: dict) -> None:
    enc = load_parity_encoder()
    enc.encoder.final_layer_norm = nn.Identity()
    check_flip(enc, reference)

