"""Write a complete feature file atomically, streaming rows block by block (DESIGN.md §3 layout).

HDF5 is not crash-safe when modified in place, so a feature file is only ever written whole: into ``PATH.tmp``,
flushed and ``fsync``-ed, then ``os.replace``-d over ``PATH`` (atomic on POSIX) and the directory ``fsync``-ed.
A reader, or a killed run, sees either the old file or the new one, never a half-written one.  Used by the
extraction's consolidation step and by ``merge_feats.py``.

Layout (contiguous datasets, no compression, ``track_times=False`` so equal content gives equal bytes)::

    ids (N,) utf-8 | fc (N, D) | grid (N, T, C) (images, unless --no-grid)
    skipped_ids, skipped_categories, skipped_details, skipped_sources (K,) utf-8: items not encoded, and why
    attrs: see ``feature_extraction.extract.build_attrs``
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from feature_extraction.inputs import Skip, text_of_name
from foundations.io import RecordingFile, atomic_replace, disk_errors, kept_message
from feature_extraction.store import decode_attr, open_h5

logger = logging.getLogger(__name__)

STR = h5py.string_dtype("utf-8")
IDS_SLICE = 4096
COPY_ROWS = 256  # rows per read when copying files (consolidation, merge): bounded memory even for big grids
SKIP_FIELDS = ("skipped_ids", "skipped_categories", "skipped_details", "skipped_sources")
# Attributes that must agree before rows may be appended to a file (or shards merged).
COMPAT_KEYS = ("format_version", "modality", "backbone_sha256", "image_size", "dtype", "has_grid", "grid_hw",
               "fc_dim", "grid_dim", "num_shards", "shard_id", "precision", "decode")


@dataclass
class Block:
    """Consecutive rows: ``fc`` (B, D), ``grid`` (B, T, C) or ``None``."""

    ids: list[str]
    fc: np.ndarray
    grid: np.ndarray | None


@contextmanager
def h5_for_writing(path: Path) -> Iterator[h5py.File]:
    """A new HDF5 file at ``path`` whose failed writes (a full disk) raise their ``OSError`` once closed, without
    leaving an unclosable HDF5 id behind (see :class:`foundations.io.RecordingFile`)."""
    raw = RecordingFile(path)
    try:
        with h5py.File(raw, "w") as f:
            yield f
    except BaseException:
        try:
            raw.close()
        except OSError as disk:  # a write failed first: that is the cause, not what HDF5 made of it
            raise disk from None
        raise
    raw.close()


def encode_attr(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return np.asarray(value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return value


def write_skipped(group: h5py.Group, skipped: Sequence[Skip]) -> None:
    fields = ("item_id", "category", "detail", "source")  # as UTF-8 text: a non-UTF-8 file name gets \xNN escapes
    columns = [[text_of_name(getattr(s, name)) for s in skipped] for name in fields]
    for name, values in zip(SKIP_FIELDS, columns):
        group.create_dataset(name, data=np.array(values, dtype=object), dtype=STR, track_times=False)


def read_skipped(group: h5py.Group) -> list[Skip]:
    if SKIP_FIELDS[0] not in group:
        return []
    columns = [[v.decode("utf-8") for v in group[name][:]] for name in SKIP_FIELDS]
    return [Skip(*row) for row in zip(*columns)]


def read_skip_record(path: Path) -> list[Skip]:
    """The skipped-items record of a feature file (empty when the file does not exist)."""
    if not path.exists():
        return []
    with open_h5(path) as f:
        return read_skipped(f)


def read_ids(group: h5py.Group, name: str = "ids") -> list[str]:
    return [v.decode("utf-8") for v in group[name][:]] if name in group else []


def write_feature_file(path: Path, attrs: Mapping[str, Any], n_rows: int, fc_dim: int, grid_shape: tuple[int, int]
                       | None, dtype: str, blocks: Iterable[Block], skipped: Sequence[Skip]) -> None:
    """Stream ``blocks`` (exactly ``n_rows`` rows in total) into ``path`` atomically; a failed write (a full disk)
    deletes the temporary file and leaves ``path`` as it was."""
    tmp = path.with_name(path.name + ".tmp")
    with disk_errors(path, kept_message(path)):
        try:
            _write_rows(tmp, path, attrs, n_rows, fc_dim, grid_shape, dtype, blocks, skipped)
            atomic_replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    logger.info("wrote %s: %d rows, %d skipped", path, n_rows, len(skipped))


def _write_rows(tmp: Path, path: Path, attrs: Mapping[str, Any], n_rows: int, fc_dim: int,
                grid_shape: tuple[int, int] | None, dtype: str, blocks: Iterable[Block], skipped: Sequence[Skip]
                ) -> None:
    with h5_for_writing(tmp) as f:
        ids = f.create_dataset("ids", shape=(n_rows,), dtype=STR, track_times=False)
        fc = f.create_dataset("fc", shape=(n_rows, fc_dim), dtype=dtype, track_times=False)
        grid = (f.create_dataset("grid", shape=(n_rows, *grid_shape), dtype=dtype, track_times=False)
                if grid_shape is not None else None)
        row, pending = 0, []  # ids go out in fixed slices: the string heap's layout ignores how rows were blocked
        for block in blocks:
            stop = row + len(block.ids)
            if stop > n_rows:
                raise ValueError(f"{path}: more rows than the {n_rows} announced")
            fc[row:stop] = block.fc
            if grid is not None:
                grid[row:stop] = block.grid
            pending.extend(block.ids)
            while len(pending) >= IDS_SLICE or (stop == n_rows and pending):
                first = stop - len(pending)
                take = min(IDS_SLICE, len(pending))
                ids[first:first + take] = np.array(pending[:take], dtype=object)
                del pending[:take]
            row = stop
        if row != n_rows:
            raise ValueError(f"{path}: wrote {row} rows, expected {n_rows}")
        write_skipped(f, skipped)
        for key in sorted(attrs):
            f.attrs[key] = encode_attr(attrs[key])


def attrs_mismatch(have: Mapping[str, Any], want: Mapping[str, Any], keys: Sequence[str] = COMPAT_KEYS) -> list[str]:
    """Human-readable ``key: have -> want`` lines for every compatibility key that differs."""
    lines = []
    for key in keys:
        a, b = decode_attr(encode_attr(have.get(key))), decode_attr(encode_attr(want.get(key)))
        if a != b:
            lines.append(f"{key}: {a!r} vs {b!r}")
    return lines
