"""A CLIP-family model directory (``ClipFamilyModel.save_pretrained``: ``config.json`` with ``image`` / ``text``
towers + ``model.safetensors``; an mCLIP directory of :mod:`multilingual` is one, with its ``mclip.json``) behind the
:class:`~feature_extraction.backbone_base.Backbone` interface: ``--backbone DIR``.

``fc`` is exactly the model's ``encode_image`` / ``encode_text`` (its own processor and tokenizer: for an mCLIP the
multilingual student's tokenizer). The grid is the OpenAI image tower's, captured as
:mod:`feature_extraction.openai_backbone` does (ViT final-block patch tokens, ResNet ``layer4``); a transformers
image tower gives ``last_hidden_state`` without its first token. The model is used at its native resolution.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from feature_extraction.backbone_base import Backbone, ClipTensorTransform, file_sha256
from foundations.errors import UsageError
from foundations.images import RGB_CONVERSION

logger = logging.getLogger(__name__)


def is_clip_family_dir(spec: str) -> bool:
    """A directory whose ``config.json`` describes two towers (not a transformers ``CLIPModel`` directory)."""
    config = Path(spec) / "config.json"
    if not config.is_file():
        return False
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and isinstance(data.get("image"), dict) and isinstance(data.get("text"), dict)


class ClipFamilyBackbone(Backbone):
    family = "clip-family"

    def __init__(self, spec: str, device: str, compute_dtype: torch.dtype, image_size: int | None) -> None:
        from clip_family.model import ClipFamilyModel, OpenAITokenizer
        from foundations.errors import UserError

        self.name, self.device, self.compute_dtype = spec, device, compute_dtype
        weights = Path(spec) / "model.safetensors"
        if not weights.is_file():
            raise UsageError(f"--backbone {spec}: no model.safetensors (a directory written by save_pretrained)")
        self.weights_path, self.weights_sha256 = str(weights.resolve()), file_sha256(weights)
        try:
            model = ClipFamilyModel.from_pretrained(spec)
        except (UserError, OSError, ValueError) as exc:
            raise UsageError(f"--backbone {spec}: cannot load a CLIP-family model ({exc})") from exc
        self.model = model.to(device=device, dtype=compute_dtype).eval()
        cfg = model.config
        native = cfg.image.image_resolution
        if cfg.image.kind == "openai":
            from feature_extraction.openai_backbone import grid_module

            self.arch, self._grid_module, self.grid_dim = grid_module(model.visual)
            stride = cfg.image.patch_size if self.arch == "vit" else 32
        else:
            self.arch, self._grid_module = "vit", None
            vision = model.visual.encoder.config
            native, stride, self.grid_dim = vision.image_size, vision.patch_size, vision.hidden_size
        if image_size not in (None, native):
            raise UsageError(f"--image-size {image_size}: a CLIP-family directory is used at its native {native} px")
        self._set_size(native, None, stride)  # type: ignore[arg-type]
        self.fc_dim = cfg.embed_dim
        self.preprocess = model.processor
        if cfg.image.kind == "openai":  # clip's own transform: --decode gpu can reproduce it on the device
            self.tensor_preprocess = ClipTensorTransform(native)
        self.tokenize = model.tokenizer
        self.tokenization = (f"clip.tokenize(context_length={cfg.text.context_length}, truncate=True)"
                             if isinstance(model.tokenizer, OpenAITokenizer) else
                             f"{type(model.tokenizer.tokenizer).__name__}(padding=longest, truncation=True, "
                             f"max_length={cfg.text.context_length})")
        self.preprocessing = f"{RGB_CONVERSION}; {type(model.processor).__name__} of {spec} at {native} px"

    def encode_images(self, pixels: torch.Tensor, grid: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        pixels = pixels.to(self.device, self.compute_dtype)
        if self._grid_module is not None:
            from feature_extraction.openai_backbone import encode_with_grid

            tap = self.grid_tap(self._grid_module) if grid else None
            return encode_with_grid(self.model.image_features, pixels, tap, self.arch)
        if not grid:
            return self.model.image_features(pixels), None
        out = self.model.visual.encoder(pixel_values=pixels)
        return self.model.image_projection(out.pooler_output), out.last_hidden_state[:, 1:, :]  # (N, D), (N, T, C)

    def image_tower(self) -> torch.nn.Module:
        return self.model.visual

    def encode_texts(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model.text_features({k: v.to(self.device) for k, v in tokens.items()})  # (N, D)
