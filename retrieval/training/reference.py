"""The generic reference encoder every comparison table shows beside the joint encoder (issue 10).

A small standard transformer — ``torch.nn.TransformerEncoder`` (pre-norm, GELU), learned absolute positions, a
learned type embedding for text vs visual tokens (embeddings initialised N(0, 0.02) as BERT / GPT-2, visual
tokens layer-normalised after their projection), masked mean pooling, a linear head into CLIP's space — over
*exactly* the inputs the joint encoder gets (the same question tokens, grid tokens, fc token and boxes from the
same collator), trained by the same task, loss, data order and budget. It is the "is the VL-T5 machinery earning
its complexity?" row: a joint encoder that scores below it, or that does not drop when the questions are
shuffled, is not using what it is given.

It quacks like :class:`vlt5.QueryEncoder` where the trainer and the querying side need it: ``config.inputs``,
``config.proj_dim``, ``tokenizer``, ``forward(**inputs) -> (B, D)`` (L2-normalised), ``save_pretrained`` /
``from_pretrained`` (``config.json`` with ``"kind": "generic_reference"`` + ``model.safetensors`` + tokenizer).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from foundations.config import from_dict, load_json
from foundations.errors import ConfigError
from vlt5.inputs import VisualInputConfig
from vlt5.tokenization import load_tokenizer

KIND = "generic_reference"
CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"


@dataclass
class ReferenceConfig:
    """Sizes of the reference (the issue's: d 128, 4 heads, 2 layers) and the input widths it reads."""

    vocab_size: int
    feat_dim: int
    proj_dim: int
    fc_dim: int | None = None
    d_model: int = 128
    num_heads: int = 4
    num_layers: int = 2
    d_ff: int = 256
    dropout: float = 0.1
    max_positions: int = 256  # text + visual tokens
    inputs: VisualInputConfig = field(default_factory=VisualInputConfig)

    def __post_init__(self) -> None:
        if self.d_model % self.num_heads:
            raise ConfigError(f"reference: d_model {self.d_model} is not divisible by num_heads {self.num_heads}")
        if min(self.vocab_size, self.feat_dim, self.proj_dim, self.num_layers) < 1:
            raise ConfigError("reference: vocab_size, feat_dim, proj_dim and num_layers must be >= 1")


class GenericQueryEncoder(nn.Module):
    """Embed text tokens and visual tokens into one sequence, run a standard transformer, pool, project."""

    def __init__(self, config: ReferenceConfig, tokenizer: Any = None) -> None:
        super().__init__()
        self.config, self.tokenizer = config, tokenizer
        d = config.d_model
        self.token_embedding = nn.Embedding(config.vocab_size, d)
        self.feat_embedding = nn.Linear(config.feat_dim, d)
        self.fc_embedding = nn.Linear(config.fc_dim, d) if config.fc_dim and config.fc_dim != config.feat_dim else None
        self.box_embedding = nn.Linear(5, d)
        self.type_embedding = nn.Embedding(2, d)  # 0 text, 1 visual
        self.position_embedding = nn.Embedding(config.max_positions, d)
        layer = nn.TransformerEncoderLayer(d, config.num_heads, config.d_ff, config.dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.num_layers, enable_nested_tensor=False)
        self.visual_norm = nn.LayerNorm(d)  # features of any scale enter at the scale of the embeddings
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, config.proj_dim)
        for table in (self.token_embedding, self.type_embedding, self.position_embedding):
            nn.init.normal_(table.weight, std=0.02)  # BERT / GPT-2's embedding init (torch's default is N(0, 1))

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, vis_feats: Tensor | None = None,
                vis_boxes: Tensor | None = None, fc_feats: Tensor | None = None, fc_boxes: Tensor | None = None,
                **_: Any) -> Tensor:
        """The joint encoder's keyword inputs -> (B, proj_dim), L2-normalised."""
        mask = attention_mask if attention_mask is not None else (input_ids != 0).long()  # (B, L)
        parts, masks, types = [self.token_embedding(input_ids)], [mask], [0]  # (B, L, d)
        if vis_feats is not None:
            boxes = vis_boxes if vis_boxes is not None else vis_feats.new_zeros(*vis_feats.shape[:2], 4)
            parts.append(self.visual_norm(self.feat_embedding(vis_feats) + self.box_embedding(_with_area(boxes))))
            masks.append(mask.new_ones(vis_feats.shape[:2]))
            types.append(1)
        if fc_feats is not None:  # its own projection, or the grid's when the widths match (as the joint encoder)
            project = self.fc_embedding if self.fc_embedding is not None else self.feat_embedding
            boxes = fc_boxes if fc_boxes is not None else fc_feats.new_zeros(len(fc_feats), 4)
            parts.append(self.visual_norm(project(fc_feats) + self.box_embedding(_with_area(boxes)))[:, None])
            masks.append(mask.new_ones(len(fc_feats), 1))
            types.append(1)
        type_ids = torch.cat([torch.full(p.shape[:2], t, dtype=torch.long, device=p.device)
                              for p, t in zip(parts, types)], dim=1)  # (B, N)
        x = torch.cat(parts, dim=1)  # (B, N, d)
        n = min(x.shape[1], self.config.max_positions)
        x = x[:, :n] + self.type_embedding(type_ids[:, :n]) + self.position_embedding.weight[:n]  # (B, N, d)
        keep = torch.cat(masks, dim=1)[:, :n].bool()  # (B, N)
        h = self.norm(self.encoder(x, src_key_padding_mask=~keep))  # (B, N, d)
        m = keep.to(h.dtype)[..., None]  # (B, N, 1)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, d)
        return F.normalize(self.head(pooled), dim=-1)  # (B, D)

    # -- files ----------------------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_NAME).write_text(json.dumps({"kind": KIND, "config": asdict(self.config)}, indent=2))
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()},
                  str(directory / WEIGHTS_NAME))
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(directory))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> GenericQueryEncoder:
        directory = Path(directory)
        data = load_json(directory / CONFIG_NAME)
        if not isinstance(data, dict) or data.get("kind") != KIND:
            raise ConfigError(f"{directory / CONFIG_NAME}: not a generic reference encoder")
        model = cls(from_dict(ReferenceConfig, data["config"], f"{directory / CONFIG_NAME}"),
                    load_tokenizer(directory))
        model.load_state_dict(load_file(str(directory / WEIGHTS_NAME)))
        return model


def _with_area(boxes: Tensor) -> Tensor:
    """(..., 4) boxes -> (..., 5) with their area (the joint encoder's box input, without VL-T5's quirk)."""
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    return torch.cat([boxes, area[..., None]], dim=-1)


def reference_like(encoder: Any, d_model: int = 128, num_layers: int = 2, num_heads: int = 4,
                   dropout: float = 0.1) -> GenericQueryEncoder:
    """A reference encoder reading the same inputs as ``encoder`` (a QueryEncoder): same tokenizer, input config,
    visual widths and output size."""
    visual = encoder.config.model.visual
    config = ReferenceConfig(vocab_size=len(encoder.tokenizer), feat_dim=visual.feat_dim, fc_dim=visual.fc_dim,
                             proj_dim=encoder.config.proj_dim, d_model=d_model, num_heads=num_heads,
                             num_layers=num_layers, d_ff=2 * d_model, dropout=dropout, inputs=encoder.config.inputs)
    return GenericQueryEncoder(config, encoder.tokenizer)
