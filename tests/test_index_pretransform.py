"""OPQ / PCA pre-transforms: the wrapper's search (normalise → transform → inner index with the calibrated
``nprobe`` passed through ``SearchParametersPreTransform``) equals faiss' own pipeline applied by hand, and recall
against an exact Flat search on structured (low-rank, clustered) data stays where such a codec should be."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from faiss.contrib.evaluation import knn_intersection_measure

from retrieval.indexing import Index, IndexConfig, build_index
from retrieval.indexing.synthetic import clustered_vectors

K = 10


def low_rank(n: int, dim: int, rank: int, seed: int) -> np.ndarray:
    """Clustered points of a ``rank``-dim space embedded in ``dim`` dims (fixed basis) plus a little noise."""
    basis = np.linalg.qr(np.random.default_rng(99).standard_normal((dim, rank)))[0].T  # (R, D) orthonormal rows
    z = clustered_vectors(n, rank, seed=seed)  # (n, R)
    noise = 0.02 * np.random.default_rng(seed + 1).standard_normal((n, dim))
    return (z @ basis + noise).astype(np.float32)  # (n, D)


def rows_of(ids: np.ndarray) -> np.ndarray:
    return ids.astype(np.int64)


def by_hand(index: Index, q: np.ndarray, k: int, nprobe: int | None) -> np.ndarray:
    """Reference: normalise, apply the pre-transform chain, search the inner index with faiss directly."""
    pre = faiss.downcast_index(index.faiss_index)
    assert isinstance(pre, faiss.IndexPreTransform)
    x = q / np.linalg.norm(q, axis=1, keepdims=True)
    y = np.ascontiguousarray(x, dtype=np.float32)  # (Q, D)
    for i in range(pre.chain.size()):
        y = faiss.downcast_VectorTransform(pre.chain.at(i)).apply(y)  # (Q, d_out)
    inner = faiss.downcast_index(pre.index)
    params = faiss.SearchParametersIVF(nprobe=nprobe) if nprobe is not None else None
    _, rows = inner.search(y, k, params=params)
    return index.ids[rows]


def test_pca_flat_is_exact_search_in_pca_space_and_keeps_recall() -> None:
    x, q = low_rank(2000, 16, 6, seed=0), low_rank(200, 16, 6, seed=5)
    ids = [str(i) for i in range(len(x))]
    index = build_index(x, ids, IndexConfig(factory="PCA8,Flat"))
    storage = index.meta.build["storage"]
    assert storage["transforms"] == ["PCAMatrix 16->8"] and not storage["exact"]
    _, got = index.search(q, K)
    np.testing.assert_array_equal(got, by_hand(index, q, K, None))
    _, exact = build_index(x, ids, IndexConfig(factory="Flat")).search(q, K)
    recall = knn_intersection_measure(rows_of(exact), rows_of(got))
    assert recall >= 0.75, recall  # 6-dim structure kept by 8 principal directions; measured 0.81


@pytest.mark.slow  # OPQ training (50 rotations × an 8-bit PQ) takes ~8 s on 2 cores
def test_opq_ivf_pq_search_path(tmp_path) -> None:
    x, q = low_rank(2000, 16, 6, seed=0), low_rank(200, 16, 6, seed=5)
    ids = [str(i) for i in range(len(x))]
    index = build_index(x, ids, IndexConfig(factory="OPQ4,IVF8,PQ4x4", train_size=512))
    assert index.meta.build["storage"]["transforms"] == ["OPQMatrix 16->16"]
    assert index.meta.nprobe is not None and index.meta.build["nlist"] == 8
    _, got = index.search(q, K)
    np.testing.assert_array_equal(got, by_hand(index, q, K, index.meta.nprobe))  # default nprobe reaches the IVF
    _, one = index.search(q, K, nprobe=1)
    np.testing.assert_array_equal(one, by_hand(index, q, K, 1))  # per-call nprobe too
    _, exact = build_index(x, ids, IndexConfig(factory="Flat")).search(q, K)
    recall = knn_intersection_measure(rows_of(exact), rows_of(got))
    assert recall >= 0.3, recall  # 2 bytes/vector: lossy by design; measured 0.41
    if index.meta.nprobe > 1:
        assert recall >= knn_intersection_measure(rows_of(exact), rows_of(one))
    reloaded = Index.load(index.save(tmp_path / "opq"))
    np.testing.assert_array_equal(reloaded.search(q, K)[1], got)
