"""CLIP backbones behind one small interface: ``preprocess``, ``tokenize``, ``encode_images``, ``encode_texts``
(:class:`~feature_extraction.backbone_base.Backbone`), and :func:`load_backbone`, which picks the family.

Three families, each through its real loader (no re-implemented models):

* OpenAI CLIP (:mod:`feature_extraction.openai_backbone`): the model ``clip.load(name_or_path, jit=False)`` returns,
  read without unpickling code; names such as ``RN101`` / ``ViT-B/32`` or a local OpenAI-format ``.pt``. ``fc`` is exactly ``model.encode_image`` /
  ``encode_text``; the grid is ResNet ``layer4`` or the ViT final-block patch tokens, from the same forward pass.
* transformers CLIP (:mod:`feature_extraction.hf_backbone`, ``hf:<dir or hub id>``): one ``get_image_features``
  call returns both the projected embedding (``pooler_output``) and ``last_hidden_state`` (encoder output before
  ``post_layernorm``), whose patch tokens ``[:, 1:]`` are the grid.
* a CLIP-family model directory (:mod:`feature_extraction.clip_family_backbone`: ``ClipFamilyModel.save_pretrained``,
  an mCLIP of :mod:`multilingual` included): the model's own ``encode_image`` / ``encode_text``.

The families are a registry (:data:`BACKBONE_FAMILIES`, a dict literal of lazy builders, as DPR's
``BIENCODER_INITIALIZERS``): this module imports a family only when it is asked for, and no family imports this
module (they share :mod:`feature_extraction.backbone_base`), so there is no import cycle.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from feature_extraction.backbone_base import (CLIP_MEAN, CLIP_STD, Backbone, clip_transform, file_sha256,
                                              resize_pos_embed)

__all__ = ["BACKBONE_FAMILIES", "CLIP_MEAN", "CLIP_STD", "Backbone", "backbone_family", "clip_transform",
           "file_sha256", "load_backbone", "resize_pos_embed"]


def _openai_clip(spec: str, device: str, compute_dtype: torch.dtype, image_size: int | None) -> Backbone:
    from feature_extraction.openai_backbone import OpenAIClip

    return OpenAIClip(spec, device, compute_dtype, image_size)


def _hf_clip(spec: str, device: str, compute_dtype: torch.dtype, image_size: int | None) -> Backbone:
    from feature_extraction.hf_backbone import HFClip

    return HFClip(spec, device, compute_dtype, image_size)


def _clip_family(spec: str, device: str, compute_dtype: torch.dtype, image_size: int | None) -> Backbone:
    from feature_extraction.clip_family_backbone import ClipFamilyBackbone

    return ClipFamilyBackbone(spec, device, compute_dtype, image_size)


BackboneBuilder = Callable[[str, str, torch.dtype, int | None], Backbone]
BACKBONE_FAMILIES: dict[str, BackboneBuilder] = {
    "openai-clip": _openai_clip,
    "hf-clip": _hf_clip,
    "clip-family": _clip_family,  # a ClipFamilyModel / mCLIP directory (config.json with image + text towers)
}


def backbone_family(spec: str) -> str:
    """``hf:<dir or hub id>`` -> ``'hf-clip'``; a CLIP-family model directory (ours, an mCLIP) -> ``'clip-family'``;
    anything else (an OpenAI name or ``.pt`` path) -> ``'openai-clip'``."""
    if spec.startswith("hf:"):
        return "hf-clip"
    from feature_extraction.clip_family_backbone import is_clip_family_dir

    return "clip-family" if is_clip_family_dir(spec) else "openai-clip"


def load_backbone(spec: str, device: str, compute_dtype: torch.dtype, image_size: int | None = None) -> Backbone:
    """``RN101`` / ``ViT-B/32`` / ``path/to/model.pt`` (OpenAI format) or ``hf:<dir or hub id>`` (transformers)."""
    return BACKBONE_FAMILIES[backbone_family(spec)](spec, device, compute_dtype, image_size)
