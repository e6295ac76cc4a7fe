"""Shared pieces of the importers: streamed record reading (JSON array or JSONL, optionally gzip), skip
accounting with reasons, and id helpers.

A *record* error (a field missing or of the wrong type) skips that record and is counted with its reason; a *file*
error (missing file, broken JSON array syntax) is fatal and raises :class:`ImportFormatError` naming the file.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

from foundations import jsonl
from retrieval.formats import FormatError

logger = logging.getLogger(__name__)

CHUNK = 1 << 20
MAX_RECORD = 64 << 20  # a JSON-array record that does not decode within this many characters is broken


class ImportFormatError(FormatError):
    """A source file that cannot be read at all (fatal). The message names the file."""


class RecordError(ValueError):
    """One malformed record: it is skipped and counted."""


@dataclass
class ImportStats:
    """Counts of what an import wrote and skipped, with one example per skip reason."""

    read: int = 0
    written: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    notes: Counter = field(default_factory=Counter)  # not errors: e.g. queries without any positive

    def skip(self, where: str, reason: str) -> None:
        self.skipped[reason] += 1
        self.examples.setdefault(reason, where)

    def summary(self, what: str) -> str:
        parts = [f"{self.written} {what} written from {self.read} records"]
        if self.skipped:
            total = sum(self.skipped.values())
            reasons = "; ".join(f"{n} × {r} (e.g. {self.examples[r]})" for r, n in self.skipped.most_common())
            parts.append(f"skipped {total}: {reasons}")
        parts += [f"{n} {note}" for note, n in self.notes.items()]
        return ", ".join(parts[:1]) + ("; " + "; ".join(parts[1:]) if parts[1:] else "")


def open_text(path: str | Path) -> IO[str]:
    """A UTF-8 stream of ``path`` (gzip-decompressed for ``.gz``); a missing file is an :class:`ImportFormatError`."""
    return jsonl.open_text(path, ImportFormatError)


def iter_records(path: str | Path, *, array: bool = False) -> Iterator[tuple[str, Any]]:
    """``(where, record)`` from a JSON array (streamed, ``where`` = ``file[#i]``) or JSONL (``file:line``).

    A JSONL line that is not JSON yields a :class:`RecordError` as the record (skippable); broken array syntax
    raises :class:`ImportFormatError` (the rest of the array cannot be trusted), and so does anything but an array
    at the top level when ``array`` is set (a source whose format is a JSON array, e.g. DPR's ``.json``).
    """
    with jsonl.decoding(path, ImportFormatError), open_text(path) as f:
        head = f.read(CHUNK)
        if head.lstrip().startswith("["):
            yield from _iter_array(path, f, head)
            return
        if array:
            found = {"{": "a JSON object", "": "nothing (an empty file)"}.get(head.lstrip()[:1], "no JSON array")
            raise ImportFormatError(f"{path}: the top level holds {found}; expected a JSON array of records [{{...}}, "
                                    "...] (or a .jsonl file with one record per line)")
    for where, record in jsonl.scan_jsonl(path):  # the toolkit's one JSONL reader; a bad line is skippable here
        if isinstance(record, jsonl.JSONLError):
            record = RecordError(str(record).removeprefix(f"{where}: "))
        yield where, record


def _iter_array(path: str | Path, f: IO[str], buf: str) -> Iterator[tuple[str, Any]]:
    decoder = json.JSONDecoder()
    pos = buf.index("[") + 1
    i = 0
    while True:
        while True:  # skip whitespace and separators, refilling the buffer as needed
            while pos < len(buf) and buf[pos] in " \t\r\n,":
                pos += 1
            if pos < len(buf):
                break
            chunk = f.read(CHUNK)
            if not chunk:
                raise ImportFormatError(f"{path}: JSON array is not closed (after {i} records)")
            buf, pos = buf[pos:] + chunk, 0
        if buf[pos] == "]":
            return
        while True:
            try:
                obj, end = decoder.raw_decode(buf, pos)
                break
            except json.JSONDecodeError as exc:
                chunk = f.read(CHUNK) if len(buf) - pos < MAX_RECORD else ""
                if not chunk:
                    raise ImportFormatError(f"{path}: invalid JSON in record #{i} ({exc.msg})") from None
                buf, pos = buf[pos:] + chunk, 0
        yield f"{path}[#{i}]", obj
        i += 1
        buf, pos = buf[end:], 0


def require(record: Any, key: str, kind: type | tuple[type, ...], what: str) -> Any:
    """``record[key]`` if present and of ``kind``; otherwise a RecordError naming the field."""
    if not isinstance(record, dict):
        raise RecordError("record is not a JSON object")
    if key not in record or record[key] is None:
        raise RecordError(f"missing '{key}' ({what})")
    value = record[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise RecordError(f"'{key}' is not {what}")
    return value


def image_id(name: str | None, mode: str) -> str | None:
    """An image file name as a feature-file id: ``stem`` drops the suffix (the ``--images DIR`` convention of
    clip_prepro_feats.py), ``name`` keeps it."""
    if name is None or name == "":
        return None
    if mode == "name":
        return name
    path = PurePosixPath(name)
    return str(path.with_suffix("")) if path.suffix else name
