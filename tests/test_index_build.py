"""Index builder from a feature file: bounded memory while streaming, the CLI end to end (artefacts, one-line user
errors with exit code 2) and the sizing report's measured bytes per vector."""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest

from feature_extraction.store import H5FeatureStore
from vlt5r.drivers.build_index import main as build_main
from retrieval.indexing import Index, IndexConfig, build_index_from_features
from retrieval.indexing.synthetic import clustered_vectors

REPO = Path(__file__).resolve().parents[1]


def write_features(path: Path, x: np.ndarray, ids: list[str] | None = None) -> Path:
    """A feature file in our HDF5 layout (ids, fc, attrs), as clip_prepro_feats.py writes it."""
    with h5py.File(path, "w") as f:
        f.create_dataset("ids", data=np.array(ids or [f"kb{i}" for i in range(len(x))], dtype=h5py.string_dtype()))
        f.create_dataset("fc", data=x)
        f.attrs.update({"format_version": 1, "backbone": "RN50", "fc_dim": x.shape[1], "modality": "image"})
    return path


def test_streaming_build_reads_only_batches_and_stays_bounded(tmp_path, monkeypatch) -> None:
    n, dim, batch = 40_000, 256, 1_000
    x = clustered_vectors(n, dim, seed=0) * 2.0
    path = write_features(tmp_path / "kb.h5", x)
    fc_bytes = x.nbytes  # 41 MB
    del x
    seen_sizes: list[int] = []
    real_batches = H5FeatureStore.batches

    def spy_batches(self, batch_size: int = 1024):
        assert batch_size == batch
        for feats in real_batches(self, batch_size):
            seen_sizes.append(len(feats.ids))
            yield feats

    def no_random_access(self, ids):
        raise AssertionError("the builder must stream with batches(), not get_many()")

    monkeypatch.setattr(H5FeatureStore, "batches", spy_batches)
    monkeypatch.setattr(H5FeatureStore, "get_many", no_random_access)
    cfg = IndexConfig(factory="IVF32,Flat", batch_size=batch, train_size=2048)
    tracemalloc.start()
    try:
        index = build_index_from_features(path, cfg)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(index) == n and max(seen_sizes) == batch
    assert sum(seen_sizes) >= 2 * n  # train-sample pass + add pass, each through batches()
    # numpy arrays are traced (faiss' own C++ storage is not): materialising fc (41 MB) would break this, while
    # the ids (~4 MB as list + array), a few 1 MB batches and the 2 MB training sample fit
    assert peak < 0.5 * fc_bytes, f"peak {peak / 1e6:.1f} MB for a {fc_bytes / 1e6:.1f} MB fc array"
    assert index.meta.source["attrs"]["backbone"] == "RN50"


def test_cli_builds_index_dir(tmp_path) -> None:
    x = clustered_vectors(3000, 24, seed=2) * 5
    path = write_features(tmp_path / "kb.h5", x)
    out = tmp_path / "index"
    assert build_main(["--features", str(path), "--out", str(out), "--factory", "IVF32,Flat", "--fp16"]) == 0
    assert {p.name for p in out.iterdir()} == {"index.faiss", "ids.npy", "index.json"}
    meta = json.loads((out / "index.json").read_text())
    assert meta["factory"] == "IVF32,SQfp16" and meta["count"] == 3000 and meta["dim"] == 24
    assert meta["source"]["attrs"]["backbone"] == "RN50" and meta["nprobe"] >= 1
    index = Index.load(out)
    _, ids = index.search(x[7:8], 1)
    assert ids[0, 0] == "kb7"


def test_cli_user_errors_are_one_line_without_traceback(tmp_path) -> None:
    dups = write_features(tmp_path / "dups.h5", clustered_vectors(300, 8), ids=[f"k{i % 299}" for i in range(300)])
    good = write_features(tmp_path / "kb.h5", clustered_vectors(300, 8))
    out = ["--out", str(tmp_path / "o")]
    cases = [
        (["--features", str(tmp_path / "nope.h5"), *out], "no such feature file"),
        (["--features", str(dups), *out], "duplicate KB id 'k0' at rows 0 and 299"),
        (["--features", str(good), *out, "--factory", "IVF9,Wat"], "invalid faiss factory string 'IVF9,Wat'"),
        (["--features", str(good), *out, "--factory", "IVF512,Flat"], "needs at least 512 training vectors"),
        ([*out], "--features and --out are required"),
    ]
    codes = [1, 1, 1, 1, 2]  # user errors exit 1, the missing flag is a usage error (exit 2)
    for (argv, message), code in zip(cases, codes):
        proc = subprocess.run([sys.executable, str(REPO / "retrieval" / "build_index.py"), *argv],
                              capture_output=True, text=True, cwd=REPO)
        assert proc.returncode == code, proc.stderr
        assert message in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_sizing_report_measures_bytes_per_vector(tmp_path) -> None:
    report = tmp_path / "sizing.json"
    argv = ["--sizing", "--n", "1000000", "--dim", "16", "--sample", "4000", "--queries", "100",
            "--factories", "Flat", "SQfp16", "IVF4096,Flat", "HNSW16", "--json", str(report)]
    assert build_main(argv) == 0
    rows = {r["factory"]: r for r in json.loads(report.read_text())}
    assert rows["Flat"]["bytes_per_vector"] == 64 and rows["Flat"]["recall_at_k"] == 1.0
    assert rows["SQfp16"]["bytes_per_vector"] == 32
    ivf = rows["IVF4096,Flat"]
    assert ivf["bytes_per_vector"] == 64 + 8  # codes + int64 id in the inverted list
    assert ivf["measured_as"] == "IVF64,Flat"  # 4000 vectors train at most ~102 lists
    assert ivf["fixed_bytes"] >= 4096 * 16 * 4  # the full quantizer's centroids are counted
    assert rows["HNSW16"]["bytes_per_vector"] > 64 + 16 * 4  # vectors + level-0 links
    assert rows["Flat"]["ram_bytes"] == pytest.approx(1_000_000 * (64 + 16 * 4), abs=1024)  # vectors + unicode ids
    assert min(r["recall_at_k"] for r in rows.values()) > 0.9
