"""Every image input ``encode_image`` accepts, turned into one (N, 3, R, R) batch of preprocessed pixels.

Accepted: a path (str / Path), a list of paths, a folder (its images in sorted order, any image suffix), a
``PIL.Image``, a list of them (paths and images may mix), an ``np.ndarray`` HWC or NHWC uint8, and a
``torch.Tensor`` CHW or NCHW that is already preprocessed (passed through). Files go through the toolkit's one
decoder (:func:`foundations.images.decode_image`); a bad item is a one-line :class:`UserError` naming it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from foundations.errors import UserError
from foundations.images import BadImage, decode_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
ImageInput = str | Path | Image.Image | np.ndarray | Tensor | Sequence[Any]


def folder_images(folder: Path) -> list[Path]:
    """The image files under ``folder`` (recursively), sorted by their path relative to it."""
    return sorted((p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                  key=lambda p: p.relative_to(folder).as_posix())


def _one(item: Any, where: str) -> Image.Image:
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    if isinstance(item, (str, Path)):
        try:
            return decode_image(item)
        except BadImage as exc:
            raise UserError(f"{where} {item}: {exc}") from None
    if isinstance(item, np.ndarray):
        if item.ndim != 3 or item.shape[-1] not in (1, 3, 4) or item.dtype != np.uint8:
            raise UserError(f"{where}: expected an HWC uint8 array, got shape {item.shape} dtype {item.dtype}")
        return Image.fromarray(item[..., 0] if item.shape[-1] == 1 else item).convert("RGB")
    raise UserError(f"{where}: cannot read an image from a {type(item).__name__}")


def to_pixels(images: ImageInput, preprocess: Callable[[Image.Image], Tensor]) -> Tensor:
    """(N, 3, R, R) pixels of ``images``; a tensor is taken as already preprocessed."""
    if isinstance(images, Tensor):
        if images.ndim == 3:
            return images.unsqueeze(0)
        if images.ndim == 4:
            return images
        raise UserError(f"encode_image: expected a CHW or NCHW tensor, got shape {tuple(images.shape)}")
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    if isinstance(images, (str, Path)) and Path(images).is_dir():
        images = folder_images(Path(images))
        if not images:
            raise UserError(f"encode_image: no image files in folder {images}")
    if isinstance(images, (str, Path, Image.Image, np.ndarray)):
        images = [images]
    if not isinstance(images, Sequence):
        raise UserError(f"encode_image: cannot read images from a {type(images).__name__}")
    if not images:
        return torch.zeros(0)
    return torch.stack([preprocess(_one(item, f"encode_image item {i}")) for i, item in enumerate(images)])
