"""Encoding questions about images of a feature file with a joint query encoder: feature lookup + batching.

The query encoder (:class:`vlt5.QueryEncoder`) is a pure ``nn.Module`` (tensors in, vectors out); this module
feeds it. :class:`QueryCollator` turns (questions, image ids) into the encoder's keyword inputs by reading the
images' ``fc`` / ``grid`` rows from a :class:`feature_extraction.store.FeatureStore` (DESIGN.md §3) and calling
:func:`vlt5.inputs.text_inputs` / :func:`vlt5.inputs.visual_inputs`; :func:`encode_with_features` runs the
encoder over it in batches, in eval mode without gradients (DPR's query side, Karpukhin et al. 2020).

    from retrieval.querying.features import encode_with_features
    vecs = encode_with_features(QueryEncoder.from_pretrained("runs/x/best"), "feats.h5",
                                ["Who designed this building?"], ["img_001"])   # (1, D) float32, unit norm
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from feature_extraction.store import FeatureStore
from feature_extraction.readers import open_features
from vlt5.inputs import VisualInputConfig, grid_hw_of, text_inputs, visual_inputs
from vlt5.query_encoder import QueryEncoder

logger = logging.getLogger(__name__)


def open_store(store: FeatureStore | str | Path) -> FeatureStore:
    """``store`` itself, or the feature file at that path opened."""
    return open_features(store) if isinstance(store, str | Path) else store


class QueryCollator:
    """``collator(questions, image_ids) -> dict`` of encoder inputs (text + the images' visual tokens).

    Every image id must be in ``store`` (a FeatureStore or a path to one). The dict's keys are the keyword
    arguments of :meth:`vlt5.modeling.JointEncoder.forward`.
    """

    def __init__(self, tokenizer: object, store: FeatureStore | str | Path, cfg: VisualInputConfig) -> None:
        self.tokenizer = tokenizer
        self.store = open_store(store)
        self.cfg = cfg
        self._grid_hw: tuple[int, int] | None = None

    @classmethod
    def for_encoder(cls, encoder: QueryEncoder, store: FeatureStore | str | Path) -> QueryCollator:
        """The collator of ``encoder``'s own tokenizer and input config."""
        if encoder.tokenizer is None:
            raise ValueError("this QueryEncoder has no tokenizer (save it with one, or pass tokenizer=...)")
        return cls(encoder.tokenizer, store, encoder.config.inputs)

    def __call__(self, questions: Sequence[str], image_ids: Sequence[str]) -> dict[str, Tensor]:
        if len(questions) != len(image_ids):
            raise ValueError(f"{len(questions)} questions but {len(image_ids)} image ids")
        missing = [i for i, x in enumerate(image_ids) if x is None]
        if missing:
            raise ValueError(f"queries {missing[:5]} have no image id; every query needs an image")
        feats = self.store.get_many(list(image_ids))
        if self.cfg.grid and feats.grid is not None and self._grid_hw is None:
            self._grid_hw = grid_hw_of(self.store.attrs, feats.grid.shape[1], str(getattr(self.store, "path", "")))
        return {**text_inputs(self.tokenizer, questions, self.cfg),
                **visual_inputs(feats.fc, feats.grid, self.cfg, self._grid_hw)}


@torch.no_grad()
def encode_with_features(encoder: QueryEncoder, store: FeatureStore | str | Path, questions: Sequence[str],
                         image_ids: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """(Q, proj_dim) float32 query vectors for ``questions[i]`` about image ``image_ids[i]`` of the feature file,
    in eval mode (the encoder's train/eval mode is restored afterwards), on the encoder's device."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    collate = QueryCollator.for_encoder(encoder, store)
    device = encoder.head.weight.device
    was_training = encoder.training
    encoder.eval()
    chunks = []
    try:
        for start in range(0, len(questions), batch_size):
            batch = collate(questions[start:start + batch_size], image_ids[start:start + batch_size])
            chunks.append(encoder(**{k: v.to(device) for k, v in batch.items()}).float().cpu().numpy())  # (b, D)
    finally:
        encoder.train(was_training)
    if not chunks:
        return np.empty((0, encoder.config.proj_dim), dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32, copy=False)  # (Q, D)
