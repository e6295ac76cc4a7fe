"""Query images from a path (CLI) or from uploaded bytes (server), decoded with the extraction pipeline's rules.

A file goes through :func:`feature_extraction.decode.load_rgb`, exactly as ``clip_prepro_feats.py`` reads it.
Uploaded bytes follow the same conversion (EXIF orientation, :func:`feature_extraction.decode.to_rgb`) and the same
failure categories, but without touching PIL's process-wide settings, so concurrent requests in a thread pool are
safe: the pixel limit is checked from the header before any pixel is decoded, truncated data stays an error
(``ImageFile.LOAD_TRUNCATED_IMAGES`` is never switched on).
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from feature_extraction.decode import BadImage, load_rgb, to_rgb

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 40_000_000


class ImageError(ValueError):
    """A query image that cannot be used; ``category`` is one of decode's skip categories."""

    def __init__(self, category: str, detail: str) -> None:
        super().__init__(f"{category}: {detail}")
        self.category, self.detail = category, detail


def image_from_path(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """An RGB image from a file, as the extraction script decodes it (CLI: single-threaded)."""
    if not Path(path).is_file():
        raise ImageError("unreadable", f"{path}: no such file")
    try:
        return load_rgb(str(path), max_pixels)
    except BadImage as bad:
        raise ImageError(bad.category, f"{path}: {bad.detail}") from None


def image_from_bytes(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """An RGB image from uploaded bytes; raises :class:`ImageError` (thread-safe: no global PIL state)."""
    if not data:
        raise ImageError("empty file", "0 bytes")
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError("not an image", "no image format recognises these bytes") from None
    except Image.DecompressionBombError as exc:
        raise ImageError("too many pixels", str(exc)) from None
    except Exception as exc:  # a header that parses half-way
        raise ImageError("corrupt", f"{type(exc).__name__}: {exc}") from None
    width, height = im.size
    if width * height > max_pixels:
        raise ImageError("too many pixels", f"{width}x{height} is more than {max_pixels} pixels")
    try:
        im.load()
        im = ImageOps.exif_transpose(im)
        return to_rgb(im)
    except BadImage as bad:
        raise ImageError(bad.category, bad.detail) from None
    except OSError as exc:
        category = "truncated" if "truncated" in str(exc) else "corrupt"
        raise ImageError(category, f"{type(exc).__name__}: {exc}") from None
    except Exception as exc:  # any decoder failure (SyntaxError, ValueError, zlib.error, ...)
        raise ImageError("corrupt", f"{type(exc).__name__}: {exc}") from None
