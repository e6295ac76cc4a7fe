"""One image decoder for the whole toolkit: a file path or uploaded bytes -> an 8-bit RGB ``PIL.Image``.

The same rules everywhere (extraction, the search CLI, the server, CLIP-family data readers): the pixel limit is
checked from the header before any pixel is decoded; EXIF orientation is applied; alpha is composited on white;
16-bit grey is scaled by 1/257; the first frame of a multi-frame file is used; truncated data stays an error
(``ImageFile.LOAD_TRUNCATED_IMAGES`` is never switched on). No process-wide PIL setting is changed, so threads
may decode concurrently. Every failure is a :class:`BadImage` with a short category (used for skip accounting).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from foundations.errors import UserError

RGB_CONVERSION = ("RGB: EXIF orientation applied, alpha composited on white, 16-bit grey scaled by 1/257, "
                  "first frame of multi-frame files")
DEFAULT_MAX_PIXELS = 89_478_485  # PIL's own default Image.MAX_IMAGE_PIXELS (~ 0.25 GB of 24-bit pixels)
QUERY_MAX_PIXELS = 40_000_000  # one query image (search CLI, server): a tighter default than batch extraction
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")
CATEGORIES = ("unreadable", "empty file", "not an image", "too many pixels", "truncated", "corrupt",
              "unsupported mode")


class BadImage(UserError):
    """An image that cannot be used; ``category`` is one of :data:`CATEGORIES`, ``detail`` says why."""

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
    """Any PIL mode -> 8-bit RGB, with the choices of :data:`RGB_CONVERSION`."""
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


def _open(source: str | Path | bytes) -> tuple[Image.Image, io.IOBase]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        if not len(source):
            raise BadImage("empty file", "0 bytes")
        fh: io.IOBase = io.BytesIO(bytes(source))
    else:
        try:
            if os.stat(source).st_size == 0:
                raise BadImage("empty file", "0 bytes")
            fh = open(source, "rb")
        except OSError as exc:
            raise BadImage("unreadable", f"{type(exc).__name__}: {exc.strerror or exc}") from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we check the limit ourselves
            return Image.open(fh), fh
    except UnidentifiedImageError:
        fh.close()
        raise BadImage("not an image", "no image format recognises this file") from None
    except Image.DecompressionBombError as exc:
        fh.close()
        raise BadImage("too many pixels", str(exc)) from None
    except Exception as exc:  # a header that parses half-way
        fh.close()
        raise BadImage("corrupt", f"{type(exc).__name__}: {exc}") from None


def reduce_to(im: Image.Image, min_side: int) -> Image.Image:
    """``im`` shrunk by the largest integer factor that keeps its shorter side ≥ ``min_side`` (``Image.reduce``, a box
    filter, as ``Image.thumbnail``'s ``reducing_gap`` does), in a mode that averages correctly and before any RGB
    copy is made: a huge 1-bit or palette scan then never exists as a full-size RGB image."""
    factor = min(im.size) // min_side
    if factor < 2:
        return im
    if im.mode == "1":
        im = im.convert("L")
    elif im.mode in _SIXTEEN_BIT:
        im = im.convert("I")  # to_rgb scales I like I;16 (1/257)
    elif im.mode in ("P", "PA"):  # palette indices must not be averaged
        im = im.convert("RGBA" if im.mode == "PA" or "transparency" in im.info else "RGB")
    try:
        return im.reduce(factor)
    except ValueError:  # a rare mode reduce does not take: convert first (full size, once)
        return to_rgb(im).reduce(factor)


def decode_image(source: str | Path | bytes, max_pixels: int = DEFAULT_MAX_PIXELS,
                 min_side: int | None = None) -> Image.Image:
    """Open, fully decode and convert a file path or bytes; raise :class:`BadImage` with a category on failure.

    Images of more than ``max_pixels`` are refused from their header (no pixel decoded). PIL's own bomb guard
    (twice ``Image.MAX_IMAGE_PIXELS``) still applies above that. With ``min_side`` (the server), a larger image is
    decoded smaller: a JPEG by its decoder's DCT scaling (``draft``), any image then by :func:`reduce_to` before the
    RGB conversion; the shorter side stays ≥ ``min_side``. Without it (extraction, the search CLI) every pixel is kept.
    """
    im, fh = _open(source)
    try:
        with fh:
            width, height = im.size
            if width * height > max_pixels:
                raise BadImage("too many pixels", f"{width}x{height} is more than {max_pixels} pixels")
            if min_side and min(width, height) >= 2 * min_side and im.format == "JPEG":
                scale = min_side / min(width, height)
                im.draft(im.mode, (max(1, int(width * scale)), max(1, int(height * scale))))  # result ≥ that size
            im.load()
            im = ImageOps.exif_transpose(im)
            if min_side:
                im = reduce_to(im, min_side)
            return to_rgb(im)
    except BadImage:
        raise
    except OSError as exc:
        category = "truncated" if "truncated" in str(exc) else "corrupt"
        raise BadImage(category, f"{type(exc).__name__}: {exc}") from None
    except Exception as exc:  # any decoder failure (SyntaxError, ValueError, zlib.error, ...) is this file's only
        raise BadImage("corrupt", f"{type(exc).__name__}: {exc}") from None
