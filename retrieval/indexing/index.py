"""A faiss index over KB vectors plus the KB ids, saved as an index directory (DESIGN.md §3).

Directory layout: ``index.faiss`` (``faiss.write_index``), ``ids.npy`` (unicode array, ``allow_pickle=False``),
``index.json`` (:class:`IndexMeta`: dim, metric, normalised, factory, count, source, config, search defaults).
Search parameters (``nprobe`` for IVF, ``efSearch`` for HNSW) are passed per call as faiss ``SearchParameters``
objects, so concurrent searches with different settings do not race on shared index state.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from retrieval.indexing.config import INDEX_FORMAT_VERSION, IndexConfig, hnsw_of, ivf_of, unwrap
from foundations.errors import UserError
from foundations.io import complete_dir, write_dir_atomically

logger = logging.getLogger(__name__)

INDEX_FILE, IDS_FILE, META_FILE = "index.faiss", "ids.npy", "index.json"
METRIC = "inner_product"


class IndexFileError(UserError):
    """An index directory is missing a file or its files disagree. The message names the file."""


@dataclass
class IndexMeta:
    """Everything ``index.json`` holds. ``from_dict`` is strict: unknown or missing keys raise."""

    dim: int
    count: int
    factory: str  # the factory string actually built (fp16 applied)
    config: IndexConfig
    nprobe: int | None = None  # default IVF lists visited per query
    ef_search: int | None = None  # default HNSW search depth
    metric: str = METRIC
    normalised: bool = True
    source: dict[str, Any] = field(default_factory=dict)  # feature file path + its attrs (backbone, ...)
    build: dict[str, Any] = field(default_factory=dict)  # timings, train size, calibration curve, faiss version
    format_version: int = INDEX_FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["config"] = self.config.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> IndexMeta:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown, missing = sorted(set(data) - names), sorted({"dim", "count", "factory", "config"} - set(data))
        if unknown or missing:
            raise IndexFileError(f"{where}: unknown keys {unknown} / missing keys {missing} in index metadata")
        if data.get("format_version") != INDEX_FORMAT_VERSION:
            raise IndexFileError(f"{where}: format_version {data.get('format_version')!r}, this code reads "
                                 f"{INDEX_FORMAT_VERSION}")
        if data.get("metric", METRIC) != METRIC:
            raise IndexFileError(f"{where}: metric {data['metric']!r}, expected {METRIC!r}")
        return cls(**{**data, "config": IndexConfig.from_dict(data["config"], where)})


def search_parameters(index: faiss.Index, nprobe: int | None, ef_search: int | None) -> faiss.SearchParameters | None:
    """Per-call faiss SearchParameters for ``index`` (IVF / HNSW, through OPQ/PCA pre-transforms)."""
    inner: Any = faiss.downcast_index(index)
    wrappers = 0
    while isinstance(inner, faiss.IndexPreTransform):
        inner, wrappers = faiss.downcast_index(inner.index), wrappers + 1
    if isinstance(inner, faiss.IndexIVF) and nprobe is not None:
        params: faiss.SearchParameters | None = faiss.SearchParametersIVF(nprobe=int(nprobe))
    elif isinstance(inner, faiss.IndexHNSW) and ef_search is not None:
        params = faiss.SearchParametersHNSW(efSearch=int(ef_search))
    else:
        return None
    for _ in range(wrappers):
        params = faiss.SearchParametersPreTransform(index_params=params)
    return params


def normalise_rows(x: np.ndarray) -> np.ndarray:
    """Float32, C-contiguous, rows scaled to unit L2 norm (zero rows stay zero)."""
    x = np.array(x, dtype=np.float32, order="C", copy=True)  # (B, D)
    faiss.normalize_L2(x)
    return x


class Index:
    """KB vectors in faiss + their ids. Build with :func:`retrieval.indexing.build_index`, reopen with ``load``."""

    def __init__(self, index: faiss.Index, ids: np.ndarray, meta: IndexMeta) -> None:
        if index.ntotal != len(ids) or index.d != meta.dim:
            raise IndexFileError(f"index holds {index.ntotal} vectors of dim {index.d}, ids {len(ids)}, "
                                 f"metadata dim {meta.dim}")
        self.faiss_index = index
        self.ids = ids  # (N,) unicode
        self.meta = meta
        self._params = search_parameters(index, meta.nprobe, meta.ef_search)

    @property
    def dim(self) -> int:
        return self.meta.dim

    def __len__(self) -> int:
        return int(self.faiss_index.ntotal)

    def search_rows(self, queries: np.ndarray, k: int, *, nprobe: int | None = None,
                    ef_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` as (scores (Q, k) float32, rows (Q, k) int64); rows index ``self.ids``, -1 = no result.
        ``k`` is capped at the index size (a huge ``k`` would otherwise allocate Q × k results)."""
        queries = np.asarray(queries)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise UserError(f"queries must have shape (Q, {self.dim}), got {queries.shape}")
        if k < 1:
            raise UserError(f"k must be ≥ 1, got {k}")
        k = min(int(k), max(len(self), 1))
        if self.meta.normalised:
            queries = normalise_rows(queries)
        elif queries.dtype != np.float32 or not queries.flags.c_contiguous:
            queries = np.ascontiguousarray(queries, dtype=np.float32)
        params = self._params
        if nprobe is not None or ef_search is not None:
            params = search_parameters(self.faiss_index, nprobe or self.meta.nprobe, ef_search or self.meta.ef_search)
        return self.faiss_index.search(queries, k, params=params)

    def search(self, queries: np.ndarray, k: int, *, nprobe: int | None = None,
               ef_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` as (scores (Q, k) float32, ids (Q, k) unicode), ``k`` capped at the index size; missing results
        (an IVF / HNSW search that found fewer) are ('', -inf)."""
        scores, rows = self.search_rows(queries, k, nprobe=nprobe, ef_search=ef_search)
        ids = self.ids[rows]  # (Q, k); row -1 picks the last id and is blanked below
        missing = rows < 0
        if missing.any():
            ids[missing] = ""
            scores[missing] = -np.inf
        return scores, ids

    # -- persistence -------------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write the index directory atomically (:func:`foundations.io.write_dir_atomically`): the files go to
        ``.NAME.tmp``, are fsynced, then replace ``NAME`` by renames, so a failed or killed save (a full disk, a
        SIGKILL) leaves the previous index as it was. A folder that is not an index directory is never replaced."""
        directory = Path(directory).resolve()  # a name for '.NAME.tmp' ('.', 'a/..'); a symlink keeps pointing here
        check_replaceable(directory)

        def write(tmp: Path) -> None:
            faiss.write_index(to_cpu(self.faiss_index), str(tmp / INDEX_FILE))
            np.save(tmp / IDS_FILE, self.ids, allow_pickle=False)
            (tmp / META_FILE).write_text(json.dumps(self.meta.to_dict(), indent=2) + "\n", encoding="utf-8")

        directory.parent.mkdir(parents=True, exist_ok=True)
        write_dir_atomically(directory, write)
        logger.info("saved %d vectors (%s) to %s", len(self), self.meta.factory, directory)
        return directory

    @classmethod
    def load(cls, directory: str | Path, *, use_gpu: bool = False, nprobe: int | None = None,
             ef_search: int | None = None) -> Index:
        """Open an index directory; dim and id count are checked against ``index.json``."""
        directory = Path(directory)
        complete = complete_dir(directory, META_FILE)
        if complete is not None and complete != directory:  # a save was killed between its two renames
            logger.warning("%s is missing; loading the previous index kept at %s", directory, complete)
            directory = complete
        paths = {name: directory / name for name in (INDEX_FILE, IDS_FILE, META_FILE)}
        for name, path in paths.items():
            if not path.is_file():
                raise IndexFileError(f"{path}: missing ({name} is part of every index directory)")
        try:
            meta = IndexMeta.from_dict(json.loads(paths[META_FILE].read_text(encoding="utf-8")), str(paths[META_FILE]))
        except (json.JSONDecodeError, TypeError) as exc:
            raise IndexFileError(f"{paths[META_FILE]}: not valid index metadata ({exc})") from None
        try:
            ids = np.load(paths[IDS_FILE], allow_pickle=False)
        except ValueError as exc:
            raise IndexFileError(f"{paths[IDS_FILE]}: not a plain numpy string array ({exc})") from None
        if ids.ndim != 1 or ids.dtype.kind != "U" or len(ids) != meta.count:
            raise IndexFileError(f"{paths[IDS_FILE]}: holds {ids.shape} {ids.dtype} ids, {paths[META_FILE].name} "
                                 f"says count={meta.count} (expected a 1-d unicode array)")
        try:
            index = faiss.read_index(str(paths[INDEX_FILE]))
        except RuntimeError as exc:  # faiss' C++ error: drop its "Error in <function> at <file>:<line>: " prefix
            detail = re.sub(r"^Error in .*? at \S+:\d+: (Error: )?", "", " ".join(str(exc).split()))
            raise IndexFileError(f"{paths[INDEX_FILE]}: not a readable faiss index, truncated or corrupt ({detail}); "
                                 "rebuild it with vlt5r build-index") from None
        if index.d != meta.dim or index.ntotal != meta.count:
            raise IndexFileError(f"{paths[INDEX_FILE]}: dim {index.d}, {index.ntotal} vectors; "
                                 f"{paths[META_FILE].name} says dim {meta.dim}, count {meta.count}")
        meta.nprobe = nprobe or meta.nprobe
        meta.ef_search = ef_search or meta.ef_search
        if use_gpu:
            index = to_gpu(index, meta.nprobe)
        return cls(index, ids, meta)

    def __repr__(self) -> str:
        return (f"Index({self.meta.factory!r}, n={len(self)}, dim={self.dim}, nprobe={self.meta.nprobe}, "
                f"ef_search={self.meta.ef_search})")


def check_replaceable(directory: Path) -> None:
    """Refuse (one line) to replace anything but an index directory: a file, or a folder holding other files."""
    if not directory.exists():
        return
    if not directory.is_dir():
        raise IndexFileError(f"{directory}: exists and is not a directory; refusing to replace it with an index")
    others = sorted(p.name for p in directory.iterdir() if p.name not in (INDEX_FILE, IDS_FILE, META_FILE))
    if others:
        raise IndexFileError(f"{directory}: exists and is not an index directory (it holds {others[:3]}); refusing "
                             "to replace it, choose another output folder")


# -- GPU (guarded: only when faiss sees a GPU; not exercised on CPU-only machines) ---------------------------
@dataclass(frozen=True)
class GpuCloneSettings:
    """What the GPU cloner is told for one index (faiss ``GpuClonerOptions``), decided without a GPU so it can be
    tested anywhere. In faiss' ``ToGpuCloner`` one flag, ``useFloat16``, means fp16 *vector storage* for a Flat index
    (lossy: a GPU Flat would no longer be exact) and fp16 *lookup tables* for IVF-PQ (the GPU guideline); the IVF
    coarse quantizer has its own flag. So ``use_float16`` is on for IVF-PQ only."""

    use_float16: bool  # GpuClonerOptions.useFloat16
    use_float16_coarse_quantizer: bool  # GpuClonerOptions.useFloat16CoarseQuantizer
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def gpu_clone_settings(index: faiss.Index) -> GpuCloneSettings:
    """Cloner settings that keep ``index`` as exact on GPU as on CPU (see :class:`GpuCloneSettings`)."""
    inner = unwrap(index)
    if isinstance(inner, faiss.IndexIVFPQ):
        return GpuCloneSettings(True, False, "IVF-PQ: fp16 lookup tables (faiss GPU guideline); codes unchanged")
    return GpuCloneSettings(False, False, f"{type(inner).__name__}: stored vectors stay as on CPU (a Flat index "
                                          "stays exact)")


def gpu_cloner_options(index: faiss.Index) -> Any:
    """faiss ``GpuMultipleClonerOptions`` from :func:`gpu_clone_settings` (needs a faiss build with GPU support)."""
    settings = gpu_clone_settings(index)
    options = faiss.GpuMultipleClonerOptions()
    options.useFloat16 = settings.use_float16
    options.useFloat16CoarseQuantizer = settings.use_float16_coarse_quantizer
    return options


def gpu_supported(index: faiss.Index) -> bool:
    return faiss.get_num_gpus() > 0 and hnsw_of(index) is None and hasattr(faiss, "index_cpu_to_all_gpus")


def to_gpu(index: faiss.Index, nprobe: int | None = None) -> faiss.Index:
    """Clone to all GPUs when possible (Flat / IVF / PQ / SQ) with :func:`gpu_cloner_options`; otherwise return
    ``index`` unchanged. GPU indexes do not take per-call SearchParameters, so the default ``nprobe`` is set on the
    clone (per-call overrides are ignored there)."""
    if not gpu_supported(index):
        logger.info("GPU search not available for this index/machine; searching on CPU")
        return index
    logger.info("cloning to %d GPU(s): %s", faiss.get_num_gpus(), gpu_clone_settings(index).reason)
    gpu_index = faiss.index_cpu_to_all_gpus(index, co=gpu_cloner_options(index))
    if nprobe is not None and ivf_of(index) is not None:
        faiss.GpuParameterSpace().set_index_parameter(gpu_index, "nprobe", nprobe)
    return gpu_index


def storage_of(index: faiss.Index) -> dict[str, Any]:
    """What the index stores per vector, for ``index.json``: pre-transforms, the codec, bytes per vector and whether
    a search over it is exact (float32 vectors, no transform, no IVF/graph pruning)."""
    transforms: list[str] = []
    inner = faiss.downcast_index(index)
    while isinstance(inner, faiss.IndexPreTransform):
        for i in range(inner.chain.size()):
            vt = faiss.downcast_VectorTransform(inner.chain.at(i))
            transforms.append(f"{type(vt).__name__} {vt.d_in}->{vt.d_out}")
        inner = faiss.downcast_index(inner.index)
    codes: Any = inner
    if isinstance(inner, faiss.IndexHNSW):
        codes = faiss.downcast_index(inner.storage)
    if isinstance(codes, (faiss.IndexFlat, faiss.IndexIVFFlat)):
        codec = "float32 vectors"
    elif isinstance(codes, (faiss.IndexScalarQuantizer, faiss.IndexIVFScalarQuantizer)):
        names = {getattr(faiss.ScalarQuantizer, n): n for n in dir(faiss.ScalarQuantizer) if n.startswith("QT_")}
        codec = f"scalar quantizer {names.get(codes.sq.qtype, codes.sq.qtype)}"
    elif isinstance(codes, (faiss.IndexPQ, faiss.IndexIVFPQ)):
        codec = f"product quantizer {codes.pq.M}x{codes.pq.nbits} bits"
    else:
        codec = type(codes).__name__
    exact = not transforms and isinstance(inner, faiss.IndexFlat)
    return {"codec": codec, "bytes_per_vector": int(getattr(codes, "code_size", 0)), "transforms": transforms,
            "exact": exact}


def to_cpu(index: faiss.Index) -> faiss.Index:
    if faiss.get_num_gpus() > 0 and hasattr(faiss, "index_gpu_to_cpu") and "Gpu" in type(index).__name__:
        return faiss.index_gpu_to_cpu(index)
    return index


def describe(index: faiss.Index) -> dict[str, Any]:
    """Structure facts for logs, reports and ``index.json``: type, what is stored, lists, HNSW M."""
    out: dict[str, Any] = {"type": type(faiss.downcast_index(index)).__name__, "storage": storage_of(index)}
    ivf = ivf_of(index)
    if ivf is not None:
        out["nlist"] = int(ivf.nlist)
    hnsw = hnsw_of(index)
    if hnsw is not None:
        out["hnsw_M"] = int(hnsw.hnsw.nb_neighbors(1))
    return out
