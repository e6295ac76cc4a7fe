"""The VL-T5 joint encoder on current transformers: question tokens and visual tokens through one T5 encoder.

Follows ``JointEncoder`` / ``VisualEmbedding`` of VL-T5 (Cho et al., "Unifying Vision-and-Language Tasks via
Text Generation", ICML 2021; j-min/VL-T5 ``VL-T5/src/modeling_t5.py``) and the CLIP-feature path of VL-Adapter
(Sung et al., CVPR 2022; ylsung/VL_adapter). Every point of DESIGN.md §4 is implemented here and tested against
outputs of the original code (``tests/test_vlt5_parity.py``):

* sequence = ``shared(input_ids)`` (no scaling, no absolute positions), then the visual tokens;
* visual token = RMSNorm(Linear(feat)) + RMSNorm(Linear([x1, y1, x2, y2, area])) + img_order_embedding[img]
  + shared[vocab - 1 - k] for object k (``<vis_extra_id_k>``), no norm over the sum;
* ``area = (b3 - b2) * (b1 - b0)``, VL-T5's formula (not the true box area);
* relative position bias between text tokens only (computed once by block 0, reused by every block), 0 for any
  pair with a visual token; the padding mask is additive ``(1 - m) * -10000`` folded into that bias;
* attention without 1/sqrt(d_kv), pre-RMSNorm blocks, ReLU feed-forward, final RMSNorm (transformers' T5Block).

transformers 5's ``T5Stack.forward`` always computes the relative bias for the whole sequence, so we keep its
blocks (``T5EncoderModel(...).encoder.block``, the public ``T5Block`` class) and drive them with a precomputed
``position_bias`` (text-text bias padded with zeros to L+V, plus the folded mask) and ``attention_mask=None``:
``T5Attention`` then uses that bias as is, in both its eager and SDPA paths. Nothing of ``modeling_t5.py`` is
copied.

Extensions beyond VL-T5 (off unless configured): a learned text prefix (``prompt``, set by
``adapters.prompt``), VL_adapter's 6x6 adaptive max-pool of a square grid, and an extra ``fc`` visual token.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import T5EncoderModel
from transformers.models.t5.modeling_t5 import T5Attention, T5LayerNorm, T5Stack

from vlt5.checkpoint import LoadReport, load_joint_encoder, load_t5, load_vlt5_checkpoint, save_joint_encoder
from vlt5.config import VisualConfig, VLT5Config
from foundations.errors import UserError

logger = logging.getLogger(__name__)

MASK_VALUE = -10000.0  # VL-T5 (transformers 4.2.1 get_extended_attention_mask): (1 - m) * -10000


# ---------------------------------------------------------------------------------------------------------------
# The small formulas of DESIGN.md §4, one function each (tests flip them one at a time to show each matters).
# ---------------------------------------------------------------------------------------------------------------
def vlt5_box_area(boxes: Tensor) -> Tensor:
    """VL-T5's ``get_area`` on (x1, y1, x2, y2) boxes: ``(b3 - b2) * (b1 - b0)`` — not the true area (§4.5)."""
    return (boxes[..., 3] - boxes[..., 2]) * (boxes[..., 1] - boxes[..., 0])  # (B, V)


def obj_order_token_ids(obj_order_ids: Tensor, vocab_size: int) -> Tensor:
    """Object k is embedded with ``<vis_extra_id_k>``, i.e. row ``vocab_size - 1 - k`` of ``shared`` (§4.4)."""
    return vocab_size - 1 - obj_order_ids  # (B|1, V)


def joint_position_bias(attention: T5Attention, text_len: int, vis_len: int) -> Tensor:
    """Relative position bias for text-text pairs (block 0's ``relative_attention_bias``), zero for every pair
    involving a visual token (§4.6)."""
    text_bias = attention.compute_bias(text_len, text_len)  # (1, H, L, L)
    return F.pad(text_bias, (0, vis_len, 0, vis_len))  # (1, H, L+V, L+V)


def additive_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """``(1 - m) * -10000`` broadcast over heads and queries, to be folded into the position bias (§4.6)."""
    return (1.0 - mask.to(dtype))[:, None, None, :] * MASK_VALUE  # (B, 1, 1, L+V)


def pool_square_grid(feats: Tensor, boxes: Tensor, mask: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor]:
    """VL_adapter's ``Downsample`` (ylsung/VL_adapter, its VL-T5 modeling code): AdaptiveMaxPool2d((size, size))
    over a row-major square grid of tokens, applied as is (the reference has no size check).

    Always ``size * size`` tokens out, like the reference: a grid smaller than ``size`` (4x4 with
    ``pool_grid_to=6``) is *upsampled* by AdaptiveMaxPool2d's overlapping windows, i.e. cells are repeated
    (window ``[floor(i*s/n), ceil((i+1)*s/n))``). Boxes are pooled over the same windows as their union (max of
    -x1, -y1, x2, y2), so all-zero boxes stay zero as in VL_adapter; the mask is pooled with max (a cell is real
    if any input cell is).
    """
    B, T, C = feats.shape
    side = round(T**0.5)
    if side * side != T:
        raise UserError(f"pool_grid_to={size} needs a square grid of visual tokens, got {T} tokens")
    if side == size:  # AdaptiveMaxPool2d to the same size is the identity
        return feats, boxes, mask
    pool = nn.AdaptiveMaxPool2d((size, size))
    grid = feats.transpose(1, 2).reshape(B, C, side, side)  # (B, C, s, s)
    feats = pool(grid).flatten(2).transpose(1, 2)  # (B, n*n, C)
    signed = boxes * boxes.new_tensor([-1.0, -1.0, 1.0, 1.0])  # (B, T, 4)
    pooled = pool(signed.transpose(1, 2).reshape(B, 4, side, side)).flatten(2).transpose(1, 2)  # (B, n*n, 4)
    boxes = pooled * pooled.new_tensor([-1.0, -1.0, 1.0, 1.0])  # (B, n*n, 4)
    mask = pool(mask.to(feats.dtype).reshape(B, 1, side, side)).flatten(1).to(mask.dtype)  # (B, n*n)
    return feats, boxes, mask


# ---------------------------------------------------------------------------------------------------------------
class VisualEmbedding(nn.Module):
    """VL-T5's ``VisualEmbedding`` with its released settings (``use_vis_layer_norm`` and
    ``individual_vis_layer_norm`` on, ``use_vis_order_embedding`` on). Parameter names match the checkpoints:
    ``feat_embedding.{0,1}``, ``absolute_vis_pos_embedding.{0,1}``, ``img_order_embedding``. The object-order
    table is the text embedding ``shared`` and is passed in at call time (it is not a second copy)."""

    def __init__(self, d_model: int, visual: VisualConfig, eps: float) -> None:
        super().__init__()
        self.feat_embedding = nn.Sequential(nn.Linear(visual.feat_dim, d_model), T5LayerNorm(d_model, eps=eps))
        self.absolute_vis_pos_embedding = nn.Sequential(nn.Linear(5, d_model), T5LayerNorm(d_model, eps=eps))
        self.img_order_embedding = nn.Embedding(visual.n_images, d_model)
        self.fc_embedding: nn.Sequential | None = None
        if visual.fc_has_own_projection:
            assert visual.fc_dim is not None
            self.fc_embedding = nn.Sequential(nn.Linear(visual.fc_dim, d_model), T5LayerNorm(d_model, eps=eps))

    def forward(self, feats: Tensor, boxes: Tensor, img_order_ids: Tensor, obj_order_ids: Tensor,
                order_table: nn.Embedding, fc_feats: Tensor | None = None) -> Tensor:
        """feats (B, T, feat_dim), fc_feats (B, fc_dim) or None, boxes (B, V, 4) with V = T (+1 with fc),
        order ids (B|1, V). Returns (B, V, d)."""
        feat = self.feat_embedding(feats)  # (B, T, d)
        if fc_feats is not None:
            project = self.fc_embedding if self.fc_embedding is not None else self.feat_embedding
            feat = torch.cat([feat, project(fc_feats)[:, None]], dim=1)  # (B, V, d)
        pos = torch.cat([boxes, vlt5_box_area(boxes)[..., None]], dim=-1)  # (B, V, 5)
        pos = self.absolute_vis_pos_embedding(pos)  # (B, V, d)
        img = self.img_order_embedding(img_order_ids)  # (B|1, V, d)
        obj = order_table(obj_order_token_ids(obj_order_ids, order_table.num_embeddings))  # (B|1, V, d)
        return feat + pos + img + obj  # (B, V, d)


class JointStack(nn.Module):
    """The encoder body: transformers' ``T5Block`` list and final ``T5LayerNorm`` (taken from a
    ``T5EncoderModel``), plus the visual embedding. Names match VL-T5's ``encoder.*`` keys."""

    def __init__(self, stack: T5Stack, visual_embedding: VisualEmbedding) -> None:
        super().__init__()
        self.block = stack.block
        self.final_layer_norm = stack.final_layer_norm
        self.dropout = stack.dropout
        self.visual_embedding = visual_embedding

    def forward(self, inputs_embeds: Tensor, position_bias: Tensor) -> Tensor:
        """inputs_embeds (B, N, d); position_bias (B, H, N, N) with the mask folded in. Returns (B, N, d)."""
        hidden = self.dropout(inputs_embeds)  # (B, N, d)
        for block in self.block:
            # attention_mask=None: the mask is already in position_bias, which T5Attention uses as given.
            hidden = block(hidden, attention_mask=None, position_bias=position_bias)[0]  # (B, N, d)
        return self.dropout(self.final_layer_norm(hidden))  # (B, N, d)


@dataclass
class JointEncoderOutput:
    """``last_hidden_state`` (B, P+L+V, d) includes padded text positions (as VL-T5's); ``attention_mask``
    (B, P+L+V) marks the real tokens (use it when pooling); ``text_length`` = P + L (prompt prefix + text)."""

    last_hidden_state: Tensor
    attention_mask: Tensor
    text_length: int


class JointEncoder(nn.Module):
    """VL-T5's joint (text + visual) encoder. Build with :meth:`from_vlt5_checkpoint`, :meth:`from_t5`,
    :meth:`from_pretrained`, or ``JointEncoder(config)`` for random weights (T5's own initialisation).
    Loading never changes ``requires_grad``: freezing is :func:`adapters.policy.apply_policy`'s job."""

    # adapters.prompt finds the module that takes a learned prefix by this flag (adapters never import vlt5)
    accepts_prompt_prefix: ClassVar[bool] = True

    def __init__(self, config: VLT5Config, t5: T5EncoderModel | None = None) -> None:
        super().__init__()
        self.config = config
        t5 = t5 if t5 is not None else T5EncoderModel(config.to_t5_config())
        self.shared: nn.Embedding = t5.shared
        self.encoder = JointStack(t5.encoder, VisualEmbedding(config.d_model, config.visual,
                                                              config.layer_norm_epsilon))
        self.prompt: nn.Module | None = None  # learned text prefix, set by adapters.prompt.inject

    # -- forward -------------------------------------------------------------------------------------------
    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, vis_feats: Tensor | None = None,
                vis_boxes: Tensor | None = None, img_order_ids: Tensor | None = None,
                obj_order_ids: Tensor | None = None, vis_attention_mask: Tensor | None = None,
                fc_feats: Tensor | None = None, fc_boxes: Tensor | None = None) -> JointEncoderOutput:
        """Encode ``input_ids`` (B, L) with visual tokens ``vis_feats`` (B, T, feat_dim).

        Defaults are VL-T5's: text mask ``input_ids != pad``, visual mask ones, ``obj_order_ids = arange(V)``,
        ``img_order_ids = 0``; ``vis_boxes`` (B, T, 4) default to zeros (VL_adapter's CLIP grid). With
        ``pool_grid_to`` configured, the grid (and its boxes / mask) is pooled first; ``fc_feats`` (B, fc_dim)
        adds one token after the grid (box ``fc_boxes`` (B, 4), default zeros). Explicit order ids must cover
        the final V tokens. Without ``vis_feats`` the encoder is a plain T5 encoder.
        """
        text, text_mask = self.embed_text(input_ids, attention_mask)  # (B, L, d), (B, L)
        B, L = text.shape[:2]
        if vis_feats is None and fc_feats is None:
            embeds, mask, V = text, text_mask, 0
        else:
            vis, vis_mask = self.embed_visual(B, vis_feats, vis_boxes, img_order_ids, obj_order_ids,
                                              vis_attention_mask, fc_feats, fc_boxes, text.dtype)  # (B, V, d)
            V = vis.shape[1]
            embeds = torch.cat([text, vis], dim=1)  # (B, L+V, d)
            mask = torch.cat([text_mask, vis_mask.to(text_mask.dtype)], dim=1)  # (B, L+V)
        attention = self.encoder.block[0].layer[0].SelfAttention
        bias = joint_position_bias(attention, L, V).to(embeds.dtype) + additive_mask(mask, embeds.dtype)
        hidden = self.encoder(embeds, bias)  # (B, L+V, d); bias (B, H, L+V, L+V)
        return JointEncoderOutput(last_hidden_state=hidden, attention_mask=mask, text_length=L)

    def embed_text(self, input_ids: Tensor, attention_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """``shared(input_ids)`` unscaled (§4.3), preceded by the learned prompt prefix if one is injected."""
        if attention_mask is None:
            attention_mask = input_ids.ne(self.config.pad_token_id)
        embeds = self.shared(input_ids)  # (B, L, d)
        mask = attention_mask.to(embeds.dtype)  # (B, L)
        if self.prompt is not None:
            prefix = self.prompt(embeds.shape[0]).to(embeds.dtype)  # (B, P, d)
            embeds = torch.cat([prefix, embeds], dim=1)  # (B, P+L, d)
            mask = torch.cat([mask.new_ones(prefix.shape[:2]), mask], dim=1)  # (B, P+L)
        return embeds, mask

    def embed_visual(self, batch: int, vis_feats: Tensor | None, vis_boxes: Tensor | None,
                     img_order_ids: Tensor | None, obj_order_ids: Tensor | None, vis_attention_mask: Tensor | None,
                     fc_feats: Tensor | None, fc_boxes: Tensor | None, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Visual tokens (B, V, d) and their mask (B, V) after optional pooling and the optional fc token."""
        visual = self.config.visual
        if vis_feats is None:  # fc only: an empty grid
            assert fc_feats is not None
            vis_feats = fc_feats.new_zeros(batch, 0, visual.feat_dim)
        vis_feats = vis_feats.to(dtype)  # (B, T, C)
        T = vis_feats.shape[1]
        boxes = vis_boxes.to(dtype) if vis_boxes is not None else vis_feats.new_zeros(batch, T, 4)  # (B, T, 4)
        mask = vis_attention_mask if vis_attention_mask is not None else vis_feats.new_ones(batch, T)  # (B, T)
        if visual.pool_grid_to is not None and T > 0:
            vis_feats, boxes, mask = pool_square_grid(vis_feats, boxes, mask, visual.pool_grid_to)
        if fc_feats is not None:
            if visual.fc_dim is None:
                raise ValueError("fc_feats given but the config has visual.fc_dim = None")
            fc_box = fc_boxes.to(dtype) if fc_boxes is not None else boxes.new_zeros(batch, 4)  # (B, 4)
            boxes = torch.cat([boxes, fc_box[:, None]], dim=1)  # (B, V, 4)
            fc_mask = mask.amax(dim=1, keepdim=True) if mask.shape[1] else mask.new_ones(batch, 1)  # (B, 1)
            mask = torch.cat([mask, fc_mask], dim=1)  # (B, V)
            fc_feats = fc_feats.to(dtype)
        V = boxes.shape[1]
        if img_order_ids is None:
            img_order_ids = torch.zeros(1, V, dtype=torch.long, device=boxes.device)  # (1, V)
        if obj_order_ids is None:
            obj_order_ids = torch.arange(V, dtype=torch.long, device=boxes.device)[None]  # (1, V)
        for name, ids in (("img_order_ids", img_order_ids), ("obj_order_ids", obj_order_ids)):
            if ids.shape[-1] != V:
                raise ValueError(f"{name} has {ids.shape[-1]} entries per row but there are {V} visual tokens "
                                 "(after pooling / the fc token)")
        vis = self.encoder.visual_embedding(vis_feats, boxes, img_order_ids, obj_order_ids, self.shared,
                                            fc_feats)  # (B, V, d)
        return vis, mask

    # -- construction and persistence (implemented in vlt5.checkpoint, which is given the class) -----------
    @classmethod
    def from_vlt5_checkpoint(cls, path: str | Path, strict: bool = True,
                             **overrides: Any) -> tuple[JointEncoder, LoadReport]:
        """Load VL-T5's encoder from a ``.pth`` / ``.safetensors`` state dict (decoder ignored). The config is
        inferred from tensor shapes; ``overrides`` (e.g. ``relative_attention_max_distance=128``,
        ``visual={"pool_grid_to": 6}``) win. Missing encoder keys, unexpected keys and shape mismatches raise
        :class:`vlt5.checkpoint.CheckpointError` (with ``.report``) unless ``strict=False``."""
        return load_vlt5_checkpoint(cls, path, strict=strict, **overrides)

    @classmethod
    def from_t5(cls, t5_dir: str | Path, feat_dim: int = 2048, vocab_size: int | None = None,
                **cfg: Any) -> JointEncoder:
        """Text weights from a transformers T5 directory, visual embedding new. The vocabulary is resized to
        ``vocab_size`` (default: the T5 vocabulary's pieces + 100 ``<extra_id>`` + 100 ``<vis_extra_id>``, as
        VL-T5's ``resize_token_embeddings`` did); ``cfg`` sets other :class:`VLT5Config` fields / ``visual``."""
        return load_t5(cls, t5_dir, feat_dim=feat_dim, vocab_size=vocab_size, **cfg)

    def save_pretrained(self, directory: str | Path) -> Path:
        """``config.json`` + ``model.safetensors``; :meth:`from_pretrained` needs no flags."""
        return save_joint_encoder(self.state_dict(), self.config, directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> JointEncoder:
        """Load a directory written by :meth:`save_pretrained`."""
        return load_joint_encoder(cls, directory)
