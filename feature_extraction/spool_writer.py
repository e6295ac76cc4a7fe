"""A writer thread with a bounded queue, so HDF5 writes never stall the model forward.

The main loop puts each encoded batch (numpy arrays, already on the CPU) into a ``queue.Queue(maxsize)``; the
thread appends it to the open chunk file and commits the chunk every ``batches_per_chunk`` batches
(``spool.ChunkFile``).  The bounded queue keeps memory flat when the disk is slower than the model; an error in
the thread is re-raised in the main thread at the next ``put`` or at ``close``.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field

from feature_extraction.inputs import Skip
from feature_extraction.spool import ChunkFile, Spool, kill_point_for_tests
from feature_extraction.writer import Block

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
        if self._error is not None:
            raise RuntimeError(f"writing {self.spool.dir} failed: {self._error}") from self._error

    def _run(self) -> None:
        current: ChunkFile | None = None
        batches = 0
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
            if current is not None:
                self._commit(current)
        except BaseException as exc:  # surfaced in the main thread; keep draining so put() never blocks forever
            self._error = exc
            while self._queue.get() is not _STOP:
                pass

    def _commit(self, chunk: ChunkFile) -> None:
        self.stats.rows += chunk.commit()
        self.stats.chunks += 1
        self.next_chunk += 1
        logger.debug("committed %s", chunk.path)
        kill_point_for_tests("chunk")
