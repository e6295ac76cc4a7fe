"""Training data: frozen KB vectors, validated queries, query features (batches: :mod:`.batches`).

* :func:`load_kb` — KB ids + L2-normalised CLIP vectors (image ``fc``, text ``fc`` or their mean) in KB order.
* :func:`load_queries` — queries whose image is in the feature file and whose positives are in the KB.
* :func:`open_features` — a feature file, held in memory when it fits (so the loader is never the bottleneck).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from feature_extraction.readers import open_features as read_feature_file
from feature_extraction.store import FeatureFileError, FeatureStore, MemoryFeatureStore
from retrieval.formats import KBEntry, Query, read_kb, read_queries
from foundations.errors import UserError
from foundations.rows import normalise_rows

logger = logging.getLogger(__name__)


@dataclass
class KBVectors:
    ids: list[str]
    vectors: np.ndarray  # (N, D) float32, rows L2-normalised

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def row_of(self) -> dict[str, int]:
        return {kb_id: n for n, kb_id in enumerate(self.ids)}


def _kb_rows(entries: list[KBEntry], store: FeatureStore, use_image_path: bool) -> list[str | None]:
    """The feature-file id of each entry: its KB id, else (image features) its image path without suffix/dir."""
    out: list[str | None] = []
    for e in entries:
        keys = [e.id]
        if use_image_path and e.image:
            keys += [Path(e.image).with_suffix("").as_posix(), Path(e.image).stem]
        out.append(next((k for k in keys if k in store), None))
    return out


def _side_vectors(entries: list[KBEntry], path: str, image: bool) -> np.ndarray:
    store = read_feature_file(path)
    try:
        keys = _kb_rows(entries, store, image)
        missing = [e.id for e, k in zip(entries, keys) if k is None]
        if missing:
            raise FeatureFileError(f"{path}: {len(missing)} of {len(entries)} KB entries have no features "
                                   f"(first: {missing[:5]}); ids must be KB ids" + (" or image paths" if image else ""))
        return np.asarray(store.get_many([k for k in keys if k is not None]).fc, dtype=np.float32)
    finally:
        store.close()


def load_kb(kb_path: str, image_features: str | None, text_features: str | None, side: str) -> KBVectors:
    """KB ids and normalised vectors: ``image`` fc, ``text`` fc, or ``mean`` of the two normalised vectors."""
    entries = read_kb(kb_path)
    if not entries:
        raise UserError(f"{kb_path}: the knowledge base is empty")
    parts = []
    if side in ("image", "mean"):
        parts.append(normalise_rows(_side_vectors(entries, image_features or "", image=True)))
    if side in ("text", "mean"):
        parts.append(normalise_rows(_side_vectors(entries, text_features or "", image=False)))
    if len({p.shape[1] for p in parts}) > 1:
        raise UserError(f"KB image features ({image_features}) and text features ({text_features}) have different "
                         f"dims {[p.shape[1] for p in parts]}: they must come from the same CLIP model")
    vectors = normalise_rows(np.mean(parts, axis=0))
    logger.info("KB: %d entries, %s vectors of dim %d", len(entries), side, vectors.shape[1])
    return KBVectors([e.id for e in entries], vectors)


def clip_signature(path: str) -> tuple[int, str | None]:
    """(fc dim, recorded ``backbone_sha256`` or None) of a feature file, reading one row."""
    store = read_feature_file(path)
    try:
        if not len(store):
            raise FeatureFileError(f"{path}: the feature file holds no items")
        return feature_dims(store)[0], store.attrs.get("backbone_sha256") or None
    finally:
        store.close()


def check_same_clip(files: dict[str, str | None]) -> None:
    """``{flag: feature file}``: every file must hold vectors of one CLIP space, the same fc dim and, where both
    files record it, the same backbone sha256 as the first (the KB's). Run before training writes anything."""
    reference: tuple[str, str, int, str | None] | None = None
    for flag, path in files.items():
        if not path:
            continue
        dim, sha = clip_signature(path)
        if reference is None:
            reference = (flag, path, dim, sha)
            continue
        ref_flag, ref_path, ref_dim, ref_sha = reference
        if dim != ref_dim:
            raise UserError(f"{flag} {path} holds vectors of dim {dim}, {ref_flag} {ref_path} of dim {ref_dim}: KB "
                            "and query features must come from the same CLIP model")
        if sha and ref_sha and sha != ref_sha:
            raise UserError(f"{flag} {path} was extracted with backbone sha256 {sha[:12]}..., {ref_flag} {ref_path} "
                            f"with {ref_sha[:12]}...: KB and query features must come from the same CLIP model")


def check_training_features(kb_features: str | None, kb_text_features: str | None, kb_side: str,
                            query_features: str | None, question_features: str | None) -> None:
    """:func:`check_same_clip` over the files a training run (or the baselines) reads."""
    check_same_clip({"--kb-features": kb_features if kb_side in ("image", "mean") else None,
                     "--kb-text-features": kb_text_features if kb_side in ("text", "mean") else None,
                     "--query-features": query_features, "--question-features": question_features})


def load_queries(path: str, kb_ids: set[str], store: FeatureStore | None, split: str) -> list[Query]:
    """Queries of ``path``, checked: an image in the feature store, positives in the KB. Unknown hard negatives
    are dropped (logged); a query with no positive in the KB is an error naming it."""
    queries = read_queries(path)
    if not queries:
        raise UserError(f"{path}: no queries")
    dropped = 0
    for q in queries:
        if q.image is None:
            raise UserError(f"{path}: query {q.id!r} has no image; the joint encoder needs one per query")
        if store is not None and q.image not in store:
            raise FeatureFileError(f"{store.path}: image {q.image!r} of {split} query {q.id!r} ({path}) is not in "
                                   "the query feature file")
        unknown = [p for p in q.positives if p not in kb_ids]
        if unknown:
            raise UserError(f"{path}: query {q.id!r} has positives not in the KB: {unknown[:5]}")
        kept = [n for n in q.hard_negatives if n in kb_ids and n not in q.positives]
        dropped += len(q.hard_negatives) - len(kept)
        q.hard_negatives = kept
    if dropped:
        logger.warning("%s: dropped %d hard negatives that are not in the KB (or are positives)", path, dropped)
    return queries


def feature_bytes(store: FeatureStore) -> int:
    """Bytes of fc + grid once held as float32."""
    first = store.get_many(store.ids[:1])
    per_row = first.fc.size + (first.grid.size if first.grid is not None else 0)
    return 4 * per_row * len(store)


def open_features(path: str, cache: str = "auto", max_gb: float = 4.0) -> FeatureStore:
    store = read_feature_file(path)
    if cache == "yes" or (cache == "auto" and feature_bytes(store) <= max_gb * 2**30):
        memory = MemoryFeatureStore.from_store(store)
        store.close()
        logger.info("%s: %d items held in memory", path, len(memory))
        return memory
    return store


def feature_dims(store: FeatureStore) -> tuple[int, int | None, int | None]:
    """(fc dim, grid tokens, grid channels); the grid ones are None without a grid."""
    first = store.get_many(store.ids[:1])
    if first.grid is None:
        return int(first.fc.shape[1]), None, None
    return int(first.fc.shape[1]), int(first.grid.shape[1]), int(first.grid.shape[2])
