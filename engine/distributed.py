"""Process-group setup and the few collectives a training loop needs (torchrun DDP; a no-op for one process).

``torchrun --nproc_per_node N ...`` sets ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``; :func:`setup` then joins the
group (NCCL when the device is CUDA, gloo on the CPU) and picks ``cuda:LOCAL_RANK``
(:func:`foundations.device.resolve_device`). Without those variables everything runs in one process and the
collectives return their input. Moved here from ``retrieval/training/distributed.py`` (nanoGPT's ``ddp`` block in
spirit).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from foundations.device import resolve_device

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device_spec: str = "auto") -> DistEnv:
    """Join the torchrun process group if there is one; returns this process's rank, world and device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(resolve_device(device_spec))
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
        logger.info("rank %d/%d joined the %s group on %s", rank, world, backend, device)
    return DistEnv(rank, world, local_rank, device)


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def gather_objects(obj: T, env: DistEnv) -> list[T]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` in one process)."""
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: T, env: DistEnv) -> T:
    """Rank 0's ``obj`` on every rank."""
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean_over_ranks(values: dict[str, float], env: DistEnv) -> dict[str, float]:
    """Each number's mean over ranks (for logging; one all-reduce)."""
    if not env.distributed:
        return values
    keys = sorted(values)
    packed = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=env.device)
    dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    return dict(zip(keys, (packed / env.world_size).tolist()))
