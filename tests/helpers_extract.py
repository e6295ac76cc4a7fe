"""Helpers shared by the extraction tests (``test_extract_*``, ``test_merge*``, ``test_legacy*``)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from feature_extraction.config import ExtractConfig
from feature_extraction.extract import ExtractSummary, extract
from feature_extraction.store import H5FeatureStore
from feature_extraction.tiny import photo

REPO = Path(__file__).resolve().parents[1]


def extract_with(out: Path, backbone: str | Path, **overrides: Any) -> ExtractSummary:
    """One in-process run with test defaults: float32, 0 workers, 1 thread, batch 4, no progress bar."""
    settings: dict[str, Any] = dict(out=Path(out), backbone=str(backbone), batch_size=4, num_workers=0, threads=1,
                                    dtype="float32", progress=False, device="cpu")
    settings.update(overrides)
    return extract(ExtractConfig(**settings))


def read_all(path: Path) -> tuple[list[str], np.ndarray, np.ndarray | None, dict[str, Any]]:
    with H5FeatureStore(path) as store:
        grid = store._file["grid"][:] if store.has_grid else None
        return list(store.ids), store._file["fc"][:], grid, dict(store.attrs)


def assert_same_content(a: Path, b: Path) -> None:
    ids_a, fc_a, grid_a, attrs_a = read_all(a)
    ids_b, fc_b, grid_b, attrs_b = read_all(b)
    assert ids_a == ids_b
    assert np.array_equal(fc_a, fc_b)
    assert (grid_a is None and grid_b is None) or np.array_equal(grid_a, grid_b)
    assert attrs_a == attrs_b


def _encoded(image: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def make_bad_files(folder: Path, max_pixels: int) -> dict[str, str]:
    """Write one file per kind of bad input; returns {id: expected skip category}."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(photo(0)).resize((120, 90))
    jpeg, png = _encoded(rgb, "JPEG", quality=90), _encoded(rgb, "PNG")
    corrupt_png = bytearray(png)
    corrupt_png[len(png) // 2: len(png) // 2 + 64] = bytes(64)
    files = {
        "zero_bytes.jpg": (b"", "empty file"),
        "text_named_jpg.jpg": (b"this is not a picture\n" * 20, "not an image"),
        "html_named_png.png": (b"<html><body>404 not found</body></html>", "not an image"),
        "gif_header_only.gif": (b"GIF89a", "not an image"),
        "truncated_jpg.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "truncated_png.png": (png[: len(png) // 2], "truncated"),
        "corrupt_idat.png": (bytes(corrupt_png), "corrupt"),
        "huge.png": (_encoded(Image.new("RGB", (400, 400), (10, 20, 30)), "PNG"), "too many pixels"),
    }
    assert 400 * 400 > max_pixels
    expected = {}
    for name, (data, category) in files.items():
        (folder / name).write_bytes(data)
        expected[Path(name).stem] = category
    os.symlink(folder / "does_not_exist.jpg", folder / "broken_link.jpg")  # unreadable even for root
    expected["broken_link"] = "unreadable"
    return expected


def make_convertible_files(folder: Path) -> dict[str, Image.Image]:
    """One file per PIL mode that must be converted; returns {id: the RGB image we expect the model to see}."""
    folder.mkdir(parents=True, exist_ok=True)
    base = Image.fromarray(photo(1)).resize((64, 48))
    grey = base.convert("L")
    alpha = Image.linear_gradient("L").resize(base.size)  # 0..255 across rows
    rgba = base.copy()
    rgba.putalpha(alpha)
    white = Image.new("RGB", base.size, (255, 255, 255))
    on_white = Image.composite(base, white, alpha)  # reference compositing, independent of the code under test
    palette = base.convert("P", palette=Image.ADAPTIVE, colors=32)
    made = {
        "grey_L.png": (grey, grey.convert("RGB")),
        "rgba.png": (rgba, on_white),
        "cmyk.jpg": (base.convert("CMYK"), base.convert("CMYK").convert("RGB")),
        "palette.png": (palette, palette.convert("RGB")),
        "sixteen_bit.png": (Image.fromarray(np.asarray(grey).astype(np.uint16) * 257), grey.convert("RGB")),
        "float_F.tif": (Image.fromarray(np.asarray(grey).astype(np.float32) / 255.0), grey.convert("RGB")),
        "png_data_named.jpg": (base, base),
    }
    expected = {}
    for name, (image, want) in made.items():
        fmt = {"png": "PNG", "jpg": "JPEG", "tif": "TIFF"}[name.rsplit(".", 1)[1]]
        if name == "png_data_named.jpg":
            fmt = "PNG"
        image.save(folder / name, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
        expected[name.rsplit(".", 1)[0]] = want
    # CMYK JPEG is lossy: compare against what PIL decodes from the saved file, converted.
    expected["cmyk"] = Image.open(folder / "cmyk.jpg").convert("RGB")
    return expected
