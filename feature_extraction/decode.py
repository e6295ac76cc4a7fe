"""Decode one image robustly, convert any PIL mode to RGB, and classify every failure (runs in DataLoader workers).

Conversion choices (recorded in the feature file's ``preprocessing`` attribute):

* EXIF orientation is applied first (``ImageOps.exif_transpose``), so phone photos are upright.
* Alpha (RGBA, LA, PA, palette with a ``transparency`` entry) is composited **on white**. PIL's plain
  ``convert("RGB")`` drops alpha and keeps whatever colour hides under transparent pixels (often black or noise);
  transparent images in the wild are mostly logos and product shots meant for a white page.
* 16-bit grey (``I;16*``) is scaled with ``round(v / 257)`` so 0..65535 maps onto 0..255 exactly (no clipping);
  32-bit ``I`` data within 0..65535 is treated the same way, anything else is min-max scaled; float ``F`` data in
  [0, 1] is multiplied by 255, otherwise min-max scaled.
* Everything else (L, 1, P, CMYK, YCbCr, ...) goes through ``Image.convert("RGB")``.
* Multi-frame files (GIF, TIFF) use their first frame.

Failures become :class:`~feature_extraction.inputs.Skip` categories: ``empty file``, ``unreadable``,
``not an image``, ``too many pixels`` (PIL's ``DecompressionBombWarning`` is turned into an error with
``Image.MAX_IMAGE_PIXELS = max_pixels``), ``truncated`` (``ImageFile.LOAD_TRUNCATED_IMAGES`` stays off),
``corrupt`` and ``unsupported mode``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from feature_extraction.inputs import Skip

RGB_CONVERSION = ("RGB: EXIF orientation applied, alpha composited on white, 16-bit grey scaled by 1/257, "
                  "first frame of multi-frame files")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")


class BadImage(Exception):
    """Raised inside :func:`load_rgb`; carries the skip category."""

    def __init__(self, category: str, detail: str) -> None:
        super().__init__(f"{category}: {detail}")
        self.category, self.detail = category, detail


def _scale_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    arr = arr.astype(np.float64)
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if mode in _SIXTEEN_BIT or (mode == "I" and lo >= 0 and hi <= 65535):
        return np.rint(arr / 257.0).astype(np.uint8)
    if mode == "F" and lo >= 0 and hi <= 1:
        return np.rint(arr * 255.0).astype(np.uint8)
    span = hi - lo
    return np.rint((arr - lo) / span * 255.0).astype(np.uint8) if span > 0 else np.zeros(arr.shape, np.uint8)


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB, with the choices documented in the module docstring."""
    mode = im.mode
    if mode == "RGB":
        return im
    try:
        if mode in _SIXTEEN_BIT or mode in ("I", "F"):
            return Image.fromarray(_scale_to_uint8(np.asarray(im), mode), mode="L").convert("RGB")
        if mode in _ALPHA or (mode in ("P", "L") and "transparency" in im.info):
            rgba = im.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return im.convert("RGB")
    except ValueError as exc:
        raise BadImage("unsupported mode", f"cannot convert mode {mode} to RGB ({exc})") from exc


def load_rgb(path: str, max_pixels: int) -> Image.Image:
    """Open, fully decode and convert ``path``; raise :class:`BadImage` with a category when that fails."""
    try:
        if os.stat(path).st_size == 0:
            raise BadImage("empty file", "0 bytes")
        fh = open(path, "rb")
    except OSError as exc:
        raise BadImage("unreadable", f"{type(exc).__name__}: {exc.strerror or exc}") from exc
    previous_limit, truncated_ok = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = max_pixels, False
    try:
        with fh, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                im = Image.open(fh)
            except UnidentifiedImageError as exc:
                raise BadImage("not an image", "no image format recognises this file") from exc
            width, height = im.size
            if width * height > max_pixels:
                raise BadImage("too many pixels", f"{width}x{height} > --max-pixels {max_pixels}")
            im.load()
            ImageOps.exif_transpose(im, in_place=True)
            return to_rgb(im)
    except BadImage:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise BadImage("too many pixels", f"{exc} (--max-pixels {max_pixels})") from exc
    except OSError as exc:
        category = "truncated" if "truncated" in str(exc) else "corrupt"
        raise BadImage(category, f"{type(exc).__name__}: {exc}") from exc
    except Exception as exc:  # any decoder failure (SyntaxError, ValueError, zlib.error, ...) skips this file only
        raise BadImage("corrupt", f"{type(exc).__name__}: {exc}") from exc
    finally:
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = previous_limit, truncated_ok


def load_and_preprocess(item_id: str, path: str, preprocess: Callable[[Image.Image], object],
                        max_pixels: int) -> object | Skip:
    """The model input for one image, or a :class:`Skip` saying why there is none."""
    try:
        image = load_rgb(path, max_pixels)
    except BadImage as bad:
        return Skip(item_id, bad.category, bad.detail, path)
    try:
        return preprocess(image)
    except Exception as exc:  # e.g. a degenerate size the transform cannot crop
        return Skip(item_id, "corrupt", f"preprocessing failed: {type(exc).__name__}: {exc}", path)
