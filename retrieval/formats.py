"""User-facing file formats of the retrieval room (DESIGN.md §3) and their validation.

* KB JSONL: one ``{"id", "title", "text", "image"?, "article"?}`` object per line (``article``: a passage's article
  id in an article-level index, read by ``retrieval.querying.PassageMap``).
* Queries JSONL: ``{"id", "question", "image", "positives": [kb ids], "hard_negatives"?: [kb ids]}``; ``image`` is
  an id in a feature file, or ``null`` for text-only questions (e.g. imported from DPR).
* TREC run: ``qid Q0 docid rank score tag`` (trec_eval's format, also what ranx's ``Run.from_file`` reads); ids
  with whitespace cannot be written (refused, :func:`check_trec_field`), an empty run file is refused on reading.
* TREC qrels: ``qid 0 docid rel``; in memory qrels and runs are ranx-compatible ``{qid: {docid: value}}`` dicts.

Every error is one line naming ``file:line`` and what was expected. Batch readers can skip bad lines instead of
raising (``skip_bad=True``); they then log one warning with the count and keep the reasons in a
:class:`ReadStats`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from foundations import jsonl
from foundations.errors import UserError
from foundations.io import atomic_open
from foundations.jsonl import ReadStats

logger = logging.getLogger(__name__)

Run = dict[str, dict[str, float]]  # {qid: {docid: score}}
Qrels = dict[str, dict[str, int]]  # {qid: {docid: relevance}}


class FormatError(UserError):
    """A malformed input file. The message names ``file:line`` and what was expected."""


@dataclass
class KBEntry:
    id: str
    title: str
    text: str
    image: str | None = None
    article: str | None = None  # passages: the id of their article in an article-level index (PassageMap)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "title": self.title, "text": self.text}
        if self.image is not None:
            out["image"] = self.image
        if self.article is not None:
            out["article"] = self.article
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
        raise FormatError(f"{where}: expected a JSON object {{'id', 'title', 'text', 'image'?, 'article'?}}")
    return KBEntry(id=_str(obj, "id", where), title=_str(obj, "title", where, empty=True),
                   text=_str(obj, "text", where, empty=True), image=_str(obj, "image", where, required=False),
                   article=_str(obj, "article", where, required=False))


def parse_query(obj: Any, where: str) -> Query:
    if not isinstance(obj, dict):
        raise FormatError(f"{where}: expected a JSON object {{'id', 'question', 'image', 'positives', ...}}")
    return Query(id=_str(obj, "id", where), question=_str(obj, "question", where),
                 image=_str(obj, "image", where, required=False),
                 positives=_id_list(obj, "positives", where, required=True),
                 hard_negatives=_id_list(obj, "hard_negatives", where, required=False))


# -- JSONL (the toolkit's one reader: foundations.jsonl) -----------------------------------------------------
def iter_jsonl(path: str | Path) -> Iterator[tuple[str, Any]]:
    """``(where, object)`` for every non-blank line; ``where`` is ``file:line``. Bad JSON raises FormatError."""
    try:
        yield from jsonl.iter_jsonl(path)
    except jsonl.JSONLError as exc:
        raise FormatError(str(exc)) from None


def read_kb(path: str | Path, *, skip_bad: bool = False, stats: ReadStats | None = None) -> list[KBEntry]:
    """All KB entries of a JSONL file (ids unique)."""
    return jsonl.read_records(path, parse_kb_entry, skip_bad=skip_bad, stats=stats, error=FormatError)


def read_queries(path: str | Path, *, skip_bad: bool = False, stats: ReadStats | None = None) -> list[Query]:
    """All queries of a JSONL file (ids unique)."""
    return jsonl.read_records(path, parse_query, skip_bad=skip_bad, stats=stats, error=FormatError)


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
    n = 0
    with jsonl.decoding(path, FormatError, where=lambda: f"{path}:{n + 1}"), path.open(encoding="utf-8") as f:
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
    if not run:
        raise FormatError(f"{path}: empty run (no 'qid Q0 docid rank score tag' lines): nothing to evaluate or fuse")
    return run


def check_trec_field(value: str, what: str, where: str | Path) -> None:
    """A TREC file is whitespace-separated: an id that is empty or holds whitespace (a space, TAB, newline, or a
    leading / trailing one) would silently shift or split its line, so it is refused naming ``where`` and the id."""
    if not value or value.split() != [value]:
        problem = "is empty" if not value else "contains whitespace"
        raise FormatError(f"{where}: {what} {value!r} {problem}; a TREC file cannot hold it (use ids without "
                          "spaces, TABs or newlines)")


def _check_trec_ids(path: str | Path, table: Mapping[str, Mapping[str, Any]], doc: str) -> None:
    for qid, docs in table.items():
        check_trec_field(qid, "query id", path)
        for docid in docs:
            check_trec_field(docid, f"{doc} of query {qid!r}", path)


def format_score(score: float) -> str:
    """The shortest text that reads back as exactly ``score`` (Python's float repr): two distinct scores never
    print alike, so the order a run was written in survives ``read_trec_run`` and ranx's ``Run.from_file``.
    Whole numbers drop the ``.0`` (``-3``)."""
    text = repr(float(score))
    return text[:-2] if text.endswith(".0") else text


def write_trec_run(path: str | Path, run: Mapping[str, Mapping[str, float]], tag: str = "vlt5") -> None:
    """Write ``run`` ranked by decreasing score; scores are written exactly (:func:`format_score`), and only
    exactly equal scores fall back on docid order (a string order: ``'1000'`` before ``'998'``). Ids and tag are
    checked first (:func:`check_trec_field`); the file is written atomically."""
    _check_trec_ids(path, run, "document id")
    check_trec_field(tag, "run tag", path)
    with atomic_open(path) as f:
        for qid, docs in run.items():
            ranked = sorted(docs.items(), key=lambda kv: (-kv[1], kv[0]))
            for rank, (docid, score) in enumerate(ranked, 1):
                f.write(f"{qid} Q0 {docid} {rank} {format_score(score)} {tag}\n")


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
    _check_trec_ids(path, qrels, "document id")
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
