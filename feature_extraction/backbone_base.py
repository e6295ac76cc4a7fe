"""The CLIP backbone interface (:class:`Backbone`: ``preprocess``, ``tokenize``, ``encode_images``,
``encode_texts``) and the pieces both families share: OpenAI's CLIP preprocessing, positional-embedding resizing and
weight hashing. The families live in :mod:`feature_extraction.openai_backbone` and
:mod:`feature_extraction.hf_backbone`; :func:`feature_extraction.backbones.load_backbone` picks one. This module
imports neither.

A non-native ``image_size`` interpolates the positional embeddings bicubically (ViT patch grid; ResNet
attention-pool grid), as timm's ``resample_abs_pos_embed`` and transformers' ``interpolate_pos_encoding`` do;
the native size leaves the model untouched.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torchvision import transforms as T

from foundations.errors import UsageError

logger = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_SHA_CACHE: dict[tuple[str, int, int, int], str] = {}


def file_sha256(path: str | Path, block: int = 1 << 24) -> str:
    """The sha256 of a file, remembered for the same (inode, size, mtime): a weights file checked before it is
    loaded is not hashed a second time by the backbone that loads it."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(block):
                digest.update(chunk)
        _SHA_CACHE[key] = digest.hexdigest()
    return _SHA_CACHE[key]


def resize_pos_embed(pos: torch.Tensor, new_side: int) -> torch.Tensor:
    """(1 + s*s, C) positional embedding -> (1 + new_side**2, C): bicubic over the square grid, CLS row kept."""
    side = round((pos.shape[0] - 1) ** 0.5)
    if side == new_side:
        return pos
    grid = pos[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2).float()  # (1, C, s, s)
    grid = F.interpolate(grid, size=(new_side, new_side), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(new_side * new_side, -1).to(pos.dtype)  # (new_side**2, C)
    return torch.cat([pos[:1], grid])


def clip_transform(size: int) -> T.Compose:
    """The OpenAI CLIP preprocessing at ``size`` px (the same ops as ``clip.load``'s transform on RGB input)."""
    return T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size), T.ToTensor(),
                      T.Normalize(CLIP_MEAN, CLIP_STD)])


class ClipTensorTransform:
    """:func:`clip_transform` for a decoded (3, H, W) uint8 tensor on any device (``--decode gpu``): the same
    output size and crop (torchvision computes both), bicubic with antialiasing kept in uint8 as PIL rounds. Not
    bit-identical to PIL's bicubic: at most one grey level per pixel apart (0.015 after normalising; measured on
    500x375 photos decoded on the CPU, where the decoders agree exactly)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as TF

        image = TF.resize(image, [self.size], interpolation=T.InterpolationMode.BICUBIC, antialias=True)  # uint8
        image = TF.center_crop(image, [self.size, self.size])  # (3, size, size)
        return TF.normalize(image.float().div_(255), CLIP_MEAN, CLIP_STD)


class GridTap:
    """Keeps the output of ``module`` in the last forward. Registered once per backbone, when a grid is first asked
    for (an fc-only run never registers it): a hook added and removed around every batch would make
    ``torch.compile`` recompile at every batch."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.output: torch.Tensor | None = None
        self.handle = module.register_forward_hook(self._keep)

    def _keep(self, module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self.output = output

    def take(self) -> torch.Tensor:
        out, self.output = self.output, None
        assert out is not None, "the grid module did not run"
        return out


class Backbone:
    """What the driver needs from a CLIP model; subclasses fill the metadata fields in ``__init__``."""

    name: str
    family: str  # "openai-clip" | "hf-clip"
    arch: str  # "vit" | "resnet"
    weights_path: str
    weights_sha256: str
    native_image_size: int
    image_size: int
    grid_hw: tuple[int, int]
    fc_dim: int
    grid_dim: int
    device: str
    compute_dtype: torch.dtype
    preprocess: Callable[[Any], torch.Tensor]
    tokenize: Callable[[list[str]], dict[str, torch.Tensor]]
    preprocessing: str
    tokenization: str
    tensor_preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None  # for --decode gpu; None: not offered

    def image_tower(self) -> torch.nn.Module | None:
        """The image tower module (channels_last, ``torch.compile``); ``None`` when the family has none to offer."""
        return None

    def grid_tap(self, module: torch.nn.Module) -> GridTap:
        """The :class:`GridTap` on ``module`` (the grid's source), registered at the first call."""
        tap = self.__dict__.get("_grid_tap")
        if tap is None:
            tap = self._grid_tap = GridTap(module)
        return tap

    def encode_images(self, pixels: torch.Tensor, grid: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def encode_texts(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def _set_size(self, native: int, requested: int | None, stride: int) -> int:
        size = requested or native
        if size % stride:
            raise UsageError(f"--image-size {size} must be a multiple of {stride} for {self.name}")
        self.native_image_size, self.image_size = native, size
        self.grid_hw = (size // stride, size // stride)
        return size // stride
