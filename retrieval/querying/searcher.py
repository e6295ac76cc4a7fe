"""The in-process searcher: query vectors -> faiss top-k -> hits with KB titles and snippets.

Used by the search CLI, the server and the benchmarks (the server must answer exactly what this answers).

**Article -> passage mapping** (ViQuAE, Lerner et al. SIGIR 2022, ``meerqat/ir/search.py`` ``map_indices``): when
the KB's images belong to articles but the answers are passages (many per article), the index holds one vector
per article and ``--passages`` lists ``{"id", <article field>, "title"?, "text"?}`` records. Every retrieved
article hands its score to all of its passages, in rank order; ViQuAE extends the list article by article and stops
once it holds k passages (so its list may run past k). Here the list is cut at exactly k; passages of one article
keep the order of the passages file. As in meerqat, the n-th passage of the list (0-based) scores its article's
score minus ``n·ε`` (:data:`PASSAGE_EPSILON`): the list is strictly decreasing, so a TREC file, ranx or a fusion
that sorts by score keeps this order instead of breaking the ties of one article by docid (``'1000'`` < ``'998'``).
With several images per article (index ids ``{article}{sep}{n}``, ``--article-sep``) a passage keeps the best of its
article's image scores: the max.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from retrieval.formats import FormatError, KBEntry, iter_jsonl, read_kb
from retrieval.indexing import Index
from retrieval.querying.encoders import QueryEncoderLike
from foundations.errors import UserError

logger = logging.getLogger(__name__)

SNIPPET_CHARS = 200
PASSAGE_EPSILON = 1e-9  # per-rank decrement of mapped passage scores: far below faiss' float32 score resolution


@dataclass
class Hit:
    rank: int
    score: float
    id: str
    title: str = ""
    snippet: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def snippet(text: str, limit: int = SNIPPET_CHARS) -> str:
    """The first ``limit`` characters of ``text`` on one line, cut at a word boundary, with an ellipsis."""
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    cut = flat[:limit].rsplit(" ", 1)[0] or flat[:limit]
    return cut + "…"


class PassageMap:
    """Article id -> its passages (in file order), and the passages' own entries for titles and snippets."""

    def __init__(self, passages: dict[str, list[str]], entries: dict[str, KBEntry], article_sep: str | None = None
                 ) -> None:
        self.passages, self.entries, self.article_sep = passages, entries, article_sep
        self.article_of_passage = {pid: article for article, pids in passages.items() for pid in pids}

    def article_of(self, index_id: str) -> str:
        """The article an index entry belongs to: its id, or the part before ``article_sep`` (``Q42#1`` -> ``Q42``
        with ``#``, for several images per article)."""
        return index_id.split(self.article_sep, 1)[0] if self.article_sep else index_id

    @classmethod
    def from_jsonl(cls, path: str | Path, article_field: str = "article", article_sep: str | None = None
                   ) -> PassageMap:
        passages: dict[str, list[str]] = {}
        entries: dict[str, KBEntry] = {}
        for where, obj in iter_jsonl(path):
            if not isinstance(obj, dict) or obj.get("id") in (None, "") or obj.get(article_field) in (None, ""):
                raise FormatError(f"{where}: expected an object with 'id' and {article_field!r} (the article's id "
                                  "in the index)")
            pid = str(obj["id"])
            if pid in entries:
                raise FormatError(f"{where}: duplicate passage id {pid!r}")
            passages.setdefault(str(obj[article_field]), []).append(pid)
            entries[pid] = KBEntry(pid, str(obj.get("title") or ""), str(obj.get("text") or ""))
        if not entries:
            raise FormatError(f"{path}: no passages")
        logger.info("%s: %d passages of %d articles", path, len(entries), len(passages))
        return cls(passages, entries, article_sep)

    def expand(self, index_ids: Sequence[str], scores: Sequence[float], k: int) -> list[tuple[str, float]]:
        """(passage id, score) for ranked index hits: each article's score goes to its passages (max over the
        article's hits, i.e. its first one, since hits come best first), minus ``rank·ε`` so that the list is
        strictly decreasing in list order; at most ``k`` passages."""
        out: list[tuple[str, float]] = []
        seen: set[str] = set()
        for index_id, score in zip(index_ids, scores):
            article = self.article_of(index_id)
            if article in seen:
                continue
            seen.add(article)
            for pid in self.passages.get(article, ()):
                out.append((pid, float(score) - PASSAGE_EPSILON * len(out)))
                if len(out) == k:
                    return out
        return out


class Searcher:
    """Index + KB (+ passage map) + an optional query encoder. Thread-safe for concurrent searches."""

    def __init__(self, index: Index, kb: dict[str, KBEntry], encoder: QueryEncoderLike | None = None,
                 passages: PassageMap | None = None) -> None:
        self.index, self.kb, self.encoder, self.passages = index, kb, encoder, passages

    @staticmethod
    def read_kb(path: str | Path | None) -> dict[str, KBEntry]:
        return {e.id: e for e in read_kb(path)} if path else {}

    def entry(self, doc_id: str) -> KBEntry | None:
        if self.passages is not None and doc_id in self.passages.entries:
            passage = self.passages.entries[doc_id]
            if passage.title or passage.text:
                return passage
        return self.kb.get(doc_id)

    def image_entry_id(self, doc_id: str) -> str | None:
        """The KB id whose image illustrates a hit: the hit's own, or (passages) its article's."""
        if doc_id in self.kb:
            return doc_id
        if self.passages is not None:
            article = self.passages.article_of_passage.get(doc_id)
            return article if article in self.kb else None
        return None

    def ranked(self, vectors: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """(id, score) lists for (Q, D) query vectors, best first; passages when a passage map is set."""
        if vectors.ndim != 2 or vectors.shape[1] != self.index.dim:
            name = self.encoder.spec if self.encoder is not None else "the query encoder"
            raise UserError(f"{name} makes vectors of shape {vectors.shape[1:]}, the index holds dim "
                             f"{self.index.dim} (encoder and index must share one CLIP space)")
        if self.passages is None:
            scores, ids = self.index.search(vectors, k)  # (Q, k), (Q, k)
            return [[(i, s) for i, s in zip(row_ids, row_scores) if i] for row_ids, row_scores in
                    zip(ids.tolist(), scores.tolist())]  # tolist: plain str/float at C speed
        out: list[list[tuple[str, float]]] = [[] for _ in range(len(vectors))]
        todo, n_articles = list(range(len(vectors))), min(k, len(self.index))
        while todo:  # k articles give k passages unless some articles have none: then look further
            scores, ids = self.index.search(vectors[todo], n_articles)
            for row, q in enumerate(todo):
                out[q] = self.passages.expand([i for i in ids[row].tolist() if i], scores[row].tolist(), k)
            todo = [q for q in todo if len(out[q]) < k] if n_articles < len(self.index) else []
            n_articles = min(2 * n_articles, len(self.index))
        return out

    def hits(self, ranked: list[tuple[str, float]]) -> list[Hit]:
        hits = []
        for rank, (doc_id, score) in enumerate(ranked, 1):
            e = self.entry(doc_id)
            hits.append(Hit(rank, score, doc_id, e.title if e else "", snippet(e.text) if e else ""))
        return hits

    def search_vectors(self, vectors: np.ndarray, k: int) -> list[list[Hit]]:
        return [self.hits(r) for r in self.ranked(vectors, k)]

    def search(self, question: str | None, image: Image.Image | None, k: int) -> list[Hit]:
        """Encode one query with the encoder and return its top-``k`` hits."""
        if self.encoder is None:
            raise ValueError("this searcher has no query encoder")
        vector = self.encoder.encode_query(question, image)  # (D,)
        return self.search_vectors(vector[None, :], k)[0]


def open_searcher(index_dir: str | Path, kb_path: str | Path | None, encoder_spec: str | None, *,
                  backbone: str | None = None, device: str = "cpu", passages: str | Path | None = None,
                  article_field: str = "article", article_sep: str | None = None, nprobe: int | None = None,
                  ef_search: int | None = None) -> Searcher:
    """Load an index directory, a KB, an encoder (:func:`load_encoder` spec) and an optional passage map."""
    from retrieval.querying.backbone_ref import index_record
    from retrieval.querying.encoders import load_encoder

    index = Index.load(index_dir, nprobe=nprobe, ef_search=ef_search)
    encoder = None
    if encoder_spec:
        encoder = load_encoder(encoder_spec, index_record=index_record(index.meta.source, index_dir),
                               backbone=backbone, device=device)
    pmap = PassageMap.from_jsonl(passages, article_field, article_sep) if passages else None
    return Searcher(index, Searcher.read_kb(kb_path), encoder, pmap)
