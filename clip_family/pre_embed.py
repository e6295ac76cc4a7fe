"""Pre-embedding a locked image tower (LiT, Zhai et al. 2022: with the image tower locked, its outputs can be
computed once): the tower's outputs for every training image, in memory or in a feature file of the extraction
room's HDF5 layout (:mod:`feature_extraction.writer`: ``ids`` = the items' keys, ``fc`` (N, W) float32, no grid),
written atomically and reused by later runs.

The stored vector is exactly what the locked tower gives the trainable part: ``model.visual(pixels)`` in eval mode
(an OpenAI tower's own projection included, since it is locked with it; a transformers tower's pooled output before
our trainable ``image_projection``). A file is reused only when its ``backbone_sha256`` equals the fingerprint of the
tower (the sha256 of its state dict — names, dtypes, shapes, values — and of its preprocessing) and it holds every
training key; anything else is refused with one line. The images behind the keys are not hashed: a file made from
other images under the same keys would be taken as it is.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from clip_family.data import Item
from feature_extraction.readers import open_features
from feature_extraction.store import FORMAT_NAME, FORMAT_VERSION, FeatureStore
from feature_extraction.writer import Block, attrs_mismatch, write_feature_file
from foundations.errors import UserError

logger = logging.getLogger(__name__)

PixelsFn = Callable[[int, Item], Tensor]  # (index, item) -> (3, R, R) preprocessed pixels


def preprocessing_description(model: nn.Module) -> str:
    """What turns an image into the tower's pixels: stable text (no object addresses), part of the fingerprint."""
    cfg = model.config.image
    if cfg.kind == "openai":
        return f"OpenAI clip transform at {cfg.image_resolution} px"
    return f"transformers image processor {model.processor.processor.to_json_string()}"


def tower_fingerprint(model: nn.Module) -> str:
    """sha256 of the image tower's state dict (names, dtypes, shapes, values) and of its preprocessing."""
    digest = hashlib.sha256(preprocessing_description(model).encode())
    for name, tensor in sorted(model.visual.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def tower_attrs(model: nn.Module, fingerprint: str, width: int) -> dict[str, Any]:
    """The feature file's attributes (the extraction's names where they apply)."""
    cfg = model.config.image
    arch = "hf" if cfg.kind == "hf" else "vit" if cfg.is_vit else "resnet"
    attrs: dict[str, Any] = dict(
        format_name=FORMAT_NAME, format_version=FORMAT_VERSION, modality="image",
        backbone=f"clip_family locked image tower ({model.config.variant})", backbone_family="clip-family",
        backbone_arch=arch, backbone_sha256=fingerprint, fc_dim=width, dtype="float32", num_shards=1, shard_id=0,
        has_grid=False, preprocessing=preprocessing_description(model))
    if cfg.kind == "openai":  # a transformers tower's size is in its processor (in ``preprocessing``)
        attrs["image_size"] = cfg.image_resolution
    return attrs


def tower_width(model: nn.Module) -> int:
    """W of the stored vectors: an OpenAI tower ends in its own projection (embed_dim), a transformers tower in its
    hidden size."""
    return model.config.embed_dim if model.config.image.kind == "openai" else model.visual.width


@torch.no_grad()
def tower_blocks(model: nn.Module, items: Sequence[Item], pixels: PixelsFn, batch_size: int) -> Iterator[Block]:
    """The locked tower's outputs, ``batch_size`` items at a time, in item order (eval mode, restored after)."""
    visual = model.visual
    was_training = visual.training
    visual.eval()
    try:
        for start in range(0, len(items), batch_size):
            stop = min(start + batch_size, len(items))
            batch = torch.stack([pixels(i, items[i]) for i in range(start, stop)])  # (B, 3, R, R)
            out = visual(batch.to(model.device)).float().cpu().numpy()  # (B, W)
            yield Block([it.key for it in items[start:stop]], out, None)
    finally:
        visual.train(was_training)


def tower_outputs(model: nn.Module, items: Sequence[Item], pixels: PixelsFn, batch_size: int) -> Tensor:
    """(N, W) outputs of the locked tower for ``items``, in memory."""
    blocks = list(tower_blocks(model, items, pixels, batch_size))
    logger.info("pre-embedded %d training images with the locked image tower (in memory)", len(items))
    return torch.from_numpy(np.concatenate([b.fc for b in blocks]))


def open_tower_features(path: str | Path, model: nn.Module, items: Sequence[Item], pixels: PixelsFn,
                        batch_size: int) -> FeatureStore:
    """The feature file of the locked tower's outputs at ``path``: reused when it matches ``model``'s tower and holds
    every item's key, written first (atomically) when it does not exist; a mismatched file is refused."""
    path = Path(path)
    fingerprint = tower_fingerprint(model)
    width = tower_width(model)
    if not path.exists():
        attrs = tower_attrs(model, fingerprint, width)
        path.parent.mkdir(parents=True, exist_ok=True)
        logger.info("pre-embedding %d training images with the locked image tower into %s", len(items), path)
        write_feature_file(path, attrs, len(items), width, None, "float32",
                           tower_blocks(model, items, pixels, batch_size), [])
    store = open_features(path)
    try:
        problems = attrs_mismatch(store.attrs, tower_attrs(model, fingerprint, width))
        if problems:
            raise UserError(f"--pre-embed-features {path} holds the outputs of another image tower or preprocessing "
                            f"({'; '.join(problems)}); use another path or delete it")
        store.rows([it.key for it in items])  # every training key present (FeatureFileError names the missing)
    except BaseException:
        store.close()
        raise
    logger.info("training from the stored tower outputs in %s (%d rows)", path, len(store))
    return store
