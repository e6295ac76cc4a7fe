"""Running a backbone at the speed of the hardware: compute precision, channels_last, ``torch.compile`` and the
batch size (``--precision``, ``--compile``, ``--batch-size auto``; docs/extraction.md "Speed").

* **Precision** (:func:`resolve_precision`) is the forward's arithmetic, distinct from the stored ``--dtype``.
  ``fp16`` is the model's own half-precision weights (OpenAI's ``clip.model.convert_weights``, what OpenAI CLIP runs
  at on a GPU; transformers / CLIP-family models cast whole), so it needs CUDA. ``bf16`` keeps fp32 weights and runs
  the forward under ``torch.autocast(dtype=bfloat16)`` (PyTorch's AMP recipe): matmuls and convolutions in bf16
  (oneDNN's AVX512-BF16/AMX kernels on a CPU), the residual stream, LayerNorms and softmax in fp32.
* **channels_last** for ResNet towers (:func:`prepare_tower`), as PyTorch's performance guide recommends for
  convolutions; measured +20 % (fp32) and +83 % (bf16) on an RN50-sized model on this 2-core CPU. On by default in
  bf16 / fp16 only (:func:`use_channels_last`): in fp32 it moves the numbers by ~5e-8, and the default output stays
  byte for byte what it was (``--channels-last`` opts in).
* **torch.compile** (:func:`compile_tower`) compiles the image tower in place (``nn.Module.compile``), so the grid
  tap registered on one of its submodules stays a traced hook; the warm-up compile is timed and reported.
* **Batch size** ``auto`` (:func:`auto_batch_size`): a rule, not a search, so that a resumed run batches the same.
"""

from __future__ import annotations

import contextlib
import logging
import time

import torch

from feature_extraction.backbone_base import Backbone
from feature_extraction.config import PRECISIONS
from foundations.errors import UsageError

logger = logging.getLogger(__name__)

CPU_AUTO_BATCH = 32  # a CPU forward is compute-bound from batch ~16 on: larger batches only add memory
CUDA_MAX_BATCH = 512  # a cap on host memory: one prefetched batch of 512 224-px images is 308 MB of pinned fp32
CUDA_MEMORY_SHARE = 0.4  # of the device's total memory, for activations (weights and the allocator keep the rest)
PROBE_BATCH = 8


def resolve_precision(precision: str | None, device: str) -> str:
    """``None`` -> ``fp16`` on CUDA (what OpenAI CLIP itself runs at), ``fp32`` elsewhere. ``fp16`` needs CUDA:
    a CPU has no fast fp16 kernels for these models; ``bf16`` is the CPU's reduced precision."""
    if precision is None:
        return "fp16" if device.startswith("cuda") else "fp32"
    if precision not in PRECISIONS:
        raise UsageError(f"--precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp16" and device == "cpu":
        raise UsageError("--precision fp16 needs CUDA; on a CPU use bf16 (AVX512-BF16/AMX kernels) or fp32")
    return precision


def weights_dtype(precision: str) -> torch.dtype:
    """The dtype the backbone is loaded in: fp16 weights for ``fp16``; fp32 otherwise (bf16 is autocast)."""
    return torch.float16 if precision == "fp16" else torch.float32


def autocast(device: str, precision: str) -> contextlib.AbstractContextManager:
    """The context the forward runs in: ``torch.autocast(bfloat16)`` for ``bf16``, nothing otherwise."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def use_channels_last(asked: bool | None, precision: str) -> bool:
    """Whether ResNet towers go channels_last: as asked, else in reduced precision only (fp32 stays bit-stable)."""
    return asked if asked is not None else precision != "fp32"


def prepare_tower(backbone: Backbone) -> bool:
    """channels_last for a ResNet image tower; returns whether the input pixels should be channels_last too."""
    tower = backbone.image_tower()
    if backbone.arch != "resnet" or tower is None:
        return False
    tower.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return True


def to_device(pixels: torch.Tensor, device: str, channels_last: bool) -> torch.Tensor:
    """(B, 3, H, W) pixels onto ``device`` (non-blocking from pinned memory on CUDA), channels_last if asked."""
    pixels = pixels.to(device, non_blocking=device.startswith("cuda"))
    return pixels.contiguous(memory_format=torch.channels_last) if channels_last else pixels


def compile_tower(backbone: Backbone, batch_size: int, grid: bool, precision: str, channels_last: bool) -> float:
    """``torch.compile`` the image tower in place and run one warm-up batch (the compile); returns its seconds.
    Batches are then padded to ``batch_size`` by the caller, so the graph compiles once."""
    tower = backbone.image_tower()
    if tower is None:
        raise UsageError(f"--compile: {backbone.name} exposes no image tower to compile")
    tower.compile()
    start = time.perf_counter()
    with torch.inference_mode(), autocast(backbone.device, precision):
        pixels = torch.zeros(batch_size, 3, backbone.image_size, backbone.image_size)  # (B, 3, H, W), as pad_batch's
        fc, _ = backbone.encode_images(to_device(pixels, backbone.device, channels_last), grid)
        fc.cpu()
    seconds = time.perf_counter() - start
    logger.info("torch.compile warm-up (batch %d): %.1f s", batch_size, seconds)
    return seconds


def pad_batch(pixels: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(n, 3, H, W) -> (batch_size, 3, H, W) with zero rows after the n real ones (a compiled graph keeps one
    shape; each row of these models is computed independently of the others). Under ``torch.inference_mode`` the
    result is always an inference tensor: the compiled graph guards on the tensor's kind as well, and a batch from a
    DataLoader worker is not one (its full batches are copied)."""
    n = pixels.shape[0]
    if n < batch_size:
        return torch.cat([pixels, pixels.new_zeros(batch_size - n, *pixels.shape[1:])])
    if batch_size and torch.is_inference_mode_enabled() and not pixels.is_inference():
        return pixels.clone()
    return pixels


def auto_batch_size(backbone: Backbone, modality: str, precision: str, grid: bool, channels_last: bool) -> int:
    """``--batch-size auto``. CPU: :data:`CPU_AUTO_BATCH` (measured: ViT-B/32 throughput is flat from 16 on).
    CUDA: the largest power of two <= :data:`CUDA_MAX_BATCH` whose activations, measured by one probe forward of
    :data:`PROBE_BATCH` images, fit in :data:`CUDA_MEMORY_SHARE` of the device's total memory (total, not free:
    the same GPU model gives the same batch, so a resumed run batches as before); texts: 256."""
    device = backbone.device
    if not device.startswith("cuda"):
        return CPU_AUTO_BATCH
    if modality != "image":
        return 256
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    pixels = torch.zeros(PROBE_BATCH, 3, backbone.image_size, backbone.image_size)
    with torch.inference_mode(), autocast(device, precision):
        backbone.encode_images(to_device(pixels, device, channels_last), grid)
    per_image = max(1, (torch.cuda.max_memory_allocated(device) - base) // PROBE_BATCH)
    budget = CUDA_MEMORY_SHARE * torch.cuda.get_device_properties(device).total_memory
    batch = 1
    while batch * 2 <= CUDA_MAX_BATCH and batch * 2 * per_image <= budget:
        batch *= 2
    logger.info("--batch-size auto: %d (%.1f MiB of activations per image, %.0f%% of %s's memory)", batch,
                per_image / 2**20, 100 * CUDA_MEMORY_SHARE, torch.cuda.get_device_name(device))
    return batch
