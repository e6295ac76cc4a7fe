"""Merge the shard files of one sharded extraction into a single feature file, refusing mismatched shards.

    vlt5r merge --out feats.h5 feats-0000*-of-00004.h5        (or python feature_extraction/merge_feats.py ...)

Shards are ordered by their ``shard_id`` attribute (not by argument order); since ``clip_prepro_feats.py`` gives
shard i the i-th contiguous block of the item list, cut on whole batches, the merged file equals an unsharded run
(same rows, same order, same attributes).  Refused: attributes that differ (other than ``shard_id``), a missing
or repeated shard id, an item id present in two shards, a shard with an unfinished run (``*.partial``).
Rows are streamed shard by shard in slices (bounded memory) into ``OUT.tmp``, which is then renamed (atomic).
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a script: import the packages, not this folder's modules as top-level names
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import logging
from collections.abc import Iterator, Sequence

from foundations.errors import UsageError
from feature_extraction.readers import open_features
from feature_extraction.store import H5FeatureStore
from feature_extraction.writer import COPY_ROWS, Block, read_skip_record, write_feature_file

logger = logging.getLogger(__name__)


def _open_shards(paths: Sequence[Path]) -> list[H5FeatureStore]:
    stores = []
    for path in paths:
        if Path(str(path) + ".partial").exists():
            raise UsageError(f"{path}: has an unfinished run ({path}.partial); rerun its extraction first")
        store = open_features(path)
        if not isinstance(store, H5FeatureStore) or "shard_id" not in store.attrs:
            raise UsageError(f"{path}: not a shard written by clip_prepro_feats.py")
        stores.append(store)
    return stores


def check_shards(stores: Sequence[H5FeatureStore]) -> list[H5FeatureStore]:
    """Return the shards ordered by shard id, or raise :class:`UsageError` saying what does not fit."""
    if not stores:
        raise UsageError("no shard files given")
    first = stores[0]
    reference = {k: v for k, v in first.attrs.items() if k != "shard_id"}
    for store in stores[1:]:
        other = {k: v for k, v in store.attrs.items() if k != "shard_id"}
        diff = sorted(k for k in reference.keys() | other.keys() if reference.get(k) != other.get(k))
        if diff:
            shown = "; ".join(f"{k}: {reference.get(k)!r} vs {other.get(k)!r}" for k in diff[:4])
            raise UsageError(f"{store.path} does not match {first.path}: {shown}")
    by_id: dict[int, H5FeatureStore] = {}
    for store in stores:
        sid = int(store.attrs["shard_id"])
        if sid in by_id:
            raise UsageError(f"shard {sid} given twice: {by_id[sid].path} and {store.path}")
        by_id[sid] = store
    expected = int(reference["num_shards"])
    missing = sorted(set(range(expected)) - set(by_id))
    if missing:
        raise UsageError(f"missing shard(s) {missing} of {expected} (got {sorted(by_id)})")
    seen: dict[str, Path] = {}
    for sid in sorted(by_id):
        for item_id in by_id[sid].ids:
            if item_id in seen:
                raise UsageError(f"item {item_id!r} is in two shards: {seen[item_id]} and {by_id[sid].path}")
            seen[item_id] = by_id[sid].path
    return [by_id[sid] for sid in sorted(by_id)]


def merge_shards(paths: Sequence[Path], out: Path, rows_per_read: int = COPY_ROWS) -> int:
    """Merge ``paths`` into ``out``; returns the number of rows."""
    stores = _open_shards(paths)
    try:
        ordered = check_shards(stores)
        first = ordered[0]
        attrs = dict(first.attrs) | {"num_shards": 1, "shard_id": 0}
        fc_dim = int(first.attrs["fc_dim"])
        grid_shape = first.shape("grid")[1:] if first.has_grid else None
        dtype = str(first.dtype("fc"))
        skipped = [s for store in ordered for s in read_skip_record(store.path)]

        def blocks() -> Iterator[Block]:
            for store in ordered:
                for part in store.batches(rows_per_read):
                    yield Block(part.ids, part.fc, part.grid)

        n_rows = sum(len(s) for s in ordered)
        write_feature_file(out, attrs, n_rows, fc_dim, grid_shape, dtype, blocks(), skipped)  # type: ignore[arg-type]
        return n_rows
    finally:
        for store in stores:
            store.close()


if __name__ == "__main__":  # the old entry point: the same as `vlt5r merge`
    from vlt5r.drivers.merge import main

    sys.exit(main())
