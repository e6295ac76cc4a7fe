"""Build an :class:`~retrieval.indexing.index.Index` from vectors streamed in batches (never loaded whole).

Two passes over the stream when the index needs training (IVF / PQ / OPQ, faiss guidelines): pass 1 keeps a
uniform random sample of rows chosen up front (bounded by ``train_size``), the index is trained on it; pass 2
normalises and adds each batch. A bounded set of KB rows is also kept as leave-one-out calibration queries:
after the build, ``nprobe`` / ``efSearch`` default to the smallest value whose recall@k against exhaustive search
of the same index reaches ``target_recall`` (see :mod:`retrieval.indexing.tuning`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import faiss
import numpy as np

from retrieval.indexing.config import (IndexConfig, IndexConfigError, default_train_size, hnsw_of,
                                       make_faiss_index, training_needs)
from retrieval.indexing.index import (Index, IndexMeta, describe, gpu_clone_settings, gpu_cloner_options,
                                      gpu_supported, normalise_rows, to_cpu)
from retrieval.indexing.tuning import calibrate, needs_calibration
from foundations.errors import UserError

logger = logging.getLogger(__name__)

BatchSource = Callable[[], Iterable[np.ndarray]]  # returns a fresh iterator of (B, D) arrays, in id order


def check_unique_ids(ids: Sequence[str] | np.ndarray, where: str = "ids") -> np.ndarray:
    """The ids as a (N,) unicode array; a duplicate raises naming the first duplicated id and its rows."""
    array = np.asarray(ids, dtype=str)  # (N,) unicode: 4 bytes × longest id per row, no Python objects
    if array.ndim != 1:
        raise UserError(f"{where}: ids must be a flat list of strings")
    empty = np.flatnonzero(array == "")
    if len(empty):
        raise UserError(f"{where}: empty KB id at row {empty[0]} ('' marks a missing search result)")
    order = np.argsort(array, kind="stable")
    ranked = array[order]
    dup = np.flatnonzero(ranked[1:] == ranked[:-1])
    if len(dup):
        first = min(dup, key=lambda i: order[i + 1])  # the duplicate met first in file order
        rows = np.sort(order[first : first + 2])
        raise UserError(f"{where}: duplicate KB id {str(ranked[first])!r} at rows {rows[0]} and {rows[1]}")
    return array


def bad_rows(batch: np.ndarray) -> np.ndarray:
    """Rows of a (B, D) batch that are all zero or hold a NaN / inf: such a vector can never be retrieved (it
    scores 0 or NaN against every query), so it is refused, or skipped with ``skip_bad_vectors``."""
    return np.flatnonzero(~(np.isfinite(batch).all(axis=1) & (batch != 0).any(axis=1)))


def _as_source(vectors: np.ndarray | BatchSource, batch_size: int) -> BatchSource:
    if callable(vectors):
        return vectors
    array = vectors

    def batches() -> Iterator[np.ndarray]:
        for start in range(0, len(array), batch_size):
            yield array[start : start + batch_size]

    return batches


def _collect_rows(source: BatchSource, wanted: np.ndarray, dim: int, normalize: bool) -> np.ndarray:
    """Rows ``wanted`` (sorted row numbers) from one pass over the stream, as a (len(wanted), D) float32 array."""
    out = np.empty((len(wanted), dim), dtype=np.float32)
    offset = filled = 0
    for batch in source():
        stop = offset + len(batch)
        hi = np.searchsorted(wanted, stop)
        take = wanted[filled:hi] - offset
        out[filled:hi] = batch[take]
        filled, offset = hi, stop
    if filled != len(wanted):
        raise UserError(f"the vector stream ended after {offset} rows, before row {wanted[filled]}")
    if normalize:
        faiss.normalize_L2(out)
    return out


def build_index(vectors: np.ndarray | BatchSource, ids: Sequence[str], cfg: IndexConfig, *,
                source: dict | None = None) -> Index:
    """Build an index over ``vectors`` (an array, or a callable returning a fresh batch iterator per pass)."""
    t0 = time.perf_counter()
    ids_array = check_unique_ids(ids, (source or {}).get("path", "ids"))
    n = len(ids_array)
    if n == 0:
        raise UserError("cannot build an index over zero vectors")
    batches = _as_source(vectors, cfg.batch_size)
    first = next(iter(batches()))
    if first.ndim != 2:
        raise UserError(f"vector batches must be 2-d (B, D), got shape {first.shape}")
    dim = int(first.shape[1])
    del first
    factory = cfg.resolved_factory
    index = make_faiss_index(dim, factory)
    rng = np.random.default_rng(cfg.seed)
    build: dict = {"faiss_version": faiss.__version__, **describe(index)}
    if hnsw_of(index) is not None:
        hnsw_of(index).hnsw.efConstruction = cfg.ef_construction

    if not index.is_trained:
        minimum, recommended = training_needs(index)
        train_size = min(n, cfg.train_size or default_train_size(index, n))
        if train_size < minimum:
            have = f"the input has {n} vectors" if n < minimum else f"train_size is {train_size}"
            raise IndexConfigError(f"factory {factory!r} needs at least {minimum} training vectors (faiss "
                                   f"recommends {recommended}); {have}. Use a smaller nlist / PQ nbits or more data")
        if train_size < recommended:
            logger.warning("training %r on %d vectors; faiss recommends ≥ %d", factory, train_size, recommended)
        rows = np.sort(rng.choice(n, size=train_size, replace=False))
        sample = _collect_rows(batches, rows, dim, cfg.normalize)  # (T, D)
        sample = np.delete(sample, bad_rows(sample), axis=0)  # refused or skipped by the add pass below
        t_train = time.perf_counter()
        index = _train(index, sample, cfg.use_gpu, build)
        build.update(train_size=int(train_size), train_seconds=round(time.perf_counter() - t_train, 3))
        del sample

    # Calibration rows are held out of the first add pass: they query an index that does not contain them (fresh,
    # in-distribution queries), then are added last. ids.npy therefore lists ids in index order, not file order.
    # Zero / non-finite rows are never added (see bad_rows): without skip_bad_vectors they are refused after the pass.
    where = (source or {}).get("path", "vectors")
    n_cal = min(cfg.calibration_queries, n - 1) if needs_calibration(index, cfg) else 0
    cal_rows = np.sort(rng.choice(n, size=n_cal, replace=False))
    cal_parts: list[np.ndarray] = []  # (C_i, D) valid calibration rows, in row order
    bad_parts: list[np.ndarray] = []  # row numbers of zero / non-finite vectors
    t_add, seen, filled = time.perf_counter(), 0, 0
    for batch in batches():
        if batch.ndim != 2 or batch.shape[1] != dim:
            raise UserError(f"batch at row {seen} has shape {batch.shape}, expected (B, {dim})")
        x = normalise_rows(batch) if cfg.normalize else np.ascontiguousarray(batch, dtype=np.float32)  # (B, D)
        good = np.ones(len(x), dtype=bool)
        bad = bad_rows(batch)
        good[bad] = False
        bad_parts.append(seen + bad)
        hi = int(np.searchsorted(cal_rows, seen + len(x)))
        is_cal = np.zeros(len(x), dtype=bool)
        is_cal[cal_rows[filled:hi] - seen] = True  # calibration rows are kept aside, the rest added
        filled = hi
        cal_parts.append(x[is_cal & good])
        index.add(x[~is_cal & good])
        seen += len(batch)
    if seen != n:
        raise UserError(f"{where}: {seen} vectors for {n} ids")
    bad_all = np.concatenate(bad_parts) if bad_parts else np.empty(0, dtype=np.int64)
    if len(bad_all):
        shown = ", ".join(repr(str(i)) for i in ids_array[bad_all[:5]]) + (" ..." if len(bad_all) > 5 else "")
        if not cfg.skip_bad_vectors or len(bad_all) == n:
            raise UserError(f"{where}: {len(bad_all)} of {n} vectors are zero or not finite (ids {shown}); they could "
                            "never be retrieved: fix the features, or skip them with --skip-bad-vectors")
        logger.warning("%s: skipped %d zero or non-finite vectors (ids %s)", where, len(bad_all), shown)
        build["skipped_vectors"] = {"count": int(len(bad_all)), "ids": [str(i) for i in ids_array[bad_all[:100]]]}
    cal = np.concatenate(cal_parts) if cal_parts else np.empty((0, dim), dtype=np.float32)  # (C, D)
    cal_kept = np.setdiff1d(cal_rows, bad_all)
    index = to_cpu(index)  # calibrate with CPU SearchParameters (GPU indexes do not take them)
    tuned = calibrate(index, cal, cfg) if len(cal) else {}
    if len(cal):
        index.add(cal)
    order = np.concatenate([np.setdiff1d(np.arange(n), np.union1d(cal_rows, bad_all)), cal_kept])  # faiss → input
    build["add_seconds"] = round(time.perf_counter() - t_add, 3)
    n, n_cal = len(order), len(cal)

    meta = IndexMeta(dim=dim, count=n, factory=factory, config=cfg, nprobe=cfg.nprobe, ef_search=cfg.ef_search,
                     normalised=cfg.normalize, source=source or {}, build=build)
    for name, value in tuned.items():
        if name in ("nprobe", "ef_search") and getattr(meta, name) is None:
            setattr(meta, name, value)
    build["calibration"] = {**tuned.get("curve", {}), "queries": n_cal}
    build["seconds"] = round(time.perf_counter() - t0, 3)
    ids_array = ids_array[order]  # (N,) unicode in index order, saved without pickle
    logger.info("built %s over %d × %d in %.1fs (nprobe=%s, efSearch=%s)", factory, n, dim, build["seconds"],
                meta.nprobe, meta.ef_search)
    return Index(index, ids_array, meta)


def _train(index: faiss.Index, sample: np.ndarray, use_gpu: bool, build: dict) -> faiss.Index:
    if use_gpu and gpu_supported(index):  # guarded path: needs faiss-gpu and a visible GPU
        logger.info("training and adding on %d GPU(s)", faiss.get_num_gpus())
        build["gpu_clone"] = gpu_clone_settings(index).to_dict()
        index = faiss.index_cpu_to_all_gpus(index, co=gpu_cloner_options(index))
    index.train(sample)
    return index


def build_index_from_features(path: str | Path, cfg: IndexConfig) -> Index:
    """Stream ``fc`` of a feature file (FeatureStore.batches) into an index; the file's attrs go to index.json."""
    from feature_extraction.readers import open_features

    with open_features(path) as store:
        ids = store.ids

        def batches() -> Iterator[np.ndarray]:
            for feats in store.batches(cfg.batch_size):
                if feats.fc is None:
                    raise UserError(f"{path}: no 'fc' vectors to index")
                yield feats.fc  # (B, D)

        source = {"path": str(Path(path).resolve()), "attrs": dict(store.attrs)}
        return build_index(batches, ids, cfg, source=source)
