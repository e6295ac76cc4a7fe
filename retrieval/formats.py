"""User-facing file formats of the retrieval room (DESIGN.md §3) and their validation.

* KB JSONL: one ``{"id", "title", "text", "image"?}`` object per line.
* Queries JSONL: ``{"id", "question", "image", "positives": [kb ids], "hard_negatives"?: [kb ids]}``; ``image`` is
  an id in a feature file, or ``null`` for text-only questions (e.g. imported from DPR).
* TREC run: ``qid Q0 docid rank score tag`` (trec_eval's format, also what ranx's ``Run.from_file`` reads).
* TREC qrels: ``qid 0 docid rel``; in memory qrels and runs are ranx-compatible ``{qid: {docid: value}}`` dicts.

Every error is one line naming ``file:line`` and what was expected. Batch readers can skip bad lines instead of
raising (``skip_bad=True``); they then log one warning with the count and keep the reasons in a
:class:`ReadStats`. CLIs wrap their ``main`` in :func:`exit_on_user_error` so a user error never ends in a traceback.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

Run = dict[str, dict[str, float]]  # {qid: {docid: score}}
Qrels = dict[str, dict[str, int]]  # {qid: {docid: relevance}}


class FormatError(ValueError):
    """A malformed input file. The message names ``file:line`` and what was expected."""


@dataclass
class KBEntry:
    id: str
    title: str
    text: str
    image: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "title": self.title, "text": self.text}
        if self.image is not None:
            out["image"] = self.image
        return out


@dataclass
class Query:
    id: str
    question: str
    image: str | None
    positives: list[str]
    hard_negatives: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "question": self.question, "image": self.image,
                               "positives": self.positives}
        if self.hard_negatives:
            out["hard_negatives"] = self.hard_negatives
        return out


@dataclass
class ReadStats:
    """What a lenient reader skipped: ``skipped`` lines and the first reasons (``file:line: why``)."""

    read: int = 0
    skipped: int = 0
    reasons: list[str] = field(default_factory=list)

    def skip(self, reason: str, keep: int = 20) -> None:
        self.skipped += 1
        if len(self.reasons) < keep:
            self.reasons.append(reason)


# -- field checks ----------------------------------------------------------------------------------------------
def _str(obj: Mapping[str, Any], key: str, where: str, *, required: bool = True, empty: bool = False) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise FormatError(f"{where}: missing field {key!r} (expected a string)")
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and key == "id":
        value = str(value)  # numeric ids are common in exported data; ids are compared as strings
    if not isinstance(value, str):
        raise FormatError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    if not empty and not value.strip():
        raise FormatError(f"{where}: field {key!r} is empty")
    return value


def _id_list(obj: Mapping[str, Any], key: str, where: str, *, required: bool) -> list[str]:
    value = obj.get(key)
    if value is None:
        if required:
            raise FormatError(f"{where}: missing field {key!r} (expected a list of KB ids)")
        return []
    if not isinstance(value, list) or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
        raise FormatError(f"{where}: field {key!r} must be a list of KB ids (strings)")
    return [str(v) for v in value]


def parse_kb_entry(obj: Any, where: str) -> KBEntry:
    if not isinstance(obj, dict):
        raise FormatError(f"{where}: expected a JSON object {{'id', 'title', 'text', 'image'?}}")
    return KBEntry(id=_str(obj, "id", where), title=_str(obj, "title", where, empty=True),
                   text=_str(obj, "text", where, empty=True), image=_str(obj, "image", where, required=False))


def parse_query(obj: Any, where: str) -> Query:
    if not isinstance(obj, dict):
        raise FormatError(f"{where}: expected a JSON object {{'id', 'question', 'image', 'positives', ...}}")
    return Query(id=_str(obj, "id", where), question=_str(obj, "question", where),
                 image=_str(obj, "image", where, required=False),
                 positives=_id_list(obj, "positives", where, required=True),
                 hard_negatives=_id_list(obj, "hard_negatives", where, required=False))


# -- JSONL -----------------------------------------------------------------------------------------------------
T = TypeVar("T")


def _scan_jsonl(path: str | Path) -> Iterator[tuple[str, Any]]:
    """``(where, object)`` per non-blank line; a line that is not JSON yields a :class:`FormatError` as object."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: no such file")
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as exc:
                yield where, FormatError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})")


def iter_jsonl(path: str | Path) -> Iterator[tuple[str, Any]]:
    """``(where, object)`` for every non-blank line; ``where`` is ``file:line``. Bad JSON raises FormatError."""
    for where, obj in _scan_jsonl(path):
        if isinstance(obj, FormatError):
            raise obj
        yield where, obj


def _read_records(path: str | Path, parse: Callable[[Any, str], T], skip_bad: bool,
                  stats: ReadStats | None) -> list[T]:
    stats = stats if stats is not None else ReadStats()
    out: list[T] = []
    seen: dict[str, str] = {}
    for where, obj in _scan_jsonl(path):
        try:
            if isinstance(obj, FormatError):
                raise obj
            record = parse(obj, where)
            rid = record.id  # type: ignore[attr-defined]
            if rid in seen:
                raise FormatError(f"{where}: duplicate id {rid!r} (first seen at {seen[rid]})")
            seen[rid] = where
        except FormatError as exc:
            if not skip_bad:
                raise
            stats.skip(str(exc))
            continue
        stats.read += 1
        out.append(record)
    if stats.skipped:
        logger.warning("%s: skipped %d bad line(s); first: %s", path, stats.skipped, stats.reasons[0])
    return out


def read_kb(path: str | Path, *, skip_bad: bool = False, stats: ReadStats | None = None) -> list[KBEntry]:
    """All KB entries of a JSONL file (ids unique)."""
    return _read_records(path, parse_kb_entry, skip_bad, stats)


def read_queries(path: str | Path, *, skip_bad: bool = False, stats: ReadStats | None = None) -> list[Query]:
    """All queries of a JSONL file (ids unique)."""
    return _read_records(path, parse_query, skip_bad, stats)


def write_jsonl(path: str | Path, records: Iterable[KBEntry | Query | Mapping[str, Any]]) -> int:
    """Write one JSON object per line (UTF-8, not ASCII-escaped); returns the number written."""
    n = 0
    with Path(path).open("w", encoding="utf-8") as f:
        for r in records:
            obj = r.to_json() if isinstance(r, (KBEntry, Query)) else dict(r)
            f.write(json.dumps(obj, ensure_ascii=False) + "\n")
            n += 1
    return n


# -- TREC runs and qrels ---------------------------------------------------------------------------------------
def _trec_rows(path: str | Path, kind: str, columns: str) -> Iterator[tuple[str, list[str]]]:
    """(``file:line``, whitespace-split fields) of every non-blank line, each checked to have ``columns``."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: no such {kind} file")
    width = len(columns.split())
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != width:
                raise FormatError(f"{path}:{n}: expected {width} columns '{columns}', got {len(parts)}")
            yield f"{path}:{n}", parts


def read_trec_run(path: str | Path) -> Run:
    """``qid Q0 docid rank score tag`` lines → ``{qid: {docid: score}}``."""
    run: Run = {}
    for where, (qid, _, docid, rank, score, _) in _trec_rows(path, "run", "qid Q0 docid rank score tag"):
        try:
            int(rank)
            value = float(score)
        except ValueError:
            raise FormatError(f"{where}: rank must be an integer and score a number") from None
        if not math.isfinite(value):
            raise FormatError(f"{where}: score must be finite, got {score}")
        if docid in run.setdefault(qid, {}):
            raise FormatError(f"{where}: document {docid!r} listed twice for query {qid!r}")
        run[qid][docid] = value
    return run


def write_trec_run(path: str | Path, run: Mapping[str, Mapping[str, float]], tag: str = "vlt5") -> None:
    """Write ``run`` ranked by decreasing score (ties broken by docid for a stable file)."""
    with Path(path).open("w", encoding="utf-8") as f:
        for qid, docs in run.items():
            ranked = sorted(docs.items(), key=lambda kv: (-kv[1], kv[0]))
            for rank, (docid, score) in enumerate(ranked, 1):
                f.write(f"{qid} Q0 {docid} {rank} {score:.6g} {tag}\n")


def read_trec_qrels(path: str | Path) -> Qrels:
    """``qid 0 docid rel`` lines → ``{qid: {docid: rel}}`` (rel ≤ 0 lines are kept out: not relevant)."""
    qrels: Qrels = {}
    for where, (qid, _, docid, rel) in _trec_rows(path, "qrels", "qid 0 docid rel"):
        try:
            value = int(rel)
        except ValueError:
            raise FormatError(f"{where}: relevance must be an integer, got {rel!r}") from None
        if value > 0:
            qrels.setdefault(qid, {})[docid] = value
    return qrels


def write_trec_qrels(path: str | Path, qrels: Mapping[str, Mapping[str, int]]) -> None:
    with Path(path).open("w", encoding="utf-8") as f:
        for qid, docs in qrels.items():
            for docid, rel in docs.items():
                f.write(f"{qid} 0 {docid} {int(rel)}\n")


def qrels_from_queries(queries: Iterable[Query]) -> Qrels:
    """Relevance 1 for every positive; queries without positives are left out (they cannot be scored)."""
    qrels: Qrels = {}
    dropped = 0
    for q in queries:
        if q.positives:
            qrels[q.id] = {p: 1 for p in q.positives}
        else:
            dropped += 1
    if dropped:
        logger.info("left %d quer(ies) without positives out of the qrels", dropped)
    return qrels


def load_qrels(path: str | Path) -> Qrels:
    """Qrels from a queries JSONL (``*.jsonl``: its positives) or a TREC qrels file (anything else)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return qrels_from_queries(read_queries(path))
    return read_trec_qrels(path)


# -- CLI helper ------------------------------------------------------------------------------------------------
F = TypeVar("F", bound=Callable[..., Any])


def exit_on_user_error(main: F) -> F:
    """Turn user errors (bad files, bad flags: ``ValueError``/``OSError``) into one ``error: ...`` line, exit 2."""

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        except (ValueError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper  # type: ignore[return-value]
