"""One JSONL reader for the toolkit, with one policy for bad lines.

``scan_jsonl(path)`` yields ``(where, object)`` per non-blank line (``where`` = ``file:line``; ``.gz`` files are
decompressed); a line that is not JSON yields a :class:`JSONLError` in place of the object, so a caller decides.
``read_records(path, parse, skip_bad=...)`` is the policy: parse each line into a record with a unique ``id``;
a bad line either raises (naming the file and line) or — in a batch job — is skipped, logged and counted in
:class:`ReadStats`.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

from foundations.errors import UserError

logger = logging.getLogger(__name__)
T = TypeVar("T")


class JSONLError(UserError):
    """A malformed line or file; the message names ``file:line`` and what was expected."""


@dataclass
class ReadStats:
    """How many records were read and skipped (with the first few reasons)."""

    read: int = 0
    skipped: int = 0
    reasons: list[str] = field(default_factory=list)

    def skip(self, reason: str, keep: int = 20) -> None:
        self.skipped += 1
        if len(self.reasons) < keep:
            self.reasons.append(reason)


def open_text(path: str | Path, error: type[UserError] = JSONLError) -> IO[str]:
    """A UTF-8 text stream of ``path`` (gzip-decompressed for ``.gz``); a missing file raises ``error``."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such file")
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return path.open(encoding="utf-8")


@contextmanager
def decoding(path: str | Path, error: type[UserError] = JSONLError, where: Callable[[], str] | None = None
             ) -> Iterator[None]:
    """Reading ``path`` as text inside the block: bytes that are not UTF-8 and a truncated or non-gzip ``.gz``
    raise ``error`` naming the file (``where()`` gives the position, e.g. ``file:line``)."""
    try:
        yield
    except UnicodeDecodeError as exc:
        raise error(f"{where() if where else path}: not UTF-8 text ({exc.reason})") from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise error(f"{path}: truncated or not a gzip file ({exc})") from None


def scan_jsonl(path: str | Path) -> Iterator[tuple[str, Any]]:
    """``(where, object)`` per non-blank line; a line that is not JSON yields a :class:`JSONLError` as object.
    A file that cannot be decoded at all (not UTF-8, a broken ``.gz``) raises :class:`JSONLError`."""
    n = 0
    with decoding(path, where=lambda: f"{path}:{n + 1}"), open_text(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as exc:
                yield where, JSONLError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})")


def iter_jsonl(path: str | Path) -> Iterator[tuple[str, Any]]:
    """``(where, object)`` for every non-blank line; the first bad line raises :class:`JSONLError`."""
    for where, obj in scan_jsonl(path):
        if isinstance(obj, JSONLError):
            raise obj
        yield where, obj


def read_records(path: str | Path, parse: Callable[[Any, str], T], *, skip_bad: bool = False,
                 stats: ReadStats | None = None, error: type[UserError] = JSONLError) -> list[T]:
    """Every line of ``path`` parsed by ``parse(obj, where)`` (which raises ``error`` for a bad record), ids unique.

    ``skip_bad=False``: the first bad line raises. ``skip_bad=True``: bad lines are skipped, counted in ``stats``
    and summarised in one warning naming the file.
    """
    stats = stats if stats is not None else ReadStats()
    out: list[T] = []
    seen: dict[str, str] = {}
    for where, obj in scan_jsonl(path):
        try:
            if isinstance(obj, JSONLError):
                raise error(str(obj))
            record = parse(obj, where)
            rid = record.id  # type: ignore[attr-defined]
            if rid in seen:
                raise error(f"{where}: duplicate id {rid!r} (first seen at {seen[rid]})")
            seen[rid] = where
        except (error, JSONLError) as exc:
            if not skip_bad:
                raise
            stats.skip(str(exc))
            continue
        stats.read += 1
        out.append(record)
    if stats.skipped:
        logger.warning("%s: skipped %d bad line(s); first: %s", path, stats.skipped, stats.reasons[0])
    return out
