"""A writer thread with a bounded queue, so HDF5 writes never stall the model forward.

The main loop puts each encoded batch (numpy arrays, already on the CPU) into a ``queue.Queue(maxsize)``; the
thread appends it to the open chunk file and commits the chunk every ``batches_per_chunk`` batches
(``spool.ChunkFile``).  The bounded queue keeps memory flat when the disk is slower than the model; an error in
the thread is re-raised in the main thread at the next ``put`` or at ``close``; a full disk is one line saying
how many rows are committed (they are kept: rerunning the command resumes after them).
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field

from feature_extraction.inputs import Skip
from feature_extraction.spool import ChunkFile, Spool, kill_point_for_tests
from feature_extraction.writer import Block
from foundations.io import DiskWriteError, disk_failure

logger = logging.getLogger(__name__)

_STOP = object()


@dataclass
class WriterStats:
    rows: int = 0
    chunks: int = 0
    skipped: list[Skip] = field(default_factory=list)


class SpoolWriter:
    """``put(block, skipped)`` per batch; ``close()`` commits the last (possibly short) chunk and joins."""

    def __init__(self, spool: Spool, first_chunk: int, batches_per_chunk: int, fc_dim: int,
                 grid_shape: tuple[int, int] | None, dtype: str, max_queued: int = 4) -> None:
        self.spool, self.next_chunk, self.batches_per_chunk = spool, first_chunk, batches_per_chunk
        self.fc_dim, self.grid_shape, self.dtype = fc_dim, grid_shape, dtype
        self.stats = WriterStats()
        self._queue: queue.Queue = queue.Queue(maxsize=max_queued)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="spool-writer", daemon=True)
        self._thread.start()

    def put(self, block: Block, skipped: list[Skip]) -> None:
        self._raise_if_failed()
        self._queue.put((block, skipped))

    def close(self) -> WriterStats:
        self._queue.put(_STOP)
        self._thread.join()
        self._raise_if_failed()
        return self.stats

    def _raise_if_failed(self) -> None:
        if self._error is None:
            return
        why = disk_failure(self._error)
        if why is not None:  # a full disk: the committed chunks are whole, the run resumes where it stopped
            out = self.spool.out
            where = getattr(self._error, "filename", None) or self.spool.dir
            raise DiskWriteError(f"{where}: {why}; nothing was lost: {self.stats.rows} rows of this run are committed "
                                 f"in {self.spool.dir} and {out} {'is unchanged' if out.exists() else 'is not created'}"
                                 "; free some space and rerun the same command to resume") from self._error
        raise RuntimeError(f"writing {self.spool.dir} failed: {self._error}") from self._error

    def _run(self) -> None:
        current: ChunkFile | None = None
        batches, stopped = 0, False
        try:
            while (item := self._queue.get()) is not _STOP:
                block, skipped = item
                if current is None:
                    current = ChunkFile(self.spool.chunk_path(self.next_chunk), self.fc_dim, self.grid_shape,
                                        self.dtype)
                current.append(block, skipped)
                self.stats.skipped.extend(skipped)
                batches += 1
                kill_point_for_tests("batch")
                if batches == self.batches_per_chunk:
                    self._commit(current)
                    current, batches = None, 0
            stopped = True
            if current is not None:
                self._commit(current)
        except BaseException as exc:  # surfaced in the main thread; keep draining so put() never blocks forever
            self._error = exc
            if current is not None:
                current.discard()  # an unfinished chunk is never used: free its space now
            while not stopped and self._queue.get() is not _STOP:  # (the last commit fails after _STOP was taken)
                pass

    def _commit(self, chunk: ChunkFile) -> None:
        self.stats.rows += chunk.commit()
        self.stats.chunks += 1
        self.next_chunk += 1
        logger.debug("committed %s", chunk.path)
        kill_point_for_tests("chunk")
