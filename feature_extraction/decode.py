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
``not an image``, ``too many pixels`` (checked from the header), ``truncated``
(``ImageFile.LOAD_TRUNCATED_IMAGES`` stays off), ``corrupt`` and ``unsupported mode``. The decoder itself is
:func:`foundations.images.decode_image`, shared with the search CLI, the server and the CLIP-family readers.
"""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image

from feature_extraction.inputs import Skip
from foundations.images import BadImage, decode_image


def load_and_preprocess(item_id: str, path: str, preprocess: Callable[[Image.Image], object],
                        max_pixels: int) -> object | Skip:
    """The model input for one image, or a :class:`Skip` saying why there is none."""
    try:
        image = decode_image(path, max_pixels)
    except BadImage as bad:
        return Skip(item_id, bad.category, bad.detail, path)
    try:
        return preprocess(image)
    except Exception as exc:  # e.g. a degenerate size the transform cannot crop
        return Skip(item_id, "corrupt", f"preprocessing failed: {type(exc).__name__}: {exc}", path)
