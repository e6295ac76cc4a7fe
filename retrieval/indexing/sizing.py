"""Sizing report: bytes per vector, RAM for N vectors and recall@k vs Flat, per faiss factory (DESIGN.md §6).

Each factory is built on a sample (our builder, so with the calibrated default ``nprobe`` / ``efSearch``). Bytes
per vector are *measured*: the serialised index is weighed after adding half and all of the sample, and the slope
is the per-vector cost (codes + IVF ids + HNSW links); the intercept is the fixed cost (centroids, codebooks, OPQ
matrix). RAM for N = fixed + N × per-vector, plus the id array (N × longest id × 4 bytes, numpy unicode).
``faiss.contrib.factory_tools.get_code_size`` gives the code size for comparison. IVF factories with more lists
than the sample can train (≥ 39 per list, faiss guideline) are measured with ``nlist`` scaled down to the sample
and the fixed cost of the full ``nlist`` added back (centroids: nlist × d × 4 bytes); the row says so.
Recall on a sample is optimistic for a larger N (more near neighbours compete): read it as an upper bound.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import asdict, dataclass

import faiss
import numpy as np
from faiss.contrib.factory_tools import get_code_size

from retrieval.indexing.builder import build_index
from retrieval.indexing.config import MIN_POINTS_PER_CENTROID, IndexConfig
from retrieval.indexing.tuning import recall_at_k

logger = logging.getLogger(__name__)


@dataclass
class SizingRow:
    factory: str
    measured_as: str  # the factory actually built on the sample (nlist may be scaled down)
    bytes_per_vector: float
    code_size: int | None  # faiss.contrib.factory_tools.get_code_size, when it can parse the factory
    fixed_bytes: int
    ram_bytes: int  # for n_target vectors, ids included
    recall_at_k: float
    k: int
    build_seconds: float
    queries_per_second: float
    search_param: str  # "nprobe=…" / "efSearch=…" / ""

    def to_dict(self) -> dict:
        return asdict(self)


def scaled_factory(factory: str, n_sample: int) -> tuple[str, int, int]:
    """(factory to build on the sample, full nlist, sample nlist); nlist shrinks to ≤ n_sample / 39."""
    match = re.search(r"IVF(\d+)", factory)
    if not match:
        return factory, 0, 0
    nlist = int(match.group(1))
    fit = max(1, n_sample // MIN_POINTS_PER_CENTROID)
    small = min(nlist, 1 << (fit.bit_length() - 1))  # a power of two that the sample can train
    return factory[: match.start(1)] + str(small) + factory[match.end(1):], nlist, small


def _serialized_bytes(index: faiss.Index) -> int:
    return int(faiss.serialize_index(index).nbytes)


def size_factory(factory: str, sample: np.ndarray, queries: np.ndarray, truth: np.ndarray, *, n_target: int,
                 id_bytes: int, k: int = 10) -> SizingRow:
    """Build ``factory`` on ``sample`` and extrapolate its memory to ``n_target`` vectors."""
    n, dim = sample.shape
    built_as, nlist, small = scaled_factory(factory, n)
    ids = [str(i) for i in range(n)]
    half = n // 2
    t0 = time.perf_counter()
    index = build_index(sample, ids, IndexConfig(factory=built_as, normalize=False, calibration_queries=500))
    build_seconds = time.perf_counter() - t0
    full = _serialized_bytes(index.faiss_index)
    partial = faiss.clone_index(index.faiss_index)
    partial.reset()
    partial.add(sample[:half])
    per_vector = (full - _serialized_bytes(partial)) / (n - half)
    fixed = max(0, int(round(full - per_vector * n)))
    if nlist > small:
        fixed += (nlist - small) * dim * 4  # the full coarse quantizer's centroids
    t1 = time.perf_counter()
    _, found_ids = index.search(queries, k)  # ids are the sample's row numbers as strings
    found = np.where(found_ids == "", "-1", found_ids).astype(np.int64)
    qps = len(queries) / max(time.perf_counter() - t1, 1e-9)
    try:
        code_size: int | None = int(get_code_size(dim, factory))
    except RuntimeError:
        code_size = None
    param = f"nprobe={index.meta.nprobe}" if index.meta.nprobe else (
        f"efSearch={index.meta.ef_search}" if index.meta.ef_search else "")
    return SizingRow(factory=factory, measured_as=built_as, bytes_per_vector=round(per_vector, 1),
                     code_size=code_size, fixed_bytes=fixed,
                     ram_bytes=int(fixed + per_vector * n_target + id_bytes * n_target),
                     recall_at_k=round(recall_at_k(truth, found), 4), k=k, build_seconds=round(build_seconds, 2),
                     queries_per_second=round(qps, 1), search_param=param)


def sizing_report(sample: np.ndarray, queries: np.ndarray, factories: list[str], *, n_target: int,
                  id_length: int = 16, k: int = 10) -> list[SizingRow]:
    """One :class:`SizingRow` per factory; ``sample`` and ``queries`` are L2-normalised (n, d) / (q, d)."""
    flat = faiss.IndexFlatIP(sample.shape[1])
    flat.add(sample)
    _, truth = flat.search(queries, k)  # exact reference
    rows = []
    for factory in factories:
        logger.info("sizing %s on %d × %d", factory, *sample.shape)
        rows.append(size_factory(factory, sample, queries, truth, n_target=n_target, id_bytes=4 * id_length, k=k))
    return rows


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def format_table(rows: list[SizingRow], n_target: int) -> str:
    head = f"{'factory':<24} {'measured as':<22} {'B/vector':>9} {'code':>5} {'RAM @ N=' + str(n_target):>18} " \
           f"{'recall@k':>8} {'param':>12} {'q/s':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.factory:<24} {r.measured_as:<22} {r.bytes_per_vector:>9.1f} {str(r.code_size or '-'):>5} "
                     f"{human_bytes(r.ram_bytes):>18} {r.recall_at_k:>8.3f} {r.search_param:>12} "
                     f"{r.queries_per_second:>9.0f}")
    return "\n".join(lines)
