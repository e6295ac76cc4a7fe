"""Typed configuration of one extraction run, validated on construction, and the user-error type.

Follows the litgpt habit (``Config`` dataclass validated in ``__post_init__``); the CLI in
``clip_prepro_feats.py`` only maps flags onto :class:`ExtractConfig`.  Sharding follows torchrun's environment
contract (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) when no explicit ``--num-shards/--shard-id`` is given.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from foundations.device import resolve_device  # noqa: F401  (re-exported for the extraction room)
from foundations.errors import UsageError
from foundations.images import DEFAULT_MAX_PIXELS

DTYPES = ("float16", "float32")
PRECISIONS = ("fp32", "bf16", "fp16")  # the forward's arithmetic (feature_extraction.speed); DTYPES is storage
DECODERS = ("cpu", "gpu")


@dataclass(frozen=True)
class ShardSpec:
    """This process writes contiguous block ``shard_id`` of ``num_shards`` (0-based)."""

    num_shards: int = 1
    shard_id: int = 0

    def __post_init__(self) -> None:
        if self.num_shards < 1 or not 0 <= self.shard_id < self.num_shards:
            raise UsageError(f"shard id must be in [0, num_shards); got shard {self.shard_id} of {self.num_shards}")

    def output_path(self, out: Path) -> Path:
        """``feats.h5`` -> ``feats-00001-of-00004.h5`` for shard 1 of 4 (0-based ids); unchanged when unsharded."""
        if self.num_shards == 1:
            return out
        return out.with_name(f"{out.stem}-{self.shard_id:05d}-of-{self.num_shards:05d}{out.suffix}")


def resolve_shard(num_shards: int | None, shard_id: int | None, env: Mapping[str, str] = os.environ) -> ShardSpec:
    """Explicit flags win; otherwise torchrun's ``RANK``/``WORLD_SIZE``; otherwise one shard."""
    if (num_shards is None) != (shard_id is None):
        raise UsageError("--num-shards and --shard-id go together (or neither, to use torchrun's RANK/WORLD_SIZE)")
    if num_shards is not None and shard_id is not None:
        return ShardSpec(num_shards, shard_id)
    if "WORLD_SIZE" in env and "RANK" in env:
        return ShardSpec(int(env["WORLD_SIZE"]), int(env["RANK"]))
    return ShardSpec()


@dataclass(frozen=True)
class ExtractConfig:
    """Everything one run needs. Exactly one of ``images``, ``image_list``, ``texts`` is set."""

    out: Path
    backbone: str
    images: Path | None = None
    image_list: Path | None = None
    texts: Path | None = None
    batch_size: int | str = 64  # or "auto" (feature_extraction.speed.auto_batch_size), resolved by extract()
    num_workers: int | None = None  # DataLoader decoding workers; default: see decode_workers()
    threads: int | None = None  # torch CPU threads; default: the CPUs left over by the DataLoader workers
    device: str = "auto"
    dtype: str = "float16"
    precision: str | None = None  # fp32 | bf16 | fp16; None: fp16 on CUDA, fp32 elsewhere (speed.resolve_precision)
    decode: str = "cpu"  # "gpu": JPEGs decoded + preprocessed on the compute device (device_decode)
    compile: bool = False  # torch.compile the image tower (warm-up reported)
    channels_last: bool | None = None  # ResNet towers; None: on in bf16 / fp16, off in fp32 (speed.use_channels_last)
    image_size: int | None = None
    grid: bool = True
    shard: ShardSpec = ShardSpec()
    max_pixels: int = DEFAULT_MAX_PIXELS
    chunk_size: int = 1024  # items per committed spool chunk, rounded up to whole batches
    retry_skipped: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        given = [p for p in (self.images, self.image_list, self.texts) if p is not None]
        if len(given) != 1:
            raise UsageError("give exactly one input: --images DIR, --image-list FILE or --texts FILE.jsonl")
        if self.images is not None and not Path(self.images).is_dir():
            raise UsageError(f"--images {self.images}: no such directory")
        for flag, path in (("--image-list", self.image_list), ("--texts", self.texts)):
            if path is not None and not Path(path).is_file():
                raise UsageError(f"{flag} {path}: no such file")
        if self.dtype not in DTYPES:
            raise UsageError(f"--dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise UsageError(f"--precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.decode not in DECODERS:
            raise UsageError(f"--decode must be one of {DECODERS}, got {self.decode!r}")
        if self.decode == "gpu" and self.texts is not None:
            raise UsageError("--decode gpu decodes images; it does not apply to --texts")
        bad_batch = self.batch_size != "auto" and (not isinstance(self.batch_size, int) or self.batch_size < 1)
        if bad_batch or (self.num_workers or 0) < 0 or self.chunk_size < 1 or self.max_pixels < 1 or \
                (self.threads is not None and self.threads < 1):
            raise UsageError("--batch-size (or auto), --chunk-size, --max-pixels and --threads must be >= 1, "
                             "--num-workers >= 0")
        if self.image_size is not None and self.image_size < 8:
            raise UsageError(f"--image-size {self.image_size} is too small")
        if Path(self.out).suffix != ".h5":
            raise UsageError(f"--out {self.out}: the output must be an .h5 file")
        if not Path(self.out).resolve().parent.is_dir():
            raise UsageError(f"--out {self.out}: directory {Path(self.out).parent} does not exist")

    @property
    def modality(self) -> str:
        return "text" if self.texts is not None else "image"

    def decode_workers(self, device: str) -> int:
        """``--num-workers``, or by default 0 on a CPU and min(4, CPUs) on a GPU. On a CPU a real CLIP's forward is
        the bottleneck (ViT-B/32: ~18 img/s on 2 cores vs ~240 img/s decoding): decoding in the main process
        between batches costs a few per cent, while a worker process would take a core away from torch's threads
        (measured on 2 cores: 18.1 img/s with 0 workers + 2 threads, 15.0 with 1 worker + 2 threads, 10.2 with 1
        worker + 1 thread). Decode-bound jobs (tiny models, huge images) should set --num-workers."""
        if self.num_workers is not None:
            return self.num_workers
        return 0 if not device.startswith("cuda") else min(4, len(os.sched_getaffinity(0)))

    def cpu_threads(self) -> int:
        """Intra-op threads for a CPU forward: oversubscribing the cores the decoding workers use makes torch's
        thread pool spin and wait (measured 30x slower on a busy 2-core box), so leave them their cores."""
        return self.threads or max(1, len(os.sched_getaffinity(0)) - self.decode_workers("cpu"))

    @property
    def batches_per_chunk(self) -> int:
        assert isinstance(self.batch_size, int), "batch size 'auto' is resolved by extract() first"
        return max(1, -(-self.chunk_size // self.batch_size))
