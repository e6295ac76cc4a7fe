"""Choose query-time search parameters (IVF ``nprobe``, HNSW ``efSearch``) by measured recall.

The faiss guidelines leave ``nprobe`` / ``efSearch`` to be tuned per dataset ("auto-tuning the runtime
parameters"); we do it once at build time. Calibration queries are KB vectors held out of the index until
calibration is done (so they are fresh, in-distribution queries; a KB vector already in an HNSW graph finds
itself and its links, which overstates recall), the reference is exhaustive search *of the same index*
(``nprobe = nlist``; for HNSW a scan of its flat storage), and recall@k is the faiss intersection measure
(``faiss.contrib.evaluation.knn_intersection_measure``). The smallest setting reaching ``target_recall`` becomes
the default written to ``index.json``.
"""

from __future__ import annotations

import logging
from typing import Any

import faiss
import numpy as np
from faiss.contrib.evaluation import knn_intersection_measure

from retrieval.indexing.config import IndexConfig, hnsw_of, ivf_of
from retrieval.indexing.index import search_parameters

logger = logging.getLogger(__name__)

EF_LADDER = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


def recall_at_k(reference: np.ndarray, found: np.ndarray) -> float:
    """Recall of the top-k ``found`` ids against the top-k ``reference`` ids (both (Q, k))."""
    return float(knn_intersection_measure(reference, found))


def _ivf_curve(index: faiss.Index, q: np.ndarray, k: int) -> dict[int, float]:
    nlist = int(ivf_of(index).nlist)
    _, ref = index.search(q, k, params=search_parameters(index, nlist, None))
    curve: dict[int, float] = {}
    probe = 1
    while True:
        _, found = index.search(q, k, params=search_parameters(index, probe, None))
        curve[probe] = round(recall_at_k(ref, found), 4)
        if probe >= nlist:
            return curve
        if curve[probe] >= 0.9999:
            return curve
        probe = min(nlist, probe * 2)


def _hnsw_curve(index: faiss.Index, q: np.ndarray, k: int) -> dict[int, float]:
    hnsw = hnsw_of(index)
    storage = faiss.downcast_index(hnsw.storage)  # flat (or SQ) storage: an exhaustive scan is the reference
    if isinstance(faiss.downcast_index(index), faiss.IndexPreTransform):
        q_in = faiss.downcast_index(index).apply(q)  # the HNSW level sees transformed vectors
    else:
        q_in = q
    _, ref = storage.search(q_in, k)
    curve: dict[int, float] = {}
    for ef in (e for e in EF_LADDER if e >= k):
        _, found = index.search(q, k, params=search_parameters(index, None, ef))
        curve[ef] = round(recall_at_k(ref, found), 4)
        if curve[ef] >= 0.9999:
            break
    return curve


def _pick(curve: dict[int, float], target: float, hint: str) -> int:
    for value, recall in sorted(curve.items()):
        if recall >= target:
            return value
    best = max(curve)
    logger.warning("calibration never reached recall %.3f (best %.3f at %d); using %d — %s", target, curve[best],
                   best, best, hint)
    return best


def needs_calibration(index: faiss.Index, cfg: IndexConfig) -> bool:
    return (ivf_of(index) is not None and cfg.nprobe is None) or (hnsw_of(index) is not None and cfg.ef_search is None)


def calibrate(index: faiss.Index, queries: np.ndarray, cfg: IndexConfig) -> dict[str, Any]:
    """Default ``nprobe`` / ``ef_search`` for ``index`` from held-out KB vectors used as queries."""
    k = min(cfg.calibration_k, int(index.ntotal))
    out: dict[str, Any] = {}
    if len(queries) == 0 or index.ntotal < 1:
        return out
    if ivf_of(index) is not None and cfg.nprobe is None:
        curve = _ivf_curve(index, queries, k)
        out["nprobe"] = _pick(curve, cfg.target_recall, "nprobe=nlist should be exhaustive")
        out["curve"] = {"param": "nprobe", "k": k, "target": cfg.target_recall, "recall": curve}
    elif hnsw_of(index) is not None and cfg.ef_search is None:
        curve = _hnsw_curve(index, queries, k)
        out["ef_search"] = _pick(curve, cfg.target_recall, "raise ef_construction or HNSW M for a better graph")
        out["curve"] = {"param": "efSearch", "k": k, "target": cfg.target_recall, "recall": curve}
    if "curve" in out:
        logger.info("calibrated %s=%s (recall@%d vs exhaustive %s)", out["curve"]["param"],
                    out.get("nprobe", out.get("ef_search")), k, out["curve"]["recall"])
    return out
