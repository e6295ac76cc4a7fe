"""Kill-safe progress: a spool of atomically committed chunk files next to the output, then one consolidation.

Design (proved by ``tests/test_extract_resume.py`` with real SIGKILLs):

* ``OUT.h5.partial/meta.json`` records the run's compatibility attributes; ``chunk-000007.h5`` files each hold
  whole batches in item order: ``ids``, ``fc``, ``grid`` and the ``skipped_*`` records of those batches.
  A chunk is written as ``chunk-000007.h5.tmp`` and ``os.replace``-d when complete, so after a kill every
  ``chunk-*.h5`` is whole and they form a prefix of the run's batch sequence; ``*.tmp`` leftovers are deleted.
* On rerun, done = ids in ``OUT.h5`` (written and skipped) + ids in committed chunks; the rest is processed in
  the same order and batching, so the final file equals an uninterrupted run's, row for row and bit for bit.
* When nothing is left, :func:`consolidate` streams ``OUT.h5`` rows + chunks into ``OUT.h5.tmp`` and replaces
  ``OUT.h5`` atomically (``writer.write_feature_file``), then removes the spool.  A kill between that replace and
  the removal leaves a *stale* spool whose ids are all in ``OUT.h5``; :meth:`Spool.recover` recognises and
  deletes it.

Test-only hook: ``VLT5_EXTRACT_TEST_KILL=<point>:<n>`` SIGKILLs this process at the n-th occurrence of a point
(``batch`` written into an open chunk, ``chunk`` committed, ``consolidate`` half-way, ``replaced`` before the
spool is removed) so the tests can kill deterministically at each kind of moment.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import signal
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from foundations.errors import UsageError
from feature_extraction.inputs import Skip
from feature_extraction.store import H5FeatureStore
from foundations.io import DiskWriteError, RecordingFile, atomic_replace, atomic_write_text
from feature_extraction.writer import (COPY_ROWS, STR, Block, attrs_mismatch, read_ids,
                                       read_skip_record, read_skipped, write_feature_file, write_skipped)

logger = logging.getLogger(__name__)

_kill_counts: Counter[str] = Counter()


def kill_point_for_tests(point: str) -> None:
    """SIGKILL ourselves at the configured point (see module docstring); a no-op unless the env var is set."""
    wanted = os.environ.get("VLT5_EXTRACT_TEST_KILL", "")
    if not wanted.startswith(point + ":"):
        return
    _kill_counts[point] += 1
    if _kill_counts[point] == int(wanted.split(":")[1]):
        os.kill(os.getpid(), signal.SIGKILL)


@contextmanager
def exclusive_run(out: Path) -> Iterator[None]:
    """Refuse a second process writing the same output (e.g. two jobs given the same shard): an advisory
    ``flock`` on ``OUT.h5.lock``, released by the kernel even when the holder is SIGKILLed."""
    lock_path = out.with_name(out.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UsageError(f"another process is writing {out} (it holds {lock_path})") from None
    try:
        yield
    finally:
        lock_path.unlink(missing_ok=True)
        os.close(fd)


class Spool:
    """The ``OUT.h5.partial/`` directory of one output file."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.dir = out.with_name(out.name + ".partial")
        self.meta_path = self.dir / "meta.json"

    def chunks(self) -> list[Path]:
        return sorted(self.dir.glob("chunk-*.h5")) if self.dir.is_dir() else []

    def chunk_path(self, index: int) -> Path:
        return self.dir / f"chunk-{index:06d}.h5"

    def chunk_ids(self) -> Iterator[tuple[list[str], list[Skip]]]:
        for path in self.chunks():
            with h5py.File(path, "r") as f:
                yield read_ids(f), read_skipped(f)

    def recover(self, meta: Mapping[str, Any], out_ids: set[str]) -> set[str]:
        """Clean up after a kill and return the ids already done in committed chunks.

        Deletes ``*.tmp`` leftovers and a stale (already consolidated) spool; refuses a spool started with other
        settings; writes ``meta.json`` for a new spool."""
        for leftover in list(self.dir.glob("*.tmp")) if self.dir.is_dir() else []:
            logger.info("removing unfinished %s", leftover)
            leftover.unlink()
        if self.dir.is_dir() and self.chunks():
            done = {i for written, skipped in self.chunk_ids() for i in written + [s.item_id for s in skipped]}
            if done <= out_ids:
                logger.info("%s was already consolidated into %s; removing it", self.dir, self.out)
                self.remove()
        if self.meta_path.is_file():
            old = json.loads(self.meta_path.read_text())
            problems = attrs_mismatch(old, meta)
            if problems:
                raise UsageError(f"{self.dir} holds an unfinished run with other settings ({'; '.join(problems)});"
                                 " rerun with the same settings, or delete that directory to start over")
            if old.get("batch_size") != meta.get("batch_size"):
                logger.warning("resuming with batch size %s (the run began with %s): the result stays correct, but "
                               "rows may differ from an uninterrupted run in the last bits", meta.get("batch_size"),
                               old.get("batch_size"))
        else:
            self.dir.mkdir(exist_ok=True)
            atomic_write_text(self.meta_path, json.dumps(dict(meta), indent=1, sort_keys=True))
        return {i for written, skipped in self.chunk_ids() for i in written + [s.item_id for s in skipped]}

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class ChunkFile:
    """One chunk being written: batches are appended to ``chunk-N.h5.tmp``; :meth:`commit` makes it visible."""

    def __init__(self, path: Path, fc_dim: int, grid_shape: tuple[int, int] | None, dtype: str) -> None:
        self.path, self.tmp = path, path.with_name(path.name + ".tmp")
        self.raw = RecordingFile(self.tmp)  # a full disk raises here, never inside HDF5's close
        self.file = h5py.File(self.raw, "w")
        self.ids = self.file.create_dataset("ids", (0,), STR, maxshape=(None,), chunks=(256,), track_times=False)
        self.fc = self.file.create_dataset("fc", (0, fc_dim), dtype, maxshape=(None, fc_dim), chunks=True,
                                           track_times=False)
        self.grid = (self.file.create_dataset("grid", (0, *grid_shape), dtype, maxshape=(None, *grid_shape),
                                              chunks=(1, *grid_shape), track_times=False) if grid_shape else None)
        self.skipped: list[Skip] = []

    def append(self, block: Block, skipped: list[Skip]) -> None:
        start, stop = self.ids.shape[0], self.ids.shape[0] + len(block.ids)
        for dataset, values in ((self.ids, np.array(block.ids, dtype=object)), (self.fc, block.fc),
                                (self.grid, block.grid)):
            if dataset is not None:
                dataset.resize(stop, axis=0)
                dataset[start:stop] = values
        self.skipped.extend(skipped)
        if self.raw.error is not None:
            raise self.raw.error

    def commit(self) -> int:
        rows = self.ids.shape[0]
        write_skipped(self.file, self.skipped)
        self.file.close()
        self.raw.close()
        atomic_replace(self.tmp, self.path)
        return rows

    def discard(self) -> None:
        """Close and delete the unfinished chunk (after a failed write)."""
        if self.file.id.valid:
            self.file.close()
        try:
            self.raw.close()
        except OSError:  # the failure already being reported
            pass
        self.tmp.unlink(missing_ok=True)


def chunk_blocks(path: Path, rows: int = COPY_ROWS) -> Iterator[Block]:
    """A committed chunk's rows, ``rows`` at a time (memory stays bounded whatever the chunk size)."""
    with h5py.File(path, "r") as f:
        ids = read_ids(f)
        for start in range(0, len(ids), rows):
            stop = min(start + rows, len(ids))
            grid = f["grid"][start:stop] if "grid" in f else None
            yield Block(ids[start:stop], f["fc"][start:stop], grid)


def consolidate(spool: Spool, attrs: Mapping[str, Any], fc_dim: int, grid_shape: tuple[int, int] | None,
                dtype: str) -> tuple[int, list[Skip]]:
    """Existing ``OUT.h5`` rows + committed chunks -> new ``OUT.h5`` (atomic); returns (rows, skipped record)."""
    out, chunks = spool.out, spool.chunks()
    old = H5FeatureStore(out) if out.exists() else None
    try:
        chunk_rows, redone, new_skipped = 0, set(), []
        for written, skipped in spool.chunk_ids():
            chunk_rows += len(written)
            redone.update(written, (s.item_id for s in skipped))
            new_skipped.extend(skipped)
        old_skipped = read_skip_record(out)
        skipped = [s for s in old_skipped if s.item_id not in redone] + new_skipped
        n_old = len(old) if old is not None else 0

        def blocks() -> Iterator[Block]:
            if old is not None:
                for part in old.batches(COPY_ROWS):
                    yield Block(part.ids, part.fc, part.grid)
            for n, path in enumerate(chunks, 1):
                yield from chunk_blocks(path)
                if n == (len(chunks) + 1) // 2:
                    kill_point_for_tests("consolidate")

        try:
            write_feature_file(out, attrs, n_old + chunk_rows, fc_dim, grid_shape, dtype, blocks(), skipped)
        except DiskWriteError as exc:
            raise DiskWriteError(f"{exc}; this run's {chunk_rows} rows are kept in {spool.dir}: free some space and "
                                 "rerun the same command to finish") from exc
    finally:
        if old is not None:
            old.close()
    kill_point_for_tests("replaced")
    spool.remove()
    return n_old + chunk_rows, skipped
