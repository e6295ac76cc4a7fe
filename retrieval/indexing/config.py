"""Index configuration and faiss factory-string handling.

Follows the faiss guidelines (github.com/facebookresearch/faiss/wiki/Guidelines-to-choose-an-index): factory
strings (``Flat``, ``IVF{n},Flat``, ``HNSW{M}``, ``IVF{n},PQ{m}``, ``OPQ{m},IVF{n},PQ{m}``, ``…,SQfp16``), inner
product on L2-normalised vectors (= cosine), 30–256 training vectors per IVF list and ≥ 39 per k-means centroid.
The resolved :class:`IndexConfig` is written to ``index.json`` and read back strictly (unknown keys raise).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

import faiss
from foundations.errors import UserError

INDEX_FORMAT_VERSION = 1
MIN_POINTS_PER_CENTROID = 39  # faiss warns below this many training points per k-means centroid
TRAIN_POINTS_PER_LIST = 64  # default sample: within faiss' 30..256 per list


class IndexConfigError(UserError):
    """An index configuration that cannot work (bad factory string, too few vectors, ...)."""


@dataclass
class IndexConfig:
    """How to build an index. Saved in ``index.json``; ``from_dict`` is strict."""

    factory: str = "Flat"  # faiss index_factory string
    normalize: bool = True  # L2-normalise KB and query vectors: inner product = cosine
    fp16: bool = False  # float16 storage: Flat → SQfp16, IVF…,Flat → IVF…,SQfp16, HNSW → HNSW,SQfp16
    train_size: int | None = None  # training sample for IVF/PQ; None = 64 per IVF list / per PQ centroid
    batch_size: int = 8192  # rows read from the feature file and added per step (bounds memory)
    nprobe: int | None = None  # IVF lists visited per query; None = calibrated at build time
    ef_search: int | None = None  # HNSW search depth; None = calibrated at build time
    ef_construction: int = 80  # HNSW build depth (faiss default 40 leaves clustered data poorly connected)
    target_recall: float = 0.97  # calibration target: recall@k vs exhaustive search of the same index
    calibration_queries: int = 1000  # KB vectors used as leave-one-out calibration queries
    calibration_k: int = 10
    use_gpu: bool = True  # build on GPU when faiss.get_num_gpus() > 0 and the index type supports it
    skip_bad_vectors: bool = False  # leave zero / non-finite vectors out (counted in index.json) instead of refusing
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.factory, str) or not self.factory.strip():
            raise IndexConfigError("factory must be a non-empty faiss factory string, e.g. 'IVF256,Flat'")
        for name in ("batch_size", "calibration_queries", "calibration_k", "ef_construction"):
            if int(getattr(self, name)) < 1:
                raise IndexConfigError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        for name in ("train_size", "nprobe", "ef_search"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise IndexConfigError(f"{name} must be ≥ 1 (or unset), got {value}")
        if not 0.0 < self.target_recall <= 1.0:
            raise IndexConfigError(f"target_recall must be in (0, 1], got {self.target_recall}")

    @property
    def resolved_factory(self) -> str:
        """The factory string actually built (fp16 storage applied)."""
        return fp16_factory(self.factory) if self.fp16 else self.factory

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "index config") -> IndexConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise IndexConfigError(f"{where}: unknown index config key(s) {unknown}; "
                                   f"expected a subset of {sorted(known)}")
        return cls(**data)


def fp16_factory(factory: str) -> str:
    """Replace full-precision storage by float16 storage (``SQfp16``), or explain why it does not apply."""
    parts = [p.strip() for p in factory.split(",")]
    last = parts[-1]
    if last == "Flat":
        parts[-1] = "SQfp16"
    elif re.fullmatch(r"HNSW\d+", last):
        parts.append("SQfp16")
    elif last == "SQfp16":
        pass
    else:
        raise IndexConfigError(
            f"fp16 storage applies to Flat storage ('Flat', 'IVF{{n}},Flat', 'HNSW{{M}}'); '{factory}' already "
            f"encodes vectors as '{last}'")
    return ",".join(parts)


def make_faiss_index(dim: int, factory: str) -> faiss.Index:
    """An empty inner-product index; a bad factory string raises IndexConfigError naming it."""
    try:
        return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        text = str(exc).strip().splitlines()[-1] if str(exc).strip() else "rejected by faiss.index_factory"
        reason = re.sub(r"^.*\.cpp:\d+: ", "", text)  # drop faiss' C++ location prefix
        raise IndexConfigError(f"invalid faiss factory string {factory!r} for dim {dim}: {reason}") from None


def ivf_of(index: faiss.Index) -> faiss.IndexIVF | None:
    """The IVF layer inside ``index`` (through OPQ/PCA pre-transforms), or None."""
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def unwrap(index: faiss.Index) -> faiss.Index:
    """The concrete index under OPQ/PCA pre-transforms."""
    inner = faiss.downcast_index(index)
    while isinstance(inner, faiss.IndexPreTransform):
        inner = faiss.downcast_index(inner.index)
    return inner


def hnsw_of(index: faiss.Index) -> faiss.IndexHNSW | None:
    """The HNSW index when ``index`` is a (possibly pre-transformed) HNSW graph index, or None."""
    inner = unwrap(index)
    return inner if isinstance(inner, faiss.IndexHNSW) else None


def training_needs(index: faiss.Index) -> tuple[int, int]:
    """(minimum, recommended) training vectors: k-means needs ≥ k points, faiss wants ≥ 39 per centroid."""
    ks: list[int] = []
    ivf = ivf_of(index)
    if ivf is not None:
        ks.append(int(ivf.nlist))
    inner = faiss.downcast_index(ivf) if ivf is not None else unwrap(index)
    pq = getattr(inner, "pq", None)
    if pq is not None:
        ks.append(int(pq.ksub))
    if not ks:
        return 1, 1
    return max(ks), MIN_POINTS_PER_CENTROID * max(ks)


def default_train_size(index: faiss.Index, n: int) -> int:
    ks = training_needs(index)[0]
    return min(n, max(TRAIN_POINTS_PER_LIST * ks, 1))
