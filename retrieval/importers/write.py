"""Write imported records as JSONL: streamed, ids unique (a repeat is skipped and counted), atomic."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from foundations.errors import UserError
from foundations.io import atomic_replace, disk_errors, kept_message
from retrieval.formats import KBEntry, Query
from retrieval.importers.common import ImportStats


def _first_skip(stats: ImportStats) -> UserError:
    reason, where = next(iter(stats.examples.items()))
    return UserError(f"{where}: {reason}")


def write_unique(path: Path, records: Iterable[Query | KBEntry], stats: ImportStats, strict: bool) -> None:
    """Stream records to JSONL (``PATH.part``, then renamed; not when no record was valid); a repeated id is
    skipped and counted like any malformed record; ``strict`` stops at the first skip."""
    with disk_errors(path, kept_message(path)):  # a full disk: one line naming the output, the old file kept
        _write(path.with_name(path.name + ".part"), path, records, stats, strict)


def _write(tmp: Path, path: Path, records: Iterable[Query | KBEntry], stats: ImportStats, strict: bool) -> None:
    seen: set[str] = set()
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for record in records:
                if strict and stats.skipped:
                    raise _first_skip(stats)
                if record.id in seen:
                    stats.written -= 1
                    stats.skip(record.id, "duplicate id")
                    if strict:
                        raise UserError(f"duplicate id {record.id!r}")
                    continue
                seen.add(record.id)
                f.write(json.dumps(record.to_json(), ensure_ascii=False) + "\n")
        if strict and stats.skipped:
            raise _first_skip(stats)
        if seen:  # nothing valid: an existing file is kept as it was (the caller reports the error)
            atomic_replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
