"""Model inputs from questions and stored image features (arrays in the DESIGN.md §3 layout), as tensors.

Pure functions: reading the feature file and batching are the caller's (``retrieval.querying.features``
for encoding, ``retrieval.training.batches`` for training), so this package never opens a feature file.

Visual tokens are the CLIP grid of each image (ResNet layer4 cells or ViT patch tokens, row-major), as in
VL-Adapter's CLIP path (ylsung/VL_adapter ``*_clip_data.py``: all-zero boxes, one image, 7x7 RN101 grid that the
encoder may max-pool to 6x6). Options:

* ``boxes="zero"`` (VL_adapter) or ``"grid_cells"``: normalised (x1, y1, x2, y2) of each grid cell, so the
  box embedding tells the encoder where a token sits (the whole image, (0, 0, 1, 1), for the fc token);
* ``fc_token``: the image's ``fc`` (CLIP embedding) as one more visual token after the grid;
* ``grid=False`` with ``fc_token=True``: the fc token alone.

Text is ``prefix + question`` (task prefixes are plain text, e.g. ``"vqa: "``), tokenised with ``</s>`` appended
and padded with 0, truncated to ``max_length``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from foundations.errors import UserError, ConfigError

logger = logging.getLogger(__name__)

BOX_MODES = ("zero", "grid_cells")


@dataclass
class VisualInputConfig:
    """How questions and stored features become encoder inputs (saved with the query encoder)."""

    grid: bool = True
    fc_token: bool = False
    boxes: str = "zero"
    max_length: int = 40
    prefix: str = ""

    def __post_init__(self) -> None:
        if self.boxes not in BOX_MODES:
            raise ConfigError(f"inputs.boxes must be one of {BOX_MODES}, got {self.boxes!r}")
        if not (self.grid or self.fc_token):
            raise ConfigError("inputs: at least one of grid and fc_token must be true")
        if self.max_length <= 1:
            raise ConfigError(f"inputs.max_length must be > 1, got {self.max_length}")


def grid_cell_boxes(h: int, w: int) -> Tensor:
    """(h*w, 4) normalised (x1, y1, x2, y2) of the cells of an h x w grid, row-major over (h, w)."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")  # (h, w) each
    boxes = torch.stack([xs / w, ys / h, (xs + 1) / w, (ys + 1) / h], dim=-1)  # (h, w, 4)
    return boxes.reshape(h * w, 4)  # (h*w, 4)


def grid_hw_of(attrs: dict[str, Any], tokens: int, where: str = "feature file") -> tuple[int, int]:
    """The grid's (h, w) from the file's ``grid_hw`` attribute, else a square root of the token count."""
    hw = attrs.get("grid_hw")
    if hw is not None:
        h, w = int(hw[0]), int(hw[1])
        if h * w != tokens:
            raise UserError(f"{where}: grid_hw {h}x{w} does not match {tokens} grid tokens")
        return h, w
    side = round(tokens**0.5)
    if side * side != tokens:
        raise UserError(f"{where}: no grid_hw attribute and {tokens} tokens is not a square grid")
    return side, side


def visual_inputs(fc: np.ndarray | None, grid: np.ndarray | None, cfg: VisualInputConfig,
                  grid_hw: tuple[int, int] | None) -> dict[str, Tensor]:
    """Encoder keyword arguments for a batch of images: ``vis_feats`` (B, T, C), ``vis_boxes`` (B, T, 4),
    ``vis_attention_mask`` (B, T), and ``fc_feats`` (B, D) / ``fc_boxes`` (B, 4) with the fc token."""
    out: dict[str, Tensor] = {}
    if cfg.grid:
        if grid is None:
            raise UserError("inputs.grid is true but the feature file has no grid")
        feats = torch.from_numpy(np.asarray(grid, dtype=np.float32))  # (B, T, C)
        B, T = feats.shape[:2]
        if cfg.boxes == "grid_cells":
            assert grid_hw is not None
            boxes = grid_cell_boxes(*grid_hw).expand(B, T, 4).clone()  # (B, T, 4)
        else:
            boxes = torch.zeros(B, T, 4)  # (B, T, 4) VL_adapter
        out.update(vis_feats=feats, vis_boxes=boxes, vis_attention_mask=torch.ones(B, T))
    if cfg.fc_token:
        if fc is None:
            raise UserError("inputs.fc_token is true but the feature file has no fc")
        fc_feats = torch.from_numpy(np.asarray(fc, dtype=np.float32))  # (B, D)
        whole = torch.tensor([0.0, 0.0, 1.0, 1.0]) if cfg.boxes == "grid_cells" else torch.zeros(4)
        out.update(fc_feats=fc_feats, fc_boxes=whole.expand(fc_feats.shape[0], 4).clone())  # (B, 4)
    return out


def text_inputs(tokenizer: Any, questions: Sequence[str], cfg: VisualInputConfig) -> dict[str, Tensor]:
    """``input_ids`` / ``attention_mask`` (B, L) of ``prefix + question``: ``</s>`` appended, padded with 0 to the
    longest, truncated to ``max_length``."""
    enc = tokenizer([cfg.prefix + q for q in questions], padding=True, truncation=True,
                    max_length=cfg.max_length, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}  # (B, L) each
