"""KILT-like Wikipedia → our KB JSONL (Petroni et al., NAACL 2021; ViQuAE's KB follows the same layout).

Two record shapes are accepted, detected per record:

* **articles** (KILT knowledge source / ``kilt_wikipedia`` / ViQuAE's KB): ``{"wikipedia_id", "wikipedia_title",
  "text": [paragraphs] | {"paragraph": [paragraphs]}, "image"?}``. ``--split paragraph`` (default) writes one entry
  per paragraph with id ``{wikipedia_id}_{paragraph number}``; ``--split article`` one entry per article
  (id = ``wikipedia_id``). KILT's first paragraph repeats the title and ``Section::::`` lines are headings: both are
  left out of the text.
* **passages** (e.g. ``PaulLerner/viquae_v4-alpha_passages``: ``{"passage", "index"}``, or
  ``{"id"|"_id"|"passage_id"?, "title"|"wikipedia_title"?, "text"}``). Without an id field the id is the record's
  row number (0-based, malformed rows included), which is what ViQuAE's ``provenance_indices`` refer to. ``index``
  is the row of the passage's article; ``--articles`` (the article file) then supplies title and image.

Every passage entry (paragraphs of an article, passage records whose article is known) carries ``"article"``: the id
its article gets from ``--split article`` with the same ``--id-prefix`` (``{id_prefix}{wikipedia_id}``). That is the
field :class:`retrieval.querying.PassageMap` reads (``--passages`` of search / serve), so the importer's output maps
article hits of an article-level index (ids = the article KB ids) to passages without hand edits.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from retrieval.formats import KBEntry
from retrieval.importers.common import ImportStats, RecordError, image_id, iter_records
from foundations.errors import UserError

logger = logging.getLogger(__name__)

PASSAGE_ID_KEYS = ("id", "_id", "passage_id")


def _paragraphs(record: dict) -> list[str] | None:
    text = record.get("text")
    if isinstance(text, dict):
        text = text.get("paragraph")
    if isinstance(text, list):
        if not all(isinstance(p, str) for p in text):
            raise RecordError("'text' paragraphs are not all strings")
        return text
    return None


def _content(paragraphs: list[str], title: str) -> list[tuple[int, str]]:
    out = []
    for n, para in enumerate(paragraphs):
        para = para.strip()
        if not para or para.startswith("Section::::") or (n == 0 and para == title.strip()):
            continue
        out.append((n, para))
    return out


class ArticleRow(NamedTuple):
    """One row of an article file: title, image id and ``wikipedia_id`` (None when the row has none)."""

    title: str
    image: str | None
    id: str | None = None


def article_table(path: str | Path, image_mode: str) -> list[ArticleRow]:
    """(title, image id, wikipedia_id) for every article row of a KILT-like article file, in row order."""
    rows: list[ArticleRow] = []
    for _, record in iter_records(path):
        if isinstance(record, dict):
            image = record.get("image") if isinstance(record.get("image"), str) else None
            wid = record.get("wikipedia_id", record.get("_id"))
            rows.append(ArticleRow(str(record.get("wikipedia_title") or record.get("title") or ""),
                                   image_id(image, image_mode), None if wid in (None, "") else str(wid)))
        else:
            rows.append(ArticleRow("", None))
    return rows


def _passage(record: dict, row: int, articles: Sequence[tuple[str, str | None] | ArticleRow] | None,
             image_mode: str) -> KBEntry:
    text = record.get("passage", record.get("text"))
    if not isinstance(text, str) or not text.strip():
        raise RecordError("no passage text ('passage' or 'text' string)")
    pid = next((str(record[k]) for k in PASSAGE_ID_KEYS if record.get(k) not in (None, "")), str(row))
    title: Any = record.get("wikipedia_title", record.get("title"))
    image: Any = record.get("image")
    wid: Any = record.get("wikipedia_id")
    if articles is not None and record.get("index") is not None:
        article = record["index"]
        if not isinstance(article, int) or isinstance(article, bool) or not 0 <= article < len(articles):
            raise RecordError(f"'index' {article!r} is not an article row of --articles")
        title, image = title or articles[article][0], image or articles[article][1]
        if wid in (None, "") and isinstance(articles[article], ArticleRow):
            wid = articles[article].id
    image = image_id(image, image_mode) if isinstance(image, str) else None
    return KBEntry(id=pid, title=str(title or ""), text=text.strip(), image=image,
                   article=None if wid in (None, "") else str(wid))


def kilt_entries(path: str | Path, stats: ImportStats, *, split: str = "paragraph", id_prefix: str = "",
                 articles: Sequence[tuple[str, str | None] | ArticleRow] | None = None,
                 image_mode: str = "stem") -> Iterator[KBEntry]:
    """KB entries from articles (split by paragraph or not) or passage records; passages carry ``article``."""
    if split not in ("paragraph", "article"):
        raise UserError(f"--split must be 'paragraph' or 'article', got {split!r}")
    for row, (where, record) in enumerate(iter_records(path)):
        stats.read += 1
        try:
            if isinstance(record, RecordError):
                raise record
            if not isinstance(record, dict):
                raise RecordError("record is not a JSON object")
            paragraphs = _paragraphs(record)
            if paragraphs is None:
                entry = _passage(record, row, articles, image_mode)
                article = None if entry.article is None else id_prefix + entry.article
                if article is None:
                    stats.notes["passages without an article id (no 'wikipedia_id', no 'index' into --articles)"] += 1
                entries = [KBEntry(id=id_prefix + entry.id, title=entry.title, text=entry.text, image=entry.image,
                                   article=article)]
            else:
                wid = record.get("wikipedia_id", record.get("_id"))
                if wid in (None, ""):
                    raise RecordError("article without 'wikipedia_id'")
                title = str(record.get("wikipedia_title") or "")
                image = image_id(record["image"], image_mode) if isinstance(record.get("image"), str) else None
                content = _content(paragraphs, title)
                if not content:
                    raise RecordError("article without any text paragraph")
                if split == "article":
                    entries = [KBEntry(id=f"{id_prefix}{wid}", title=title, text="\n".join(p for _, p in content),
                                       image=image)]
                else:
                    entries = [KBEntry(id=f"{id_prefix}{wid}_{n}", title=title, text=p, image=image,
                                       article=f"{id_prefix}{wid}") for n, p in content]
        except RecordError as exc:
            stats.skip(where, str(exc))
            continue
        stats.written += len(entries)
        yield from entries
