"""GPU faiss: the cloner options keep a Flat index exact (checked without a GPU) and, where faiss sees a GPU, a GPU
Flat search equals the CPU Flat search."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from retrieval.indexing import IndexConfig, build_index
from retrieval.indexing.config import make_faiss_index
from retrieval.indexing.index import gpu_clone_settings, storage_of, to_gpu
from retrieval.indexing.synthetic import clustered_vectors


@pytest.mark.parametrize("factory, fp16", [("Flat", False), ("IVF4,Flat", False), ("IVF4,SQfp16", False),
                                           ("PCA8,Flat", False), ("IVF4,PQ4", True), ("OPQ4,IVF4,PQ4", True)])
def test_gpu_cloner_uses_float16_only_for_ivfpq_lookup_tables(factory: str, fp16: bool) -> None:
    """faiss' ToGpuCloner reads ``useFloat16`` as fp16 *storage* for IndexFlat (a lossy GPU Flat) and as fp16
    lookup tables for IVF-PQ: only the latter may have it."""
    settings = gpu_clone_settings(make_faiss_index(16, factory))
    assert settings.use_float16 is fp16
    assert settings.use_float16_coarse_quantizer is False


@pytest.mark.parametrize("factory, storage", [
    ("Flat", {"codec": "float32 vectors", "bytes_per_vector": 64, "transforms": [], "exact": True}),
    ("SQfp16", {"codec": "scalar quantizer QT_fp16", "bytes_per_vector": 32, "transforms": [], "exact": False}),
    ("IVF4,PQ4", {"codec": "product quantizer 4x8 bits", "bytes_per_vector": 4, "transforms": [], "exact": False}),
    ("HNSW8", {"codec": "float32 vectors", "bytes_per_vector": 64, "transforms": [], "exact": False}),
])
def test_index_json_says_what_is_stored(tmp_path, factory: str, storage: dict) -> None:
    assert storage_of(make_faiss_index(16, factory)) == storage
    x = clustered_vectors(300, 16, seed=0)
    index = build_index(x, [str(i) for i in range(300)], IndexConfig(factory="Flat"))
    index.save(tmp_path / "ix")
    assert '"exact": true' in (tmp_path / "ix" / "index.json").read_text()


@pytest.mark.gpu
def test_gpu_flat_equals_cpu_flat() -> None:
    if faiss.get_num_gpus() == 0:
        pytest.skip("this faiss build sees no GPU (faiss-cpu, or no device)")
    x = clustered_vectors(20_000, 64, seed=0)
    q = clustered_vectors(100, 64, seed=1)
    index = build_index(x, [str(i) for i in range(len(x))], IndexConfig(factory="Flat", use_gpu=False))
    cpu_scores, cpu_rows = index.faiss_index.search(q, 10)
    gpu = to_gpu(index.faiss_index)
    assert "Gpu" in type(gpu).__name__ or "Replicas" in type(gpu).__name__
    gpu_scores, gpu_rows = gpu.search(q, 10)
    np.testing.assert_allclose(gpu_scores, cpu_scores, rtol=0, atol=1e-5)  # fp16 storage would be off by ~1e-3
    assert (gpu_rows == cpu_rows).mean() > 0.999  # only exact ties may swap
