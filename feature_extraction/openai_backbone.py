"""OpenAI CLIP (``clip.load(name_or_path, jit=False)``, the ``clip`` package of openai/CLIP) behind the
:class:`~feature_extraction.backbone_base.Backbone` interface: names such as ``RN101`` / ``ViT-B/32`` or a local
OpenAI-format ``.pt``.  ``fc`` is exactly ``model.encode_image`` / ``encode_text``; the grid is captured by a forward
hook during that same forward pass: ResNet ``layer4`` output (N, C, h, w) -> (N, h*w, C) row-major, or the ViT
``transformer`` output (the last block, before ``ln_post``; LND in the clip code) -> (N, h*w, C) without the CLS
token.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from feature_extraction.backbone_base import (CLIP_MEAN, CLIP_STD, Backbone, clip_transform, file_sha256,
                                              resize_pos_embed)
from foundations.errors import UsageError
from foundations.images import RGB_CONVERSION

logger = logging.getLogger(__name__)


class OpenAITokenize:
    """Picklable ``clip.tokenize`` with truncation (long passages are cut at the context length)."""

    def __init__(self, context_length: int) -> None:
        self.context_length = context_length

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        import clip

        return {"text": clip.tokenize(texts, context_length=self.context_length, truncate=True)}


class OpenAIClip(Backbone):
    family = "openai-clip"

    def __init__(self, name: str, device: str, compute_dtype: torch.dtype, image_size: int | None) -> None:
        import clip

        self.name, self.device, self.compute_dtype = name, device, compute_dtype
        if name in clip.available_models():
            url = clip.clip._MODELS[name]  # the URL carries the sha256 that clip.load verifies
            self.weights_path = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url))
            self.weights_sha256 = url.split("/")[-2]
        elif Path(name).is_file():
            self.weights_path, self.weights_sha256 = str(Path(name).resolve()), file_sha256(name)
        else:
            raise UsageError(f"--backbone {name!r}: not an OpenAI CLIP name ({', '.join(clip.available_models())}),"
                             " not a local .pt file, and not hf:<dir or hub id>")
        # fp16 only on CUDA, through clip's own mixed-precision model; everything else computes in fp32.
        load_device = device if compute_dtype == torch.float16 else "cpu"
        try:
            with warnings.catch_warnings():  # clip.load first tries TorchScript; a state dict is the normal case
                warnings.filterwarnings("ignore", message=".*(not a JIT archive|torch.jit.load).*")
                model, _ = clip.load(name, device=load_device, jit=False)
        except Exception as exc:  # a corrupt or foreign checkpoint is a user error, not a crash
            raise UsageError(f"--backbone {name}: clip.load failed ({type(exc).__name__}: {exc})") from exc
        self.model = model.to(device).eval()
        visual = self.model.visual
        self.arch = "vit" if isinstance(visual, clip.model.VisionTransformer) else "resnet"
        stride = visual.conv1.kernel_size[0] if self.arch == "vit" else 32
        side = self._set_size(visual.input_resolution, image_size, stride)
        if self.arch == "vit":
            visual.positional_embedding = nn.Parameter(resize_pos_embed(visual.positional_embedding.data, side))
            visual.input_resolution = self.image_size
            self.grid_dim, self._grid_module = visual.conv1.out_channels, visual.transformer
        else:
            pool = visual.attnpool
            pool.positional_embedding = nn.Parameter(resize_pos_embed(pool.positional_embedding.data, side))
            self.grid_dim, self._grid_module = pool.k_proj.in_features, visual.layer4
        self.fc_dim = self.model.text_projection.shape[1]
        self.preprocess = clip_transform(self.image_size)
        self.tokenize = OpenAITokenize(self.model.context_length)
        self.tokenization = f"clip.tokenize(context_length={self.model.context_length}, truncate=True)"
        self.preprocessing = (f"{RGB_CONVERSION}; Resize(shortest side {self.image_size}, bicubic) -> "
                              f"CenterCrop({self.image_size}) -> ToTensor -> Normalize(mean={CLIP_MEAN}, "
                              f"std={CLIP_STD}) (OpenAI clip transform)")

    def encode_images(self, pixels: torch.Tensor, grid: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        captured: list[torch.Tensor] = []
        hook = self._grid_module.register_forward_hook(lambda m, i, o: captured.append(o)) if grid else None
        try:
            fc = self.model.encode_image(pixels)  # (N, D)
        finally:
            if hook is not None:
                hook.remove()
        if not grid:
            return fc, None
        out = captured[0]
        if self.arch == "vit":
            return fc, out.permute(1, 0, 2)[:, 1:, :]  # LND -> (N, h*w, C), CLS dropped
        return fc, out.flatten(2).transpose(1, 2)  # (N, C, h, w) -> (N, h*w, C) row-major

    def encode_texts(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model.encode_text(tokens["text"].to(self.device))  # (N, D)
