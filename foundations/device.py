"""Device choice shared by every job: ``auto`` -> ``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``."""

from __future__ import annotations

import os
from collections.abc import Mapping

from foundations.errors import UsageError


def resolve_device(device: str, env: Mapping[str, str] = os.environ) -> str:
    """``auto`` -> ``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``; a bare ``cuda`` also takes
    ``LOCAL_RANK`` so that each torchrun process uses its own GPU. ``cuda`` without CUDA is a usage error."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        device = f"cuda:{int(env.get('LOCAL_RANK', 0))}"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available on this machine")
    if not (device == "cpu" or device.startswith("cuda") or device == "mps"):
        raise UsageError(f"--device {device}: expected auto, cpu, cuda or cuda:N")
    return device
