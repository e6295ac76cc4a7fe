"""Query images from a path (CLI) or from uploaded bytes (server), decoded by the toolkit's one decoder.

Both go through :func:`foundations.images.decode_image`, exactly as ``clip_prepro_feats.py`` reads a file: the pixel
limit is checked from the header, EXIF orientation applied, any mode converted to RGB, truncated data is an error.
It changes no process-wide PIL setting, so concurrent requests in a thread pool are safe.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from foundations.images import QUERY_MAX_PIXELS as DEFAULT_MAX_PIXELS
from foundations.images import BadImage, decode_image

ImageError = BadImage  # a query image that cannot be used; ``category`` is one of the decoder's categories


def image_from_path(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """An RGB image from a file; the error names the file."""
    if not Path(path).is_file():
        raise BadImage("unreadable", f"{path}: no such file")
    try:
        return decode_image(path, max_pixels)
    except BadImage as bad:
        raise BadImage(bad.category, f"{path}: {bad.detail}") from None


def image_from_bytes(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int | None = None) -> Image.Image:
    """An RGB image from uploaded bytes, decoded reduced to a shorter side ≥ ``min_side`` when given (the server);
    raises :class:`BadImage`."""
    return decode_image(data, max_pixels, min_side)
