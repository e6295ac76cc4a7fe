"""Deterministic, resumable, shardable training batches.

Micro-batch ``m`` of epoch ``e`` is a pure function of ``(seed, e, m)``: the query order is a permutation seeded
by ``(seed, e)`` and each query's hard negatives are sampled with a generator seeded by its position in the
epoch. A resumed run therefore only needs (epoch, step) to see the same data, and rank ``r`` of ``W`` takes the
contiguous slice ``r`` of every global micro-batch (the concatenation over ranks is the single-process batch).

Collation is cheap so the loader is not the bottleneck: questions are tokenised once (:class:`TokenizedQuestions`,
the same ids as :class:`vlt5.inputs.QueryCollator`), features come from an in-memory copy of the feature file
when it fits, and ``num_workers`` moves the rest into DataLoader workers.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from feature_extraction.readers import open_features as read_feature_file
from feature_extraction.store import FeatureStore, MemoryFeatureStore
from retrieval.formats import Query
from vlt5.inputs import VisualInputConfig, grid_hw_of, visual_inputs
from foundations.errors import UserError

logger = logging.getLogger(__name__)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The query order of ``epoch`` (same on every rank and after a resume)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def sample_negatives(negatives: list[str], n: int, seed: int, epoch: int, position: int) -> list[str]:
    """``n`` of a query's hard negatives (all if n < 0 or fewer exist), seeded by its place in the epoch
    (a string seed: hashed with SHA-512 by ``random``, so independent of PYTHONHASHSEED)."""
    if n < 0 or len(negatives) <= n:
        return list(negatives)
    picks = random.Random(f"{seed}/{epoch}/{position}").sample(range(len(negatives)), n)
    return [negatives[i] for i in sorted(picks)]


class TokenizedQuestions:
    """Every question tokenised once (``prefix + question``, truncated to ``max_length``, ``</s>`` appended),
    stored flat as int32; :meth:`batch` pads rows like the tokenizer's ``padding=True`` (right, pad id)."""

    def __init__(self, tokenizer: Any, questions: Sequence[str], inputs: VisualInputConfig,
                 chunk: int = 8192) -> None:
        lengths, flat = [], []
        for start in range(0, len(questions), chunk):
            texts = [inputs.prefix + q for q in questions[start:start + chunk]]
            for ids in tokenizer(texts, truncation=True, max_length=inputs.max_length)["input_ids"]:
                lengths.append(len(ids))
                flat.extend(ids)
        self.ids = np.asarray(flat, dtype=np.int32)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.pad_id = int(tokenizer.pad_token_id or 0)

    def batch(self, rows: Sequence[int]) -> dict[str, Tensor]:
        spans = [(self.offsets[r], self.offsets[r + 1]) for r in rows]
        width = max(b - a for a, b in spans)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)  # (B, L)
        mask = torch.zeros(len(rows), width, dtype=torch.long)  # (B, L)
        for i, (a, b) in enumerate(spans):
            input_ids[i, : b - a] = torch.from_numpy(self.ids[a:b].astype(np.int64))
            mask[i, : b - a] = 1
        return {"input_ids": input_ids, "attention_mask": mask}


class EpochBatches(Dataset):
    """Item ``m`` = this rank's share of global micro-batch ``m`` of one epoch, collated:
    ``{"inputs": encoder kwargs, "positives": [[kb id]], "negatives": [[kb id]], "query_ids": [id]}``."""

    def __init__(self, queries: list[Query], store: FeatureStore, tokens: TokenizedQuestions,
                 inputs: VisualInputConfig, global_batch: int, hard_negatives: int, seed: int, epoch: int,
                 rank: int = 0, world_size: int = 1) -> None:
        if global_batch % world_size:
            raise UserError(f"batch size {global_batch} must be divisible by the number of processes {world_size}")
        if len(queries) < global_batch:
            raise UserError(f"{len(queries)} training queries: fewer than one batch of {global_batch}")
        self.queries, self.tokens, self.inputs = queries, tokens, inputs
        self.memory = store if isinstance(store, MemoryFeatureStore) else None  # shared with workers
        self.store_path = store.path  # otherwise every process opens the file itself
        self.grid_hw = grid_hw_of(store.attrs, store.get_many(store.ids[:1]).grid.shape[1], str(store.path)) \
            if inputs.grid else None
        self.global_batch, self.local = global_batch, global_batch // world_size
        self.hard_negatives, self.seed, self.epoch, self.rank = hard_negatives, seed, epoch, rank
        self.order = epoch_order(len(queries), seed, epoch)
        self._store: FeatureStore | None = None
        self._pid = -1

    def __len__(self) -> int:
        return len(self.queries) // self.global_batch  # the last partial batch is dropped

    def store(self) -> FeatureStore:
        if self._store is None or self._pid != os.getpid():  # a DataLoader worker opens the file itself
            self._store = self.memory if self.memory is not None else read_feature_file(self.store_path)
            self._pid = os.getpid()
        return self._store

    def positions(self, m: int) -> range:
        start = m * self.global_batch + self.rank * self.local
        return range(start, start + self.local)

    def __getitem__(self, m: int) -> dict[str, Any]:
        if not 0 <= m < len(self):
            raise IndexError(m)
        rows = [int(self.order[p]) for p in self.positions(m)]
        qs = [self.queries[r] for r in rows]
        negatives = [sample_negatives(q.hard_negatives, self.hard_negatives, self.seed, self.epoch, p)
                     for q, p in zip(qs, self.positions(m))]
        feats = self.store().get_many([q.image for q in qs])
        inputs = {**self.tokens.batch(rows), **visual_inputs(feats.fc, feats.grid, self.inputs, self.grid_hw)}
        return {"inputs": inputs, "positives": [list(q.positives) for q in qs], "negatives": negatives,
                "query_ids": [q.id for q in qs]}

    def __getstate__(self) -> dict[str, Any]:  # sent to spawned workers without an open file
        return {**self.__dict__, "_store": None, "_pid": -1}


def _as_is(item: Any) -> Any:
    return item


def make_loader(batches: EpochBatches, start: int, stop: int, num_workers: int, prefetch: int,
                pin_memory: bool) -> DataLoader:
    """Micro-batches ``start .. stop-1`` in order. The generator keeps DataLoader off the global torch RNG
    (it draws worker seeds from it), which an exact resume needs."""
    return DataLoader(batches, batch_size=None, sampler=range(start, stop), num_workers=num_workers,
                      prefetch_factor=prefetch if num_workers else None, collate_fn=_as_is, pin_memory=pin_memory,
                      generator=torch.Generator().manual_seed(batches.seed * 1000 + batches.epoch))
