"""Serving benchmarks (issue 5): (a) server latency vs the in-process searcher on the same query, (b) throughput
under concurrent requests, (c) search through our searcher (the search CLI's batch path) vs raw faiss.

    python benchmarks/bench_serve.py            # ViT-B/32-shaped CLIP + T5-small-sized joint encoder, 100k × 512 KB
    python benchmarks/bench_serve.py --quick    # tiny CLIP + tiny encoder, 20k KB (shows the fixed HTTP cost)
    python benchmarks/bench_serve.py --json bench_serve.json

Weights are random (no hub here) but shaped like the real models, so the compute is the real one. (a) alternates
blocks of in-process calls (``Searcher.search`` on the decoded upload: decode + backbone + encoder + faiss + KB
lookup, in a process of its own) with blocks of HTTP requests to a real ``retrieval/serve.py`` (uvicorn,
127.0.0.1), one call at a time, and reports p50/p95 of each; the goal is server p50 ≤ 1.2× in-process p50.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch  # before faiss: see retrieval/querying/__init__.py  # isort: skip
import faiss
import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_index import ratio_both_orders  # noqa: E402
from common import ServerProcess  # noqa: E402

from feature_extraction.backbones import file_sha256  # noqa: E402
from feature_extraction.tiny import TINY_VIT, VIT_B32, TinyClipSpec, make_openai_clip, photo  # noqa: E402
from retrieval.indexing import IndexConfig, build_index  # noqa: E402
from retrieval.indexing.synthetic import clustered_vectors  # noqa: E402
from retrieval.querying import image_from_bytes, open_searcher, write_backbone_record  # noqa: E402

QUESTION = "Who designed the building in this photograph?"


def make_world(work: Path, spec: TinyClipSpec, n: int, big: bool) -> tuple[Path, Path, Path, Path]:
    """(index dir, kb.jsonl, encoder dir, clip .pt) under ``work``."""
    from vlt5 import QueryEncoder, QueryEncoderConfig, VisualConfig, VLT5Config, load_tokenizer
    from vlt5.tiny import make_tiny_tokenizer_dir

    clip_pt = make_openai_clip(work / "clip.pt", spec)
    attrs = {"backbone": str(clip_pt), "backbone_family": "openai-clip", "backbone_path": str(clip_pt),
             "backbone_sha256": file_sha256(clip_pt), "image_size": spec.image_resolution,
             "grid_hw": list(spec.grid_hw)}
    ids = [f"kb{i:07d}" for i in range(n)]
    index = build_index(clustered_vectors(n, spec.embed_dim, seed=0), ids, IndexConfig(factory="Flat"),
                        source={"path": "synthetic", "attrs": attrs})
    index.save(work / "index")
    with open(work / "kb.jsonl", "w") as f:
        for i in ids:
            f.write(json.dumps({"id": i, "title": f"Entry {i}", "text": f"Passage about entry {i}. " * 8}) + "\n")
    tokenizer = load_tokenizer(make_tiny_tokenizer_dir(work / "tokenizer"))
    size = dict(d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8) if big else \
        dict(d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=3)
    model = VLT5Config(vocab_size=len(tokenizer), dropout_rate=0.0, visual=VisualConfig(feat_dim=spec.grid_dim), **size)
    torch.manual_seed(0)
    QueryEncoder(QueryEncoderConfig(model=model, proj_dim=spec.embed_dim), tokenizer=tokenizer).save_pretrained(
        work / "encoder")
    write_backbone_record(work / "encoder", attrs)
    return work / "index", work / "kb.jsonl", work / "encoder", clip_pt


def query_image() -> bytes:
    """A real photo (scikit-image's astronaut) as a 500 × 375 JPEG upload."""
    buf = io.BytesIO()
    Image.fromarray(photo(0)).resize((500, 375)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000  # ms


class InProcess:
    """The in-process searcher in its own process (``--worker``), so both sides run in a fresh process with the same
    thread setup: each call runs ``Searcher.search`` in a worker thread, as the server does."""

    def __init__(self, index_dir: Path, kb: Path, encoder: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", str(index_dir), str(kb), str(encoder)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"

    def run(self, n: int, k: int) -> tuple[list[float], str]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{n} {k}\n")
        self.proc.stdin.flush()
        out = json.loads(self.proc.stdout.readline())
        return out["seconds"], out["top1"]

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


def worker(index_dir: str, kb: str, encoder: str) -> int:
    """``--worker`` mode: load the searcher, then answer ``n k`` lines with n timed searches of the query image."""
    searcher = open_searcher(index_dir, kb, encoder)
    searcher.encoder.load()
    image = query_image()
    print("ready", flush=True)
    with ThreadPoolExecutor(1) as pool:
        for line in sys.stdin:
            n, k = map(int, line.split())
            seconds, top1 = [], ""
            for _ in range(n):
                t0 = time.perf_counter()
                top1 = pool.submit(lambda: searcher.search(QUESTION, image_from_bytes(image), k)).result()[0].id
                seconds.append(time.perf_counter() - t0)
            print(json.dumps({"seconds": seconds, "top1": top1}), flush=True)
    return 0


def latency(inproc: InProcess, server: ServerProcess, image: bytes, k: int, n: int, warmup: int,
            rounds: int = 8) -> dict:
    """In-process and HTTP latencies (ms) of the same query, in alternating blocks of n / rounds calls each."""
    local, remote = [], []
    per_round = max(1, n // rounds)
    with httpx.Client(timeout=120) as http:
        def http_call() -> str:
            r = http.post(server.url + "/search", data={"question": QUESTION, "k": str(k)},
                          files={"image": ("query.jpg", image, "image/jpeg")})
            assert r.status_code == 200, r.text
            return r.json()["hits"][0]["id"]

        for _ in range(warmup):
            http_call()
        inproc.run(warmup, k)
        for r in range(rounds):
            for side in ((0, 1) if r % 2 == 0 else (1, 0)):
                if side == 0:
                    seconds, top1 = inproc.run(per_round, k)
                    local += seconds
                else:
                    for _ in range(per_round):
                        t0 = time.perf_counter()
                        assert http_call() == top1
                        remote.append(time.perf_counter() - t0)
    out = {"requests": len(remote), "inproc_p50_ms": pct(local, 50), "inproc_p95_ms": pct(local, 95),
           "server_p50_ms": pct(remote, 50), "server_p95_ms": pct(remote, 95)}
    out["ratio_p50"] = out["server_p50_ms"] / out["inproc_p50_ms"]
    out["overhead_p50_ms"] = out["server_p50_ms"] - out["inproc_p50_ms"]
    return out


def concurrency(server: ServerProcess, image: bytes, k: int, total: int, workers: int) -> dict:
    with httpx.Client(timeout=300, limits=httpx.Limits(max_connections=workers)) as http:
        def one(_: int) -> tuple[int, float]:
            t0 = time.perf_counter()
            r = http.post(server.url + "/search", data={"question": QUESTION, "k": str(k)},
                          files={"image": ("query.jpg", image, "image/jpeg")})
            return r.status_code, time.perf_counter() - t0

        start = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(one, range(total)))
        wall = time.perf_counter() - start
    times = [t for _, t in results]
    return {"requests": total, "workers": workers, "errors": sum(s != 200 for s, _ in results),
            "requests_per_s": total / wall, "p50_ms": pct(times, 50), "p95_ms": pct(times, 95)}


def searcher_vs_raw(searcher, dim: int, k: int, n_queries: int, repeats: int) -> dict:  # noqa: ANN001
    queries = clustered_vectors(n_queries, dim, seed=1)  # already unit norm: raw faiss gets them as they are
    raw = searcher.index.faiss_index
    raw_t, ranked_t, ratio = ratio_both_orders(lambda: raw.search(queries, k), lambda: searcher.ranked(queries, k),
                                               repeats)
    hits_raw_t, hits_t, hits_ratio = ratio_both_orders(lambda: raw.search(queries, k),
                                                       lambda: searcher.search_vectors(queries, k), repeats)
    return {"queries": n_queries, "raw_s": raw_t, "ranked_s": ranked_t, "ranked_ratio": ratio, "hits_raw_s": hits_raw_t,
            "hits_s": hits_t, "hits_ratio": hits_ratio}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100_000, help="KB vectors")
    p.add_argument("--requests", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--concurrent", type=int, default=200)
    p.add_argument("--workers", type=int, default=32)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--quick", action="store_true", help="tiny CLIP + tiny encoder, 20k KB")
    p.add_argument("--json", type=Path)
    p.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(*args.worker)
    spec = TINY_VIT if args.quick else VIT_B32
    n = 20_000 if args.quick else args.n
    image = query_image()
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), faiss {faiss.__version__}; "
          f"{'tiny' if args.quick else 'ViT-B/32-shaped'} CLIP, KB {n:,} × {spec.embed_dim} Flat", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        index_dir, kb, encoder, _ = make_world(Path(tmp), spec, n, big=not args.quick)
        inproc = InProcess(index_dir, kb, encoder)
        try:
            with ServerProcess(["--index", str(index_dir), "--kb", str(kb), "--encoder", str(encoder)]) as server:
                lat = latency(inproc, server, image, args.k, args.requests, args.warmup)
                conc = concurrency(server, image, args.k, args.concurrent, args.workers)
        finally:
            inproc.close()
        raw = searcher_vs_raw(open_searcher(index_dir, kb, None), spec.embed_dim, args.k, 1000, args.repeats)
    print("\n| in-process p50 / p95 ms | server p50 / p95 ms | ratio (p50) | HTTP overhead p50 ms |")
    print("|---:|---:|---:|---:|")
    print(f"| {lat['inproc_p50_ms']:.1f} / {lat['inproc_p95_ms']:.1f} | {lat['server_p50_ms']:.1f} / "
          f"{lat['server_p95_ms']:.1f} | {lat['ratio_p50']:.3f} | {lat['overhead_p50_ms']:.1f} |")
    print(f"\nconcurrent: {conc['requests']} requests, {conc['workers']} workers: {conc['errors']} errors, "
          f"{conc['requests_per_s']:.1f} req/s, p50 {conc['p50_ms']:.0f} ms, p95 {conc['p95_ms']:.0f} ms")
    print(f"\nsearcher vs raw faiss, {raw['queries']} queries × k={args.k}: raw {raw['raw_s']:.4f} s, "
          f"Searcher.ranked {raw['ranked_s']:.4f} s ({raw['ranked_ratio']:.3f}×), Searcher.search_vectors "
          f"(+ titles, snippets) {raw['hits_s']:.4f} s vs raw {raw['hits_raw_s']:.4f} s ({raw['hits_ratio']:.3f}×)")
    if args.json:
        args.json.write_text(json.dumps({"latency": lat, "concurrency": conc, "searcher_vs_raw": raw}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
