"""``--decode gpu``: JPEGs decoded and preprocessed on the compute device, a batch at a time.

DataLoader workers only read each file and its header (:func:`read_for_device`); the main process hands the
batch's JPEG bytes to nvJPEG in one call (``torchvision.io.decode_jpeg(list, device="cuda")``, the batched form
torchvision recommends on CUDA) and applies CLIP's resize / crop / normalise on the device
(:class:`~feature_extraction.backbone_base.ClipTensorTransform`: within one grey level of PIL's bicubic). A file
the device path would not treat as the CPU path (:mod:`feature_extraction.decode`) does takes the CPU path, alone,
with the reason logged and counted in the summary:

* ``not a JPEG``: PNG, GIF, WebP, ... whatever the suffix;
* ``CMYK JPEG`` (any mode but RGB / grey): PIL converts those;
* ``EXIF orientation``: torchvision applies EXIF orientation on the CPU only, and the CPU path rotates;
* ``no end marker``: PIL refuses a truncated JPEG (skipped as ``truncated``), a JPEG decoder may return its top;
* ``device decode failed``: the device decoder raised for the file (its batched call fails whole, so a failed
  batch is retried file by file first).

Unreadable, empty and oversized (``--max-pixels``, from the header) files take the CPU path as well, which skips
them with its own category, exactly as without ``--decode gpu``.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from feature_extraction.decode import load_and_preprocess
from feature_extraction.inputs import Skip

logger = logging.getLogger(__name__)

JPEG_START, JPEG_END = b"\xff\xd8\xff", b"\xff\xd9"
EXIF_ORIENTATION = 0x0112
DEVICE_MODES = ("RGB", "L")  # what nvJPEG decodes to RGB exactly as PIL's convert("RGB") does


@dataclass
class JpegFile:
    """A file for the device decoder: its path and its bytes, (n,) uint8."""

    path: str
    data: torch.Tensor


@dataclass
class OnCpu:
    """Pixels from the CPU path, (3, H, W), and why the device path did not take the file."""

    pixels: torch.Tensor
    reason: str
    detail: str


def device_reason(data: bytes, max_pixels: int) -> tuple[str, str] | None:
    """``None`` when the device decoder can take these bytes as the CPU path would; else (reason, detail)."""
    if not data.startswith(JPEG_START):
        return "not a JPEG", f"starts with {data[:4]!r}"
    if not data.rstrip(b"\0").endswith(JPEG_END):
        return "no end marker", "truncated or trailing data"
    try:
        with Image.open(io.BytesIO(data)) as image:  # the header only
            mode, (width, height) = image.mode, image.size
            orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception as exc:  # the CPU path classifies it (corrupt, truncated, ...)
        return "unreadable header", f"{type(exc).__name__}: {exc}"
    if width * height > max_pixels:
        return "too many pixels", f"{width}x{height}"
    if mode not in DEVICE_MODES:
        return f"{mode} JPEG", f"mode {mode}"
    if orientation != 1:
        return "EXIF orientation", f"orientation {orientation}"
    return None


def cpu_path(item_id: str, path: str, preprocess: Callable[[Any], torch.Tensor], max_pixels: int, reason: str,
             detail: str) -> OnCpu | Skip:
    out = load_and_preprocess(item_id, path, preprocess, max_pixels)
    return out if isinstance(out, Skip) else OnCpu(out, reason, detail)  # type: ignore[arg-type]


def read_for_device(item_id: str, path: str, preprocess: Callable[[Any], torch.Tensor],
                    max_pixels: int) -> JpegFile | OnCpu | Skip:
    """In a DataLoader worker: the file's bytes for the device, or the CPU path's result (pixels or a skip)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        return cpu_path(item_id, path, preprocess, max_pixels, "unreadable", str(exc))  # -> its Skip
    reason = device_reason(data, max_pixels) if data else ("empty file", "0 bytes")
    if reason is None:
        return JpegFile(path, torch.frombuffer(bytearray(data), dtype=torch.uint8))
    return cpu_path(item_id, path, preprocess, max_pixels, *reason)


def decode_jpegs(data: list[torch.Tensor], device: str) -> list[torch.Tensor]:
    """torchvision's batched JPEG decoder (nvJPEG on CUDA) -> (3, H, W) uint8 RGB tensors on ``device``."""
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders in favour of torchcodec
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


@dataclass
class DeviceBatch:
    """A batch after device decoding: the ids kept, their pixels (B, 3, S, S) on the device, new skips (files that
    failed on the device and on the CPU) and the CPU fallbacks as (id, reason, detail)."""

    ids: list[str]
    pixels: torch.Tensor | None
    skipped: list[Skip]
    on_cpu: list[tuple[str, str, str]]


class DeviceDecoder:
    """Decodes one batch of :func:`read_for_device` results on ``device``. ``decode`` (default
    :func:`decode_jpegs`, looked up at call time) is injectable for tests."""

    def __init__(self, device: str, transform: Callable[[torch.Tensor], torch.Tensor],
                 preprocess: Callable[[Any], torch.Tensor], max_pixels: int,
                 decode: Callable[[list[torch.Tensor], str], list[torch.Tensor]] | None = None) -> None:
        self.device, self.transform, self.preprocess, self.max_pixels = device, transform, preprocess, max_pixels
        self.decode = decode

    def _decode_all(self, files: list[JpegFile]) -> list[torch.Tensor | Exception]:
        decode = self.decode or decode_jpegs
        if not files:
            return []
        try:
            return list(decode([f.data for f in files], self.device))
        except Exception:  # one bad file fails the whole call: find it
            out: list[torch.Tensor | Exception] = []
            for f in files:
                try:
                    out.append(decode([f.data], self.device)[0])
                except Exception as exc:
                    out.append(exc)
            return out

    def __call__(self, ids: Sequence[str], items: Sequence[JpegFile | OnCpu]) -> DeviceBatch:
        decoded = iter(self._decode_all([x for x in items if isinstance(x, JpegFile)]))
        batch = DeviceBatch([], None, [], [])
        rows = []
        for item_id, item in zip(ids, items):
            if isinstance(item, JpegFile):
                image = next(decoded)
                if isinstance(image, Exception):
                    item = cpu_path(item_id, item.path, self.preprocess, self.max_pixels, "device decode failed",
                                    f"{type(image).__name__}: {' '.join(str(image).split())[:200]}")
                    if isinstance(item, Skip):
                        batch.skipped.append(item)
                        continue
                else:
                    rows.append(self.transform(image))  # (3, S, S) on the device
            if isinstance(item, OnCpu):
                rows.append(item.pixels.to(self.device, non_blocking=True))
                batch.on_cpu.append((item_id, item.reason, item.detail))
            batch.ids.append(item_id)
        batch.pixels = torch.stack(rows) if rows else None  # (B, 3, S, S)
        return batch
