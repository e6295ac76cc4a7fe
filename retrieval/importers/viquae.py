"""ViQuAE question records → our queries JSONL (Lerner et al., SIGIR 2022; PaulLerner/ViQuAE).

Source fields (dataset card ``PaulLerner/viquae_dataset`` and meerqat's code): ``id``, ``input`` (the question),
``image`` (file name of the picture, e.g. ``512px-Jackie_Wilson.png``), ``output`` (``original_answer``,
``answer``: aliases), ``kilt_id``, ``wikidata_id``, ``url``, ``meta``. Relevance is added by meerqat's IR steps as
lists of *passage indices* (rows of the passages dataset): ``provenance_indices`` (passages containing an answer),
``original_answer_provenance_indices``, ``BM25_provenance_indices`` / ``BM25_irrelevant_indices``,
``search_provenance_indices`` / ``search_irrelevant_indices``. Which columns to use is a flag; passage ids are the
indices as strings (optionally prefixed), matching ``importers kilt`` on the passages file (row number ids).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from retrieval.formats import Query
from retrieval.importers.common import ImportStats, RecordError, image_id, iter_records, require

logger = logging.getLogger(__name__)


def _indices(record: dict, key: str, required: bool) -> list[str]:
    if key not in record or record[key] is None:
        if required:
            raise RecordError(f"missing '{key}' (relevant passage indices)")
        return []
    value = record[key]
    if not isinstance(value, list) or not all(isinstance(v, (int, str)) and not isinstance(v, bool) for v in value):
        raise RecordError(f"'{key}' is not a list of passage indices")
    return [str(v) for v in value]


def viquae_queries(path: str | Path, stats: ImportStats, *, positives_field: str = "provenance_indices",
                   negatives_field: str | None = None, passage_prefix: str = "",
                   image_mode: str = "stem") -> Iterator[Query]:
    for where, record in iter_records(path):
        stats.read += 1
        try:
            if isinstance(record, RecordError):
                raise record
            qid = require(record, "id", (str, int), "a question id")
            question = require(record, "input", str, "the question string").strip()
            if not question:
                raise RecordError("empty 'input'")
            image: Any = record.get("image")
            if image is not None and not isinstance(image, str):
                raise RecordError("'image' is not a file name")
            positives = _indices(record, positives_field, required=True)
            negatives = _indices(record, negatives_field, required=False) if negatives_field else []
        except RecordError as exc:
            stats.skip(where, str(exc))
            continue
        if image is None:
            stats.notes["questions without image"] += 1
        if not positives:
            stats.notes[f"questions with empty '{positives_field}' (kept; left out of qrels)"] += 1
        positives = list(dict.fromkeys(passage_prefix + p for p in positives))
        negatives = [n for n in dict.fromkeys(passage_prefix + p for p in negatives) if n not in positives]
        stats.written += 1
        yield Query(id=str(qid), question=question, image=image_id(image, image_mode), positives=positives,
                    hard_negatives=negatives)
