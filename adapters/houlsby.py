"""Houlsby bottleneck adapters (Houlsby et al., "Parameter-Efficient Transfer Learning for NLP", ICML 2019) as
VL-Adapter places them in T5 (Sung et al., CVPR 2022; ylsung/VL_adapter ``my_transformers/modeling_t5.py``):
after the self-attention and after the feed-forward sublayer, on the sublayer output *before* the residual add
and its dropout: ``h + dropout(y + up(act(down(y))))`` with ``y`` the sublayer output (DESIGN.md §4.9).

The bottleneck width is ``d_model // reduction_factor`` (8 in VL-Adapter's runs); optional LayerNorms before
and after the bottleneck (VL_adapter's ``add_layer_norm_{before,after}_adapter``). ``up`` starts at zero, so an
injected model computes exactly what the base model computes.

Placement is a module you can see in ``print(model)`` (litgpt subclasses the block the same way): ``inject``
replaces ``block.layer[0]`` (``T5LayerSelfAttention``) by :class:`HoulsbySelfAttention` and ``block.layer[-1]``
(``T5LayerFF``) by :class:`HoulsbyFeedForward`. Each wrapper adopts the original sublayer's children
(``SelfAttention`` / ``DenseReluDense``, ``layer_norm``, ``dropout``) under the same names and adds ``adapter``,
so base parameter names do not change and adapter keys stay ``...block.{i}.layer.{0|1}.adapter.*`` — the names
adapter-only checkpoints have always used (no key mapping is needed). No forward hooks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn
from transformers.activations import ACT2FN

from adapters.base import AdapterError, t5_blocks, zeros_like_linear

logger = logging.getLogger(__name__)

SUBLAYERS = ("self_attention", "feed_forward")


@dataclass
class HoulsbyConfig:
    """``reduction_factor``: bottleneck = d_model // reduction_factor. ``layer_norm``: LayerNorm before and
    after the bottleneck. ``non_linearity``: a transformers activation name (VL_adapter: ``gelu_new``).
    ``sublayers``: which sublayers get an adapter. ``blocks``: block indices (None = all)."""

    method: ClassVar[str] = "houlsby"
    reduction_factor: int = 8
    layer_norm: bool = False
    non_linearity: str = "gelu_new"
    sublayers: tuple[str, ...] = SUBLAYERS
    blocks: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        self.sublayers = tuple(self.sublayers)
        if self.blocks is not None:
            self.blocks = tuple(self.blocks)
        if self.reduction_factor <= 0:
            raise AdapterError(f"houlsby.reduction_factor must be positive, got {self.reduction_factor}")
        bad = [s for s in self.sublayers if s not in SUBLAYERS]
        if bad or not self.sublayers:
            raise AdapterError(f"houlsby.sublayers must be a non-empty subset of {SUBLAYERS}, got {self.sublayers}")
        if self.non_linearity not in ACT2FN:
            raise AdapterError(f"houlsby.non_linearity {self.non_linearity!r} is not a transformers activation")


class HoulsbyAdapter(nn.Module):
    """``y + post_norm(up(act(down(pre_norm(y)))))``; ``up`` zero-initialised."""

    def __init__(self, d_model: int, cfg: HoulsbyConfig) -> None:
        super().__init__()
        hidden = max(1, d_model // cfg.reduction_factor)
        self.pre_norm = nn.LayerNorm(d_model) if cfg.layer_norm else nn.Identity()
        self.down = nn.Linear(d_model, hidden)
        self.act = ACT2FN[cfg.non_linearity]
        self.up = nn.Linear(hidden, d_model)
        self.post_norm = nn.LayerNorm(d_model) if cfg.layer_norm else nn.Identity()
        zeros_like_linear(self.up)

    def forward(self, y: Tensor) -> Tensor:
        return y + self.post_norm(self.up(self.act(self.down(self.pre_norm(y)))))  # (B, N, d)


class HoulsbySelfAttention(nn.Module):
    """T5's self-attention sublayer with an adapter on its output: ``h + dropout(adapter(attn(norm(h))))``.
    Same call and return as ``T5LayerSelfAttention`` (``(hidden, position_bias, attn_weights)``)."""

    def __init__(self, layer: nn.Module, adapter: HoulsbyAdapter) -> None:
        super().__init__()
        self.SelfAttention = layer.SelfAttention
        self.layer_norm = layer.layer_norm
        self.dropout = layer.dropout
        self.adapter = adapter

    def forward(self, hidden_states: Tensor, attention_mask: Tensor | None = None,
                position_bias: Tensor | None = None, **kwargs: Any) -> tuple[Tensor, Tensor, Tensor | None]:
        normed = self.layer_norm(hidden_states)  # (B, N, d)
        y, position_bias, weights = self.SelfAttention(normed, mask=attention_mask, position_bias=position_bias,
                                                       **kwargs)  # (B, N, d)
        return hidden_states + self.dropout(self.adapter(y)), position_bias, weights  # (B, N, d)


class HoulsbyFeedForward(nn.Module):
    """T5's feed-forward sublayer with an adapter on its output: ``h + dropout(adapter(ff(norm(h))))``."""

    def __init__(self, layer: nn.Module, adapter: HoulsbyAdapter) -> None:
        super().__init__()
        self.DenseReluDense = layer.DenseReluDense
        self.layer_norm = layer.layer_norm
        self.dropout = layer.dropout
        self.adapter = adapter

    def forward(self, hidden_states: Tensor) -> Tensor:
        y = self.DenseReluDense(self.layer_norm(hidden_states))  # (B, N, d)
        return hidden_states + self.dropout(self.adapter(y))  # (B, N, d)


WRAPPERS = (HoulsbySelfAttention, HoulsbyFeedForward)  # what inject puts in place of T5's sublayers


def inject(model: nn.Module, cfg: HoulsbyConfig) -> list[str]:
    """Wrap the chosen sublayers of the T5 blocks of ``model`` (see the module docstring); returns the names
    of the new adapter modules."""
    blocks = t5_blocks(model)
    indices = range(len(blocks)) if cfg.blocks is None else cfg.blocks
    names = {id(m): n for n, m in model.named_modules()}
    added = []
    for i in indices:
        block = blocks[i]
        for sublayer in cfg.sublayers:
            position = 0 if sublayer == "self_attention" else len(block.layer) - 1
            layer = block.layer[position]
            if isinstance(layer, WRAPPERS):
                raise AdapterError(f"{names[id(layer)]} already has an adapter")
            d_model = layer.layer_norm.weight.shape[0]
            adapter = HoulsbyAdapter(d_model, cfg).to(layer.layer_norm.weight.device)
            wrapper = HoulsbySelfAttention if sublayer == "self_attention" else HoulsbyFeedForward
            block.layer[position] = wrapper(layer, adapter)
            added.append(f"{names[id(layer)]}.adapter")
    logger.info("houlsby: %d adapters (reduction %d)", len(added), cfg.reduction_factor)
    return added
