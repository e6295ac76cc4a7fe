"""transformers CLIP (``--backbone hf:<dir or hub id>``) behind the :class:`~feature_extraction.backbone_base.Backbone`
interface.

Follows transformers' ``CLIPModel``: in transformers 5, ``get_image_features`` returns a
``BaseModelOutputWithPooling`` whose ``pooler_output`` is the projected image embedding and whose
``last_hidden_state`` is the vision encoder output (before ``post_layernorm``) - one forward gives ``fc`` and the
grid.  Pixels come from the checkpoint's own ``CLIPImageProcessor`` (its size/crop overridden by
``--image-size``, with ``interpolate_pos_encoding=True``), texts from its own tokenizer.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from feature_extraction.backbone_base import Backbone, file_sha256
from foundations.errors import UsageError
from foundations.images import RGB_CONVERSION

logger = logging.getLogger(__name__)

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class HFPreprocess:
    """Picklable wrapper: one PIL image -> (3, H, W) pixel tensor from the checkpoint's image processor."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, image: Any) -> torch.Tensor:
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]


class HFTokenize:
    """Picklable tokenizer call: pad to the longest text of the batch, truncate at the position limit."""

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def _weights_file(source: str) -> Path:
    from transformers.utils import cached_file

    for name in _WEIGHT_FILES:
        local = Path(source, name)
        if local.is_file():
            return local
        try:
            found = cached_file(source, name, _raise_exceptions_for_missing_entries=False)
        except OSError:
            found = None
        if found:
            return Path(found)
    raise UsageError(f"--backbone hf:{source}: no {' or '.join(_WEIGHT_FILES)} found (a directory written by "
                     "save_pretrained, or a hub id already in the local cache)")


class HFClip(Backbone):
    family = "hf-clip"
    arch = "vit"

    def __init__(self, spec: str, device: str, compute_dtype: torch.dtype, image_size: int | None) -> None:
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        source = spec[len("hf:"):]
        self.name, self.device, self.compute_dtype = spec, device, compute_dtype
        weights = _weights_file(source)
        self.weights_path, self.weights_sha256 = str(weights.resolve()), file_sha256(weights)
        try:
            model = CLIPModel.from_pretrained(source, dtype=compute_dtype)
            processor = CLIPImageProcessor.from_pretrained(source)
            tokenizer = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError) as exc:
            raise UsageError(f"--backbone {spec}: cannot load a transformers CLIP model ({exc})") from exc
        self.model = model.to(device).eval()
        vision = model.config.vision_config
        self._set_size(vision.image_size, image_size, vision.patch_size)
        self._interpolate = self.image_size != self.native_image_size
        if self._interpolate:
            processor.size = {"shortest_edge": self.image_size}
            processor.crop_size = {"height": self.image_size, "width": self.image_size}
        self.grid_dim, self.fc_dim = vision.hidden_size, model.config.projection_dim
        self.preprocess = HFPreprocess(processor)
        max_length = model.config.text_config.max_position_embeddings
        self.tokenize = HFTokenize(tokenizer, max_length)
        self.tokenization = f"{type(tokenizer).__name__}(padding=longest, truncation=True, max_length={max_length})"
        saved = json.loads(processor.to_json_string())  # what save_pretrained would write
        settings = {k: saved.get(k) for k in ("size", "crop_size", "resample", "do_center_crop", "rescale_factor",
                                              "image_mean", "image_std")}
        self.preprocessing = f"{RGB_CONVERSION}; CLIPImageProcessor {json.dumps(settings, sort_keys=True)}"

    def encode_images(self, pixels: torch.Tensor, grid: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.model.get_image_features(pixel_values=pixels.to(self.compute_dtype),
                                            interpolate_pos_encoding=self._interpolate)
        return out.pooler_output, (out.last_hidden_state[:, 1:, :] if grid else None)  # (N, D), (N, h*w, C)

    def image_tower(self) -> torch.nn.Module:
        return self.model.vision_model

    def encode_texts(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        tokens = {k: v.to(self.device) for k, v in tokens.items()}
        return self.model.get_text_features(**tokens).pooler_output  # (N, D)
