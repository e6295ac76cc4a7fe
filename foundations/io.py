"""Atomic, durable writes: a reader (or a killed run) sees the old file or the new one, never half of one.

``atomic_open`` (a file written in a stream) and ``atomic_write_text`` / ``atomic_write_bytes`` write ``.NAME.tmp``,
fsync, ``os.replace`` and fsync the folder;
``write_dir_atomically`` does the same for a whole directory (write ``.NAME.tmp``, fsync the tree, swap by two
renames, ``.NAME.old`` kept only between them); ``refuse_overwrite`` is the one rule for user-named outputs
(never replace without ``--overwrite``, never replace one of the command's own inputs). A write that fails because
of the disk (full, quota, read-only, forbidden: :func:`disk_failure`) ends in one :class:`DiskWriteError` line that
names the file and says what was kept (:func:`disk_errors`): the atomic writers leave the previous output as it was.
:class:`RecordingFile` is the file object for libraries that mishandle such a failed write (HDF5, ``torch.save``).
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from foundations.errors import UsageError, UserError

# errno of a write that failed because of where it writes, not because of the program
DISK_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
               errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
               errno.EPERM: "operation not permitted"}


class DiskWriteError(UserError):
    """An output could not be written (full disk, quota, read-only or forbidden folder): one line naming the file,
    why, and what was kept."""


def disk_failure(exc: BaseException) -> str | None:
    """Why ``exc`` is a disk failure (``'no space left on device'``...), else None. Python and h5py raise an
    ``OSError`` with that errno (often without a file name); faiss (``RuntimeError``) and safetensors (a bare
    ``Exception``) only quote strerror."""
    if isinstance(exc, OSError):
        return DISK_ERRNOS.get(exc.errno)  # type: ignore[arg-type]
    if type(exc) in (RuntimeError, Exception):
        text = str(exc)
        return next((why for code, why in DISK_ERRNOS.items() if os.strerror(code) in text), None)
    return None


def kept_message(final: str | Path) -> str:
    """What a failed atomic write of ``final`` leaves: the previous file or folder, or nothing at all."""
    if Path(final).exists():
        return f"nothing was lost: the previous {final} is unchanged"
    return f"nothing was lost: {final} was not created (no partial file is left)"


@contextmanager
def disk_errors(target: str | Path, kept: str) -> Iterator[None]:
    """Re-raise a disk failure inside the block (:func:`disk_failure`) as one :class:`DiskWriteError` line:
    ``FILE: no space left on device; KEPT``. Every other error passes unchanged."""
    try:
        yield
    except Exception as exc:
        why = disk_failure(exc)
        if why is None:
            raise
        where = getattr(exc, "filename", None) or target
        during = "" if str(where) == str(target) else f" while writing {target}"
        raise DiskWriteError(f"{where}: {why}{during}; {kept}") from exc


class RecordingFile:
    """A new file for a library that writes through a file object and mishandles a failed write (a full disk).

    The first failed write's ``OSError`` is recorded in :attr:`error` and hidden from the library (no method but
    :meth:`close` ever raises; later writes are dropped); the file is garbage from then on, and :meth:`close`
    raises the error. HDF5 (h5py's ``fileobj`` driver) cannot close a file after one of its writes failed: the id
    stays open and the process segfaults when it is collected (h5py issues #914, #2160;
    :func:`feature_extraction.writer.h5_for_writing`, :class:`feature_extraction.spool.ChunkFile`); ``torch.save``
    reports one as ``RuntimeError('unexpected pos ...')`` (:func:`engine.checkpoint.save_torch`). Positional I/O
    (``pread`` / ``pwrite`` at our own offset, as HDF5's default ``sec2`` driver does): no buffer to flush.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self.pos = 0
        self.error: OSError | None = None

    def _failed(self, exc: OSError) -> None:
        if self.error is None:
            exc.filename = exc.filename or str(self.path)
            self.error = exc

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while self.error is None and done < len(view):
            try:
                done += os.pwrite(self.fd, view[done:], self.pos + done)
            except OSError as exc:
                self._failed(exc)
        self.pos += len(view)
        return len(view)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        try:
            data = os.pread(self.fd, len(view), self.pos)
        except OSError as exc:
            self._failed(exc)
            data = b""
        view[:len(data)] = data
        self.pos += len(data)
        return len(data)

    def read(self, size: int = -1) -> bytes:
        buffer = bytearray(size if size >= 0 else max(0, os.fstat(self.fd).st_size - self.pos))
        return bytes(buffer[:self.readinto(buffer)])

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: os.fstat(self.fd).st_size}[whence]
        self.pos = base + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def truncate(self, size: int | None = None) -> int:
        size = self.pos if size is None else size
        if self.error is None:
            try:
                os.ftruncate(self.fd, size)
            except OSError as exc:
                self._failed(exc)
        return size

    def flush(self) -> None:
        pass  # nothing buffered here; durability is atomic_replace's fsync

    def close(self) -> None:
        """Close the OS file; raise the first failed write, if any."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.error is not None:
            raise self.error


def fsync_path(path: str | Path) -> None:
    """fsync a file or a directory by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_replace(tmp: str | Path, final: str | Path) -> None:
    """fsync ``tmp``, rename it over ``final``, fsync the directory (so the rename itself is durable)."""
    fsync_path(tmp)
    os.replace(tmp, final)
    fsync_path(Path(final).parent)


@contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """``open(path, mode)`` (UTF-8 text unless ``mode`` has ``b``) for a file written whole, in a stream: the block
    writes ``.NAME.tmp``, which replaces ``path`` (:func:`atomic_replace`) when the block ends cleanly; any error
    deletes it and leaves ``path`` as it was (a disk failure: one :class:`DiskWriteError` line, :func:`disk_errors`).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with disk_errors(path, kept_message(path)):
        try:
            with open(tmp, mode, encoding=None if "b" in mode else "utf-8") as f:
                yield f
            atomic_replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def fsync_tree(root: Path) -> None:
    """fsync every file below ``root`` and ``root`` itself."""
    for path in sorted(root.rglob("*")):
        if path.is_file():
            fsync_path(path)
    fsync_path(root)


def write_dir_atomically(final: str | Path, write: Callable[[Path], None],
                         before_swap: Callable[[], None] | None = None) -> Path:
    """Call ``write(tmp_dir)``, fsync it, then make it ``final`` (replacing an old one by two renames).

    A kill at any point leaves the old directory or the new one; between the two renames the old one is at
    ``.NAME.old`` (see :func:`complete_dir`). ``before_swap`` runs after the fsync (tests kill there).
    """
    final = Path(final)
    tmp, old = final.with_name(f".{final.name}.tmp"), final.with_name(f".{final.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    with disk_errors(final, kept_message(final)):
        tmp.mkdir(parents=True)
        try:
            write(tmp)
            fsync_tree(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    if before_swap is not None:
        before_swap()
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
    os.rename(tmp, final)
    fsync_path(final.parent)
    shutil.rmtree(old, ignore_errors=True)
    return final


def complete_dir(final: str | Path, marker: str) -> Path | None:
    """``final`` if it holds ``marker``, else ``.NAME.old`` if a kill between the two renames left it there."""
    final = Path(final)
    for candidate in (final, final.with_name(f".{final.name}.old")):
        if (candidate / marker).exists():
            return candidate
    return None


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether ``a`` and ``b`` name one file (through symlinks and hard links; by resolved path if one is missing)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def refuse_overwrite(path: str | Path, overwrite: bool, flag: str = "--out",
                     inputs: Iterable[str | Path] = ()) -> None:
    """The rule for every user-named output: an existing file is replaced only with ``--overwrite``, and never
    when it is one of the command's own ``inputs`` (not even with ``--overwrite``: the input is read while the
    output is written)."""
    for source in inputs:
        if same_file(path, source):
            raise UsageError(f"{flag} {path} is also an input of this command ({source}); write it elsewhere")
    if Path(path).exists() and not overwrite:
        raise UsageError(f"{flag} {path} already exists; pass --overwrite to replace it")


def check_writable_dir(directory: str | Path, flag: str = "--out") -> None:
    """Refuse early (one line) when an output folder cannot be created or written."""
    directory = Path(directory)
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"{flag} {directory}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {directory}: {probe} is not writable")
