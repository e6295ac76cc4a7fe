"""Datasets and DataLoader: workers decode + preprocess (images) or read + tokenize (texts) in parallel.

Batches are fixed lists of item positions computed up front (``make_batches``), passed as the DataLoader's
``batch_sampler``; items that fail to decode are dropped from their batch inside ``collate`` and reported as
:class:`~feature_extraction.inputs.Skip`.  So batch k is the same set of items in every run over the same todo
list - the property kill-safe resume relies on for bit-identical output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from feature_extraction.decode import load_and_preprocess
from feature_extraction.device_decode import read_for_device
from feature_extraction.inputs import Listing, Skip, read_text


@dataclass
class Batch:
    """One batch as it reaches the model. ``inputs`` is (B, 3, H, W) pixels, a dict of token tensors, or with
    ``--decode gpu`` a list of ``JpegFile`` / ``OnCpu`` items (one per id)."""

    ids: list[str]
    inputs: torch.Tensor | dict[str, torch.Tensor] | list[Any] | None
    skipped: list[Skip]

    def pin_memory(self) -> Batch:  # called by DataLoader(pin_memory=True)
        if isinstance(self.inputs, torch.Tensor):
            self.inputs = self.inputs.pin_memory()
        elif isinstance(self.inputs, dict):
            self.inputs = {k: v.pin_memory() for k, v in self.inputs.items()}
        return self


class ImageDataset(Dataset):
    """Decoded, preprocessed pixels per item (``load_and_preprocess``); with ``device_decode``, a JPEG's bytes for
    the device decoder instead (:func:`~feature_extraction.device_decode.read_for_device`)."""

    def __init__(self, ids: Sequence[str], paths: Sequence[str], preprocess: Callable[[Any], torch.Tensor],
                 max_pixels: int, device_decode: bool = False) -> None:
        self.ids, self.paths, self.preprocess, self.max_pixels = ids, paths, preprocess, max_pixels
        self.read = read_for_device if device_decode else load_and_preprocess

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[str, Any]:
        return self.ids[i], self.read(self.ids[i], self.paths[i], self.preprocess, self.max_pixels)


class TextDataset(Dataset):
    def __init__(self, ids: Sequence[str], offsets: Sequence[int], jsonl: Path) -> None:
        self.ids, self.offsets, self.jsonl = ids, offsets, jsonl

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[str, str | Skip]:
        try:
            return self.ids[i], read_text(self.jsonl, self.offsets[i])
        except (OSError, ValueError, KeyError) as exc:  # the file changed under us
            return self.ids[i], Skip(self.ids[i], "unreadable", str(exc), f"{self.jsonl}@{self.offsets[i]}")


class ImageCollate:
    """Stacks the pixels (B, 3, H, W); with ``device_decode`` keeps the list of JPEG files / CPU pixels for the
    main process's :class:`~feature_extraction.device_decode.DeviceDecoder`."""

    def __init__(self, device_decode: bool = False) -> None:
        self.device_decode = device_decode

    def __call__(self, items: list[tuple[str, Any]]) -> Batch:
        good = [(i, x) for i, x in items if not isinstance(x, Skip)]
        inputs = [x for _, x in good] if self.device_decode else torch.stack([x for _, x in good]) if good else None
        return Batch([i for i, _ in good], inputs, [x for _, x in items if isinstance(x, Skip)])


class TextCollate:
    def __init__(self, tokenize: Callable[[list[str]], dict[str, torch.Tensor]]) -> None:
        self.tokenize = tokenize

    def __call__(self, items: list[tuple[str, str | Skip]]) -> Batch:
        good = [(i, x) for i, x in items if not isinstance(x, Skip)]
        tokens = self.tokenize([x for _, x in good]) if good else None
        return Batch([i for i, _ in good], tokens, [x for _, x in items if isinstance(x, Skip)])


def make_batches(n_items: int, batch_size: int) -> list[list[int]]:
    return [list(range(s, min(s + batch_size, n_items))) for s in range(0, n_items, batch_size)]


def make_loader(todo: Listing, batch_size: int, num_workers: int, preprocess: Callable[[Any], torch.Tensor],
                tokenize: Callable[[list[str]], dict[str, torch.Tensor]], max_pixels: int,
                pin_memory: bool, device_decode: bool = False) -> DataLoader:
    """An ordered DataLoader over ``todo`` (workers keep batch order, so results arrive in item order);
    ``device_decode``: workers read JPEG bytes, the main process decodes them on the device (``--decode gpu``)."""
    if todo.modality == "text":
        assert todo.text_file is not None
        dataset: Dataset = TextDataset(todo.ids, todo.sources, todo.text_file)  # type: ignore[arg-type]
        collate: Callable[[list[Any]], Batch] = TextCollate(tokenize)
    else:
        dataset = ImageDataset(todo.ids, todo.sources, preprocess, max_pixels, device_decode)  # type: ignore[arg-type]
        collate = ImageCollate(device_decode)
    return DataLoader(dataset, batch_sampler=make_batches(len(todo.ids), batch_size), num_workers=num_workers,
                      collate_fn=collate, pin_memory=pin_memory,
                      prefetch_factor=2 if num_workers else None, persistent_workers=False)
