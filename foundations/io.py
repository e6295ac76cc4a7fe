"""Atomic, durable writes: a reader (or a killed run) sees the old file or the new one, never half of one.

``atomic_write_text`` / ``atomic_write_bytes`` write ``PATH.tmp``, fsync, ``os.replace`` and fsync the folder;
``write_dir_atomically`` does the same for a whole directory (write ``.NAME.tmp``, fsync the tree, swap by two
renames, ``.NAME.old`` kept only between them); ``refuse_overwrite`` is the one rule for user-named outputs.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from foundations.errors import UsageError


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


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        atomic_replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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


def refuse_overwrite(path: str | Path, overwrite: bool, flag: str = "--out") -> None:
    """The rule for every user-named output: an existing file is replaced only with ``--overwrite``."""
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
