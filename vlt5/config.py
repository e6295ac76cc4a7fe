"""Typed configuration of the VL-T5 joint encoder (DESIGN.md §4).

The fields mirror what VL-T5 stores on its HF ``T5Config`` by hand (``trainer_base.create_config`` in
j-min/VL-T5: ``feat_dim``, ``pos_dim``, ``n_images``, ``use_vis_order_embedding``, ``use_vis_layer_norm``,
``individual_vis_layer_norm``) but as validated dataclasses: only the released VL-T5 architecture is
expressible (per-part RMSNorm, order embeddings on, no norm over the sum), plus two VL_adapter-era extensions
that are off by default (6x6 max-pool of a square grid, an extra ``fc`` token).

Configs load strictly: an unknown key raises :class:`ConfigError` naming it. ``to_t5_config()`` builds a fresh
``transformers.T5Config`` each call (``T5EncoderModel(cfg)`` mutates the config it is given).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from foundations.config import from_dict, load_config_json
from foundations.errors import ConfigError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass
class VisualConfig:
    """The visual side: VL-T5's ``VisualEmbedding`` (+ the optional VL_adapter-style extensions).

    ``feat_dim``: width of a visual token's feature (2048 for Faster R-CNN / RN101 grids, 768 for ViT-B grids).
    ``n_images``: rows of ``img_order_embedding`` (2 in VL-T5, for NLVR2 pairs).
    ``fc_dim``: if set, the encoder accepts ``fc_feats`` (B, fc_dim) and appends them as one extra visual
    token; a projection of its own (``visual_embedding.fc_embedding``) is created when ``fc_dim != feat_dim``.
    ``pool_grid_to``: if set (VL_adapter uses 6), a square grid is adaptive-max-pooled to n x n inside the
    encoder, before the visual embedding (VL_adapter ``Downsample``): always n*n tokens; a grid smaller than
    n x n is upsampled by repeating cells, exactly as ``nn.AdaptiveMaxPool2d`` does.
    """

    feat_dim: int = 2048
    n_images: int = 2
    fc_dim: int | None = None
    pool_grid_to: int | None = None

    def __post_init__(self) -> None:
        _positive(self, "feat_dim", "n_images")
        if self.fc_dim is not None and self.fc_dim <= 0:
            raise ConfigError(f"visual.fc_dim must be a positive int or null, got {self.fc_dim!r}")
        if self.pool_grid_to is not None and self.pool_grid_to <= 0:
            raise ConfigError(f"visual.pool_grid_to must be a positive int or null, got {self.pool_grid_to!r}")

    @property
    def fc_has_own_projection(self) -> bool:
        return self.fc_dim is not None and self.fc_dim != self.feat_dim


@dataclass
class VLT5Config:
    """T5 encoder hyper-parameters (t5-base defaults, as in VL-T5's ``Epoch30.pth``) + the visual part."""

    vocab_size: int = 32200
    d_model: int = 768
    d_kv: int = 64
    d_ff: int = 3072
    num_layers: int = 12
    num_heads: int = 12
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"
    pad_token_id: int = 0
    eos_token_id: int = 1
    attn_implementation: str = "sdpa"
    visual: VisualConfig = field(default_factory=VisualConfig)

    def __post_init__(self) -> None:
        if isinstance(self.visual, dict):
            self.visual = from_dict(VisualConfig, self.visual, "visual")
        _positive(self, "vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads",
                  "relative_attention_num_buckets", "relative_attention_max_distance")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ConfigError(f"dropout_rate must be in [0, 1), got {self.dropout_rate!r}")
        if self.feed_forward_proj not in ("relu", "gated-gelu"):
            raise ConfigError(f"feed_forward_proj must be 'relu' (VL-T5 / t5-base) or 'gated-gelu', "
                              f"got {self.feed_forward_proj!r}")
        if self.attn_implementation not in ("eager", "sdpa"):
            raise ConfigError(f"attn_implementation must be 'eager' or 'sdpa', got {self.attn_implementation!r}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ConfigError(f"pad_token_id {self.pad_token_id} outside the vocabulary ({self.vocab_size})")

    # -- conversions ---------------------------------------------------------------------------------------
    def to_t5_config(self) -> Any:
        """A fresh ``transformers.T5Config`` for the text encoder (never shared between models)."""
        from transformers import T5Config

        cfg = T5Config(
            vocab_size=self.vocab_size, d_model=self.d_model, d_kv=self.d_kv, d_ff=self.d_ff,
            num_layers=self.num_layers, num_decoder_layers=self.num_layers, num_heads=self.num_heads,
            relative_attention_num_buckets=self.relative_attention_num_buckets,
            relative_attention_max_distance=self.relative_attention_max_distance,
            dropout_rate=self.dropout_rate, layer_norm_epsilon=self.layer_norm_epsilon,
            feed_forward_proj=self.feed_forward_proj, is_encoder_decoder=False, use_cache=False,
            decoder_start_token_id=0, pad_token_id=self.pad_token_id, eos_token_id=self.eos_token_id,
            tie_word_embeddings=False,
        )
        cfg._attn_implementation = self.attn_implementation
        return cfg

    @classmethod
    def from_t5_config(cls, t5: Any, **overrides: Any) -> VLT5Config:
        """Text hyper-parameters from a ``T5Config``; ``overrides`` (incl. ``visual=``) win."""
        base = dict(
            vocab_size=t5.vocab_size, d_model=t5.d_model, d_kv=t5.d_kv, d_ff=t5.d_ff, num_layers=t5.num_layers,
            num_heads=t5.num_heads, relative_attention_num_buckets=t5.relative_attention_num_buckets,
            relative_attention_max_distance=t5.relative_attention_max_distance, dropout_rate=t5.dropout_rate,
            layer_norm_epsilon=t5.layer_norm_epsilon, feed_forward_proj=t5.feed_forward_proj,
            pad_token_id=t5.pad_token_id if t5.pad_token_id is not None else 0,
            eos_token_id=t5.eos_token_id if t5.eos_token_id is not None else 1,
        )
        return cls.from_dict({**base, **overrides})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VLT5Config:
        data = dict(data)
        if isinstance(data.get("visual"), VisualConfig):
            data["visual"] = asdict(data["visual"])
        return from_dict(cls, data, "VLT5Config")

    def with_overrides(self, **overrides: Any) -> VLT5Config:
        """A copy with top-level fields replaced; ``visual`` may be a dict of visual fields to replace."""
        data = self.to_dict()
        if isinstance(overrides.get("visual"), dict):
            overrides["visual"] = {**data["visual"], **overrides["visual"]}
        elif isinstance(overrides.get("visual"), VisualConfig):
            overrides["visual"] = asdict(overrides["visual"])
        return VLT5Config.from_dict({**data, **overrides})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"format_version": FORMAT_VERSION, **self.to_dict()}, indent=2))

    @classmethod
    def load(cls, path: str | Path) -> VLT5Config:
        data = load_config_json(path)
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc


def _positive(obj: object, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{type(obj).__name__}.{name} must be a positive int, got {value!r}")
