"""Streamed webdataset shards for training: each rank reads only its own shards, once per epoch, in an order that is
a pure function of (seed, epoch, rank) — data that outgrows memory, with the engine's exact resume kept.

The plan (webdataset's ``split_by_node`` + ``shuffle(buffer)`` + ``with_epoch``, open_clip's ``sizes.json``):

* **shards per rank** — shard ``i`` goes to rank ``i % world`` (:func:`clip_family.data.rank_shards`), fixed for the
  whole run; each epoch a rank visits its shards in a seeded permutation;
* **size index** — :func:`shard_sizes`: the usable samples of each shard, from a ``sizes.json`` next to the shards
  (``{"shard-000.tar": 10000, ...}``, open_clip's convention; raw counts) or counted once at start-up by
  :func:`clip_family.data.count_samples` (tar headers and captions only; image bytes are skipped);
* **equal batch counts** — DDP needs every rank to run the same number of micro-batches: an epoch is
  ``min over ranks (samples of the rank's shards) // local batch`` micro-batches (:meth:`ShardStream.batches_per_epoch`);
  each rank draws exactly that many samples and drops the rest of its shards for this epoch (``with_epoch``);
* **shuffle** — samples pass a seeded buffer of ``buffer`` items (a random item of the buffer leaves as a new one
  enters), then are decoded; an unreadable image is skipped and counted there, a missing image, an empty caption or
  a key repeated within the rank is skipped and counted while reading. A rank short of samples after skipping (the
  index cannot see undecodable images) reads its shards again in a new permutation (a few samples twice);
* **resume** — the epoch's stream is a pure function of (seed, epoch, rank, world), so a resume at micro-batch ``k``
  regenerates it and skips the first ``k × local batch`` samples. Cost: those samples are read and decoded again
  (not preprocessed, no forward), about the time it took to load them the first time.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

from clip_family.data import Item, ReadReport, count_samples, iter_webdataset, rank_shards
from foundations.errors import UserError
from foundations.images import BadImage, decode_image

logger = logging.getLogger(__name__)
T = TypeVar("T")
SIZES_JSON = "sizes.json"


def shard_sizes(shards: Sequence[Path], indices: Sequence[int] | None = None) -> dict[int, int]:
    """{shard index: usable samples} for ``indices`` (default: all) — from ``sizes.json`` in a shard's folder when
    it names the shard, else counted (:func:`clip_family.data.count_samples`)."""
    tables: dict[Path, dict[str, int]] = {}
    sizes: dict[int, int] = {}
    for i in range(len(shards)) if indices is None else indices:
        folder = shards[i].parent
        if folder not in tables:
            tables[folder] = _sizes_json(folder / SIZES_JSON)
        table = tables[folder]
        sizes[i] = int(table[shards[i].name]) if shards[i].name in table else count_samples(shards[i])
    return sizes


def _sizes_json(path: Path) -> dict[str, int]:
    if not path.is_file():
        return {}
    try:
        table = json.loads(path.read_text())
        if not isinstance(table, dict) or not all(isinstance(v, int) and v >= 0 for v in table.values()):
            raise ValueError("not a mapping of counts")
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read ({exc}); expected {{\"shard name\": sample count}}") from None
    return table


def shuffled(items: Iterator[T], buffer: int, rng: np.random.Generator) -> Iterator[T]:
    """Items through a shuffle buffer of ``buffer`` slots (webdataset's ``shuffle``; ``buffer`` ≤ 1: in order)."""
    if buffer <= 1:
        yield from items
        return
    slots: list[T] = []
    for item in items:
        if len(slots) < buffer:
            slots.append(item)
            continue
        j = int(rng.integers(len(slots)))
        slots[j], item = item, slots[j]
        yield item
    while slots:
        yield slots.pop(int(rng.integers(len(slots))))


@dataclass
class ShardStream:
    """One rank's view of a set of shards: its shards, every rank's sample count, and the stream of each epoch."""

    shards: list[Path]
    sizes: dict[int, int]  # usable samples of every shard (all ranks' shards: the epoch length needs them)
    rank: int = 0
    world: int = 1
    seed: int = 0
    buffer: int = 1000
    reports: list[ReadReport] = field(default_factory=list)  # one per epoch stream started

    def __post_init__(self) -> None:
        if len(self.shards) < self.world:
            raise UserError(f"{len(self.shards)} shard(s) for {self.world} ranks: each rank streams whole shards, so "
                            "it needs at least one (split the data into more shards)")

    @property
    def own(self) -> list[int]:
        return rank_shards(len(self.shards), self.rank, self.world)

    def samples_per_rank(self) -> list[int]:
        return [sum(self.sizes[i] for i in rank_shards(len(self.shards), r, self.world)) for r in range(self.world)]

    def batches_per_epoch(self, local_batch: int) -> int:
        """Micro-batches of one epoch, the same on every rank: the smallest rank's samples // ``local_batch``."""
        return min(self.samples_per_rank()) // local_batch

    def epoch(self, epoch: int) -> Iterator[tuple[Item, str, Image.Image]]:
        """(item, the caption picked, its decoded image) for this rank, endless: a
        pass over the rank's shards in a seeded order through the shuffle buffer, then (only when the epoch needs
        more) another pass in another order. A pure function of (seed, epoch, rank, world)."""
        report = ReadReport(f"epoch {epoch}, rank {self.rank}/{self.world}")
        self.reports.append(report)
        caption_rng = np.random.default_rng([self.seed, epoch, self.rank, 2])
        for n in count():
            if n:
                logger.info("rank %d used every sample of its %d shard(s) in epoch %d; reading them again to fill "
                            "the epoch", self.rank, len(self.own), epoch)
            order = np.random.default_rng([self.seed, epoch, self.rank, 0, n]).permutation(self.own)
            items = iter_webdataset([self.shards[int(i)] for i in order], verify=False, report=report)
            kept = 0
            for item in shuffled(items, self.buffer, np.random.default_rng([self.seed, epoch, self.rank, 1, n])):
                pick = caption_rng.random()  # drawn for every sample, kept or not
                try:
                    image = decode_image(item.image)
                except BadImage as exc:
                    report.skip(f"unreadable image ({exc.category})", item.key)
                    continue
                kept += 1
                yield item, item.captions[int(pick * len(item.captions))], image
            if not kept:
                raise UserError(f"rank {self.rank}: its shards {[str(self.shards[i]) for i in self.own]} hold no "
                                f"usable sample ({dict(report.skipped)} skipped)")
