"""Read feature files: our HDF5 format (DESIGN.md §3) behind one small interface.

``feature_extraction.readers.open_features(path)`` picks the reader from what is on disk (the layout registry sits
there, above this module and :mod:`feature_extraction.legacy`); every reader answers the same questions:
``ids``, ``len``, ``id in store``, ``store.get(id)`` and batched ``store.get_many(ids)`` returning
:class:`Features` (numpy arrays, one row per requested id, in the requested order).

Our format (written by ``clip_prepro_feats.py``)::

    ids   (N,)       UTF-8 strings
    fc    (N, D)     CLIP embedding as encode_image / encode_text returns it (not normalised)
    grid  (N, T, C)  images only: ResNet layer4 map row-major over (h, w), or ViT final-block patch tokens
    attrs            format_version, backbone, image_size, grid_hw, fc_dim, grid_dim, dtype, modality, ...
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from foundations.errors import UserError

logger = logging.getLogger(__name__)

FORMAT_NAME = "vlt5-retrieval/features"
FORMAT_VERSION = 1


class FeatureFileError(UserError):
    """A feature file is missing, malformed, or lacks a requested id. The message names the file and what was
    expected."""


def open_h5(path: str | Path) -> h5py.File:
    """An HDF5 file opened for reading; a missing, truncated or corrupt file is one :class:`FeatureFileError`
    naming it (HDF5 checks the stored end of file when it opens one, so a truncated copy fails here)."""
    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise FeatureFileError(f"{path}: no such feature file") from None
    except OSError as exc:
        raise FeatureFileError(f"{path}: not a readable HDF5 file, truncated or corrupt ({' '.join(str(exc).split())})"
                               ) from None


def read_rows(path: Path, dataset: h5py.Dataset, rows: Any) -> np.ndarray:
    """``dataset[rows]``; a read error (a damaged file) is a :class:`FeatureFileError` naming the file."""
    try:
        return dataset[rows]
    except OSError as exc:
        raise FeatureFileError(f"{path}: cannot read {dataset.name} (the file is damaged: "
                               f"{' '.join(str(exc).split())})") from None


@dataclass
class Features:
    """Arrays for a batch of ids (row i belongs to ``ids[i]``). Absent parts are ``None``."""

    ids: list[str]
    fc: np.ndarray | None = None  # (B, D)
    grid: np.ndarray | None = None  # (B, T, C)
    boxes: np.ndarray | None = None  # (B, T, 4) x1, y1, x2, y2 normalised to [0, 1], when the layout has them


def decode_attr(value: Any) -> Any:
    """HDF5 attributes come back as numpy scalars/arrays or bytes; return plain Python values."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def attrs_contradiction(attrs: dict[str, Any], fc_shape: tuple[int, ...],
                        grid_shape: tuple[int, ...] | None) -> str | None:
    """What the recorded attributes (``fc_dim``, ``has_grid``, ``grid_hw``, ``grid_dim``) say that the datasets'
    shapes contradict, or None. Absent attributes (legacy or hand-written files) are not checked."""
    if len(fc_shape) != 2:
        return f"'fc' has shape {fc_shape}, expected (N, D)"
    if attrs.get("fc_dim") is not None and int(attrs["fc_dim"]) != fc_shape[1]:
        return f"fc_dim={attrs['fc_dim']} but 'fc' holds vectors of dim {fc_shape[1]}"
    if attrs.get("has_grid") is not None and bool(attrs["has_grid"]) != (grid_shape is not None):
        return f"has_grid={attrs['has_grid']} but the file {'has' if grid_shape else 'has no'} 'grid' dataset"
    if grid_shape is None:
        return None
    if len(grid_shape) != 3:
        return f"'grid' has shape {grid_shape}, expected (N, T, C)"
    hw = attrs.get("grid_hw")
    if isinstance(hw, list) and len(hw) == 2 and int(hw[0]) * int(hw[1]) != grid_shape[1]:
        return f"grid_hw={hw} ({int(hw[0]) * int(hw[1])} tokens) but 'grid' holds {grid_shape[1]} tokens per item"
    if attrs.get("grid_dim") and int(attrs["grid_dim"]) != grid_shape[2]:
        return f"grid_dim={attrs['grid_dim']} but 'grid' holds {grid_shape[2]} channels"
    return None


class FeatureStore:
    """Base class and factory. Subclasses implement ``ids``, ``attrs`` and ``_read(rows)``."""

    path: Path

    # -- interface (subclasses set ``_ids`` / ``_attrs`` or override these) --------------------------------
    _ids: list[str]
    _attrs: dict[str, Any] = {}

    @property
    def ids(self) -> list[str]:
        return self._ids

    @property
    def attrs(self) -> dict[str, Any]:
        return self._attrs

    def get_many(self, ids: Sequence[str]) -> Features:
        raise NotImplementedError

    def close(self) -> None:
        pass

    # -- shared behaviour ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._index

    @property
    def _index(self) -> dict[str, int]:
        if not hasattr(self, "_index_cache"):
            self._index_cache = {i: n for n, i in enumerate(self.ids)}
        return self._index_cache

    def rows(self, ids: Sequence[str]) -> np.ndarray:
        """Row numbers of ``ids``; a missing id raises :class:`FeatureFileError` naming it and the file."""
        index = self._index
        missing = [i for i in ids if i not in index]
        if missing:
            shown = ", ".join(repr(m) for m in missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise FeatureFileError(f"{self.path}: {len(missing)} id(s) not in this feature file: {shown}")
        return np.fromiter((index[i] for i in ids), dtype=np.int64, count=len(ids))

    def get(self, item_id: str) -> Features:
        return self.get_many([item_id])

    def batches(self, batch_size: int = 1024) -> Iterator[Features]:
        """All items in file order, ``batch_size`` at a time (bounded memory)."""
        ids = self.ids
        for start in range(0, len(ids), batch_size):
            yield self.get_many(ids[start : start + batch_size])

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, n={len(self)})"


class H5FeatureStore(FeatureStore):
    """Our contiguous HDF5 layout. Reads sorted row slices (HDF5 fancy indexing needs increasing indices)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file = open_h5(self.path)
        try:
            self._ids = [s.decode("utf-8") if isinstance(s, bytes) else str(s) for s in self._file["ids"][:]]
            self._attrs = {k: decode_attr(v) for k, v in self._file.attrs.items()}
            n_fc = self._file["fc"].shape[0]
            if n_fc != len(self._ids) or ("grid" in self._file and self._file["grid"].shape[0] != n_fc):
                raise FeatureFileError(f"{self.path}: ids, fc and grid must have the same number of rows")
            problem = attrs_contradiction(self._attrs, self._file["fc"].shape,
                                          self._file["grid"].shape if "grid" in self._file else None)
            if problem:
                raise FeatureFileError(f"{self.path}: its attributes contradict its data: {problem}")
        except KeyError as exc:
            self._file.close()
            raise FeatureFileError(f"{self.path}: not a vlt5-retrieval feature file ({exc})") from exc
        except FeatureFileError:
            self._file.close()
            raise

    @property
    def has_grid(self) -> bool:
        return "grid" in self._file

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of dataset ``name`` (``"fc"``, ``"grid"``) without reading it."""
        return tuple(self._file[name].shape)

    def dtype(self, name: str) -> np.dtype:
        return self._file[name].dtype

    def get_many(self, ids: Sequence[str]) -> Features:
        ids = list(ids)
        rows = self.rows(ids)
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        unique_rows, inverse = np.unique(sorted_rows, return_inverse=True)
        back = np.empty_like(order)
        back[order] = np.arange(len(order))

        def read(name: str) -> np.ndarray:
            data = read_rows(self.path, self._file[name], unique_rows if len(unique_rows) else slice(0, 0))
            return data[inverse][back]

        return Features(ids=ids, fc=read("fc"), grid=read("grid") if self.has_grid else None)

    def batches(self, batch_size: int = 1024) -> Iterator[Features]:
        """Contiguous slices in file order: one HDF5 read per dataset per batch."""
        for start in range(0, len(self._ids), batch_size):
            stop = min(start + batch_size, len(self._ids))
            grid = read_rows(self.path, self._file["grid"], slice(start, stop)) if self.has_grid else None
            yield Features(ids=self._ids[start:stop], fc=read_rows(self.path, self._file["fc"], slice(start, stop)),
                           grid=grid)

    def close(self) -> None:
        if self._file.id.valid:
            self._file.close()


class MemoryFeatureStore(FeatureStore):
    """Features held in memory (e.g. one uploaded image encoded on the fly), behind the same interface.

    ``fc`` (N, D) and optional ``grid`` (N, T, C) rows belong to ``ids``; ``attrs`` should carry ``grid_hw``
    when there is a grid (the collator reads it)."""

    def __init__(self, ids: Sequence[str], fc: np.ndarray, grid: np.ndarray | None = None,
                 attrs: dict[str, Any] | None = None, path: str | Path = "<memory>") -> None:
        self.path = Path(path)
        self._ids = list(ids)
        self._fc = np.asarray(fc)
        self._grid = None if grid is None else np.asarray(grid)
        self._attrs = dict(attrs or {})
        if len(self._fc) != len(self._ids) or (self._grid is not None and len(self._grid) != len(self._ids)):
            raise FeatureFileError(f"{self.path}: ids, fc and grid must have the same number of rows")

    @classmethod
    def from_store(cls, source: FeatureStore, batch_size: int = 4096) -> MemoryFeatureStore:
        """A whole feature file read into RAM as float32 (bounded reads: ``batch_size`` rows at a time)."""
        parts = list(source.batches(batch_size))
        fc = np.concatenate([b.fc for b in parts]).astype(np.float32)  # (N, D)
        grid = np.concatenate([b.grid for b in parts]).astype(np.float32) \
            if parts and parts[0].grid is not None else None  # (N, T, C)
        return cls(source.ids, fc, grid, source.attrs, source.path)

    @property
    def fc(self) -> np.ndarray:
        return self._fc

    @property
    def grid(self) -> np.ndarray | None:
        return self._grid

    def get_many(self, ids: Sequence[str]) -> Features:
        ids = list(ids)
        rows = self.rows(ids)
        return Features(ids=ids, fc=self._fc[rows], grid=None if self._grid is None else self._grid[rows])
