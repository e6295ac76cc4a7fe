"""Index benchmarks (issue 5): (a) search through our wrapper vs raw faiss on the same index, (b) an ANN table
(build time, bytes/vector, recall@10 vs Flat, queries/s) on clustered synthetic vectors.

    python benchmarks/bench_index.py                 # 200k × 512, the table in docs/retrieval.md
    python benchmarks/bench_index.py --quick         # 20k × 128, a minute
    python benchmarks/bench_index.py --n 1000000 --dim 768 --factories Flat 'IVF4096,Flat' --json out.json

Raw faiss gets queries that are already L2-normalised and its search parameter set on the index object; the wrapper
normalises a copy, passes SearchParameters and maps rows to string ids — that overhead is what (a) measures.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import faiss
import numpy as np

from retrieval.indexing import IndexConfig, build_index
from retrieval.indexing.config import hnsw_of
from retrieval.indexing.index import normalise_rows
from retrieval.indexing.synthetic import clustered_vectors
from retrieval.indexing.tuning import recall_at_k

DEFAULT_FACTORIES = ["Flat", "SQfp16", "IVF1024,Flat", "IVF1024,SQfp16", "HNSW32", "IVF1024,PQ64",
                     "OPQ64,IVF1024,PQ64"]


def paired(first_fn, second_fn, repeats: int) -> tuple[float, float]:
    """Best-of times of two interleaved functions after a warm-up (timeit's rule: the minimum is the least
    disturbed run); interleaving keeps a noisy machine's slow phases fair to both."""
    first_fn(), second_fn()
    first_t: list[float] = []
    second_t: list[float] = []
    for _ in range(repeats):
        for fn, out in ((first_fn, first_t), (second_fn, second_t)):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return min(first_t), min(second_t)


def ratio_both_orders(raw_fn, ours_fn, repeats: int) -> tuple[float, float, float]:
    """(raw s, ours s, ours / raw) from interleaved runs in both argument orders. Order matters on this machine
    beyond noise: on 200k x 512 IVF1024,Flat the function passed first came out 5-10 % faster whichever it was
    (wrapper second 1.06x, wrapper first 0.90-0.95x, raw vs raw 1.00x), so the ratio is the geometric mean of the
    two orders, which cancels that bias."""
    half = max(1, (repeats + 1) // 2)
    raw_a, ours_a = paired(raw_fn, ours_fn, half)
    ours_b, raw_b = paired(ours_fn, raw_fn, half)
    return min(raw_a, raw_b), min(ours_a, ours_b), math.sqrt(ours_a / raw_a * ours_b / raw_b)


def own_work_ms(index, queries: np.ndarray, k: int, repeats: int) -> float:
    """The wrapper's own work on a batch, timed alone: normalising a copy of the queries + rows -> string ids."""
    _, rows = index.search_rows(queries, k)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        normalise_rows(queries)
        index.ids[rows]
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3


def wrapper_vs_raw(index, queries: np.ndarray, k: int, repeats: int, singles: int) -> dict:
    raw = index.faiss_index
    if index.meta.nprobe is not None:  # the same settings, set the raw-faiss way
        faiss.extract_index_ivf(raw).nprobe = index.meta.nprobe
    if index.meta.ef_search is not None:
        hnsw_of(raw).hnsw.efSearch = index.meta.ef_search
    q = queries.copy()
    faiss.normalize_L2(q)
    one = [q[i : i + 1] for i in range(singles)]
    one_raw = [queries[i : i + 1] for i in range(singles)]
    batch = ratio_both_orders(lambda: raw.search(q, k), lambda: index.search(queries, k), repeats)
    single = ratio_both_orders(lambda: [raw.search(x, k) for x in one], lambda: [index.search(x, k) for x in one_raw],
                               repeats)
    param = f"nprobe={index.meta.nprobe}" if index.meta.nprobe else (
        f"efSearch={index.meta.ef_search}" if index.meta.ef_search else "")
    return {"factory": index.meta.factory, "param": param,
            "batch_queries": len(q), "batch_raw_s": batch[0], "batch_wrapper_s": batch[1], "batch_ratio": batch[2],
            "batch_own_work_ms": own_work_ms(index, queries, k, repeats),
            "single_queries": singles, "single_raw_s": single[0], "single_wrapper_s": single[1],
            "single_ratio": single[2], "overhead_us_per_call": (single[1] - single[0]) / singles * 1e6}


def ann_row(factory: str, x: np.ndarray, ids: list[str], queries: np.ndarray, truth: np.ndarray, k: int,
            train_size: int | None) -> dict:
    t0 = time.perf_counter()
    index = build_index(x, ids, IndexConfig(factory=factory, train_size=train_size))
    build_s = time.perf_counter() - t0
    size = faiss.serialize_index(index.faiss_index).nbytes
    t1 = time.perf_counter()
    _, found = index.search(queries, k)
    search_s = time.perf_counter() - t1
    rows = found.astype(np.int64)  # ids are the row numbers as strings
    param = f"nprobe={index.meta.nprobe}" if index.meta.nprobe else (
        f"efSearch={index.meta.ef_search}" if index.meta.ef_search else "")
    return {"factory": factory, "build_s": round(build_s, 1), "bytes_per_vector": round(size / len(x), 1),
            "recall_at_10": round(recall_at_k(truth, rows), 4), "queries_per_s": round(len(queries) / search_s),
            "param": param, "train_size": index.meta.build.get("train_size"), "index": index}


def overhead_wanted(factory: str) -> bool:
    return factory in ("Flat", "HNSW32") or (factory.startswith("IVF") and factory.endswith(",Flat"))


def markdown(rows: list[dict], n: int, dim: int) -> str:
    out = [f"| factory ({n:,} × {dim}) | build s | bytes/vector | recall@10 vs Flat | queries/s | default param |",
           "|---|---:|---:|---:|---:|---|"]
    out += [f"| `{r['factory']}` | {r['build_s']} | {r['bytes_per_vector']} | {r['recall_at_10']:.3f} | "
            f"{r['queries_per_s']:,} | {r['param']} |" for r in rows]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--factories", nargs="+", default=DEFAULT_FACTORIES)
    p.add_argument("--train-size", type=int, help="cap the IVF/PQ training sample (default: builder's)")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--quick", action="store_true", help="20k × 128, fewer factories")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.dim, args.queries, args.repeats = 20_000, 128, 500, 9
        args.factories = ["Flat", "SQfp16", "IVF256,Flat", "HNSW32", "IVF256,PQ16"]
    k = 10
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads; clustered synthetic "
          f"{args.n:,} × {args.dim}, {args.queries} queries", flush=True)
    x = clustered_vectors(args.n, args.dim, seed=0)
    queries = clustered_vectors(args.queries, args.dim, seed=1)
    ids = [str(i) for i in range(args.n)]
    flat = faiss.IndexFlatIP(args.dim)
    flat.add(x)
    _, truth = flat.search(queries, k)

    rows = []
    for factory in args.factories:
        rows.append(ann_row(factory, x, ids, queries, truth, k, args.train_size))
        print({key: v for key, v in rows[-1].items() if key != "index"}, flush=True)
        if not overhead_wanted(factory):
            rows[-1]["index"] = None  # free it: only a few indexes are kept for the overhead comparison
    print("\n" + markdown(rows, args.n, args.dim) + "\n")

    overhead = []
    for row in rows:
        if row["index"] is not None:
            overhead.append(wrapper_vs_raw(row["index"], queries, k, args.repeats, singles=min(200, args.queries)))
    print("| index | batch: raw s | wrapper s | ratio (both orders) | wrapper's own work ms | one-by-one: raw s | "
          "wrapper s | ratio (both orders) | µs/call |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for o in overhead:
        print(f"| `{o['factory']}` {o['param']} | {o['batch_raw_s']:.4f} | {o['batch_wrapper_s']:.4f} | "
              f"{o['batch_ratio']:.3f} | {o['batch_own_work_ms']:.2f} | {o['single_raw_s']:.4f} | "
              f"{o['single_wrapper_s']:.4f} | {o['single_ratio']:.3f} | {o['overhead_us_per_call']:.1f} |")
    if args.json:
        clean = [{key: v for key, v in r.items() if key != "index"} for r in rows]
        args.json.write_text(json.dumps({"n": args.n, "dim": args.dim, "ann": clean, "overhead": overhead},
                                        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
