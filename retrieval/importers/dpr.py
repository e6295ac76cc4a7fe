"""DPR retriever data → our queries (and KB) JSONL.

Source format (Karpukhin et al., 2020; facebookresearch/DPR ``biencoder-*.json``): a JSON array of
``{"dataset"?, "question", "answers", "positive_ctxs", "negative_ctxs", "hard_negative_ctxs"}``; each context is
``{"title", "text", "score"?, "title_score"?, "passage_id" | "psg_id"?}``: DPR's README schema has no id field at
all (only its released NQ/TriviaQA files carry ``passage_id``), so a context without an id gets a stable one from
its content, ``ctx-`` + the first 16 hex digits of sha1(title + "\n" + text) (:func:`content_id`; the same passage
gets the same id in every record and every file); the import counts them in its summary and logs a note.
DPR questions have no id and no image:
ids are ``{prefix}{record number}`` and ``image`` is null. ``negative_ctxs`` (random / BM25 negatives) are not hard
negatives in our sense and are only used to fill the KB. The passages TSV (``psgs_w100.tsv``: ``id``, ``text``,
``title`` with a header) can be converted to a KB too.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from retrieval.formats import KBEntry, Query
from foundations import jsonl
from retrieval.importers.common import (ImportFormatError, ImportStats, RecordError, iter_records, open_text,
                                        require)

logger = logging.getLogger(__name__)

CTX_ID_KEYS = ("passage_id", "psg_id", "id")
CONTENT_ID_NOTE = "contexts without an id (id = ctx- + sha1 of title and text)"


def content_id(title: str, text: str) -> str:
    """A stable id for a context that has none: ``ctx-`` + 16 hex digits of sha1(title + newline + text)."""
    return "ctx-" + hashlib.sha1(f"{title}\n{text}".encode("utf-8")).hexdigest()[:16]


def context_id(ctx: Any, stats: ImportStats | None = None) -> str:
    """The context's ``passage_id`` / ``psg_id`` / ``id``, else :func:`content_id` of its title and text (counted in
    ``stats.notes``)."""
    if not isinstance(ctx, dict):
        raise RecordError("a context is not a JSON object")
    for key in CTX_ID_KEYS:
        if ctx.get(key) not in (None, ""):
            return str(ctx[key])
    text = ctx.get("text")
    if not isinstance(text, str) or not text.strip():
        raise RecordError("a context has no 'passage_id' / 'psg_id' and no 'text' to derive an id from")
    if stats is not None:
        stats.notes[CONTENT_ID_NOTE] += 1
    return content_id(str(ctx.get("title") or ""), text)


def _contexts(record: dict, key: str) -> list[dict]:
    value = record.get(key, [])
    if value is None:
        return []
    if not isinstance(value, list):
        raise RecordError(f"'{key}' is not a list of contexts")
    return value


def dpr_queries(path: str | Path, stats: ImportStats, *, prefix: str = "dpr",
                kb: dict[str, KBEntry] | None = None) -> Iterator[Query]:
    """Queries from a DPR JSON file (a ``.json`` must hold DPR's array; JSONL is read line by line); when ``kb`` is
    given, every context seen is added to it (first text wins)."""
    array = Path(path).name.endswith((".json", ".json.gz"))  # DPR's biencoder-*.json: a JSON array
    for n, (where, record) in enumerate(iter_records(path, array=array)):
        stats.read += 1
        try:
            if isinstance(record, RecordError):
                raise record
            question = require(record, "question", str, "a question string").strip()
            if not question:
                raise RecordError("empty 'question'")
            groups = {key: _contexts(record, key) for key in ("positive_ctxs", "hard_negative_ctxs", "negative_ctxs")}
            derived = ImportStats()
            ids = {key: [context_id(c, derived) for c in ctxs] for key, ctxs in groups.items()}
        except RecordError as exc:
            stats.skip(where, str(exc))
            continue
        stats.notes.update(derived.notes)  # counted only for records that are kept
        if not ids["positive_ctxs"]:
            stats.notes["queries without positive_ctxs (kept; left out of qrels)"] += 1
        if kb is not None:
            for key, ctxs in groups.items():
                for ctx, cid in zip(ctxs, ids[key]):
                    if cid not in kb and isinstance(ctx.get("text"), str):
                        kb[cid] = KBEntry(id=cid, title=str(ctx.get("title") or ""), text=ctx["text"])
        stats.written += 1
        positives = list(dict.fromkeys(ids["positive_ctxs"]))
        negatives = [c for c in dict.fromkeys(ids["hard_negative_ctxs"]) if c not in positives]
        yield Query(id=f"{prefix}{n}", question=question, image=None, positives=positives, hard_negatives=negatives)
    if stats.notes[CONTENT_ID_NOTE]:
        logger.info("%s: %d %s", path, stats.notes[CONTENT_ID_NOTE], CONTENT_ID_NOTE)


def dpr_passages(path: str | Path, stats: ImportStats) -> Iterator[KBEntry]:
    """KB entries from DPR's ``id<TAB>text<TAB>title`` passages file (header line optional)."""
    with jsonl.decoding(path, ImportFormatError), open_text(path) as f:
        reader = csv.reader(f, delimiter="\t", quotechar='"')
        for n, row in enumerate(reader, 1):
            where = f"{path}:{n}"
            if n == 1 and row[:1] == ["id"]:
                continue
            stats.read += 1
            if len(row) != 3 or not row[0].strip():
                stats.skip(where, "expected 3 tab-separated columns id, text, title")
                continue
            stats.written += 1
            yield KBEntry(id=row[0].strip(), title=row[2], text=row[1])
    if stats.read == 0:
        raise ImportFormatError(f"{path}: no passages")
