"""Search a whole queries file into a run (``{query id: {doc id: score}}``) with stored query features."""

from __future__ import annotations

from collections.abc import Sequence

from tqdm import tqdm

from retrieval.formats import Query
from retrieval.querying.searcher import Searcher


def search_queries(searcher: Searcher, queries: Sequence[Query], features: object | None,
                   text_features: object | None, k: int, batch_size: int = 256,
                   progress: bool = True) -> dict[str, dict[str, float]]:
    """Encode ``queries`` in batches from the stored features (``features``: image feature store keyed by the
    queries' ``image``; ``text_features``: question features keyed by query id, for ``clip-text``) and rank."""
    if searcher.encoder is None:
        raise ValueError("the searcher has no query encoder")
    run: dict[str, dict[str, float]] = {}
    with tqdm(total=len(queries), unit="q", disable=not progress, desc="search") as bar:
        for start in range(0, len(queries), batch_size):
            chunk = queries[start : start + batch_size]
            vectors = searcher.encoder.encode_stored(chunk, features, text_features)  # (B, D)
            for q, ranked in zip(chunk, searcher.ranked(vectors, k)):
                run[q.id] = dict(ranked)
            bar.update(len(chunk))
    return run


def format_hits(hits: Sequence, width: int = 120) -> str:
    """rank, score, id, title, snippet: one line per hit (a :class:`~retrieval.querying.searcher.Hit`), cut to
    ``width`` characters."""
    if not hits:
        return "no results"
    id_w = min(24, max(2, *(len(h.id) for h in hits)))
    title_w = min(36, max(5, *(len(h.title) for h in hits)))
    lines = [f"{'rank':>4}  {'score':>7}  {'id':<{id_w}}  {'title':<{title_w}}  snippet"]
    for h in hits:
        line = f"{h.rank:>4}  {h.score:>7.4f}  {h.id[:id_w]:<{id_w}}  {h.title[:title_w]:<{title_w}}  {h.snippet}"
        lines.append(line if len(line) <= width else line[: width - 1] + "…")
    return "\n".join(lines)
