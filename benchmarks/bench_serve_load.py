"""Server memory under load (issue 15): 200 concurrent searches, a quarter of them a 36-megapixel 1-bit PNG that is
~10 KB on disk, against a real ``vlt5r serve`` (uvicorn, its own process).

    python benchmarks/bench_serve_load.py                   # ViT-B/32-shaped CLIP + T5-small-sized encoder, 100k KB
    python benchmarks/bench_serve_load.py --quick           # tiny CLIP + tiny encoder, 20k KB
    python benchmarks/bench_serve_load.py --unbounded       # also the old behaviour, for comparison
    python benchmarks/bench_serve_load.py --json bench_serve_load.json

Reported per server setting: answers by status (503s are deliberate: the queue was full, with ``Retry-After``),
errors other than 503 (must be 0), the server's RSS after warm-up, its peak RSS during the load (``VmHWM``) and its
RSS once the load is over (is the memory given back?), against the bound documented in docs/serving.md §2.
``--unbounded`` also runs the server as it was before the fix, emulated: 64 query threads (it used starlette's pool
of 40), no queue limit, every image decoded at full size. Results: docs/serving.md §2.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch  # before faiss: see retrieval/querying/__init__.py  # isort: skip

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import QUESTION, make_world, query_image  # noqa: E402
from common import ServerProcess  # noqa: E402

from feature_extraction.tiny import TINY_VIT, VIT_B32  # noqa: E402
from foundations.images import QUERY_MAX_PIXELS  # noqa: E402
from retrieval.querying.app import ServerConfig  # noqa: E402
from retrieval.querying.server_process import bilevel_png, post_concurrently  # noqa: E402


def load(server: ServerProcess, requests: int, big_every: int, k: int) -> dict:
    photo, scan = query_image(), bilevel_png()
    forms = [({"question": QUESTION, "k": str(k)},
              {"image": ("scan.png", scan, "image/png") if i % big_every == 0 else ("photo.jpg", photo, "image/jpeg")})
             for i in range(requests)]
    base = server.rss_mb()
    start = time.monotonic()
    answers = post_concurrently(server.url + "/search", forms, threads=requests)
    seconds = time.monotonic() - start
    time.sleep(2.0)  # let the last worker finish freeing
    statuses: dict[str, int] = {}
    for a in answers:
        statuses[str(a.status)] = statuses.get(str(a.status), 0) + 1
    errors = [a for a in answers if a.status not in (200, 503)]
    return {"requests": requests, "big_pngs": len(range(0, requests, big_every)), "png_bytes": len(scan),
            "statuses": statuses, "errors_other_than_503": len(errors), "first_errors": [a.body for a in errors[:3]],
            "retry_after_on_every_503": all(a.retry_after for a in answers if a.status == 503),
            "seconds": round(seconds, 1), "rss_before_mb": round(base), "peak_rss_mb": round(server.peak_rss_mb()),
            "rss_after_mb": round(server.rss_mb())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--big-every", type=int, default=4, help="every n-th request is the 36-megapixel PNG")
    p.add_argument("--workers", type=int, default=ServerConfig.workers)
    p.add_argument("--queue", type=int, default=ServerConfig.queue)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--quick", action="store_true", help="tiny CLIP + tiny encoder, 20k KB")
    p.add_argument("--unbounded", action="store_true", help="also run the pre-fix setting (see the docstring)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    spec, n = (TINY_VIT, 20_000) if args.quick else (VIT_B32, 100_000)
    settings = {"bounded": ["--workers", str(args.workers), "--queue", str(args.queue)]}
    if args.unbounded:
        settings["unbounded (pre-fix)"] = ["--workers", "64", "--queue", "100000", "--decode-side", "0"]
    print(f"torch {torch.__version__}; {'tiny' if args.quick else 'ViT-B/32-shaped'} CLIP, KB {n:,}; "
          f"{args.requests} concurrent requests, every {args.big_every}th a 6000x6000 1-bit PNG", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        index_dir, kb, encoder, _ = make_world(Path(tmp), spec, n, big=not args.quick)
        for name, flags in settings.items():
            with ServerProcess(["--index", str(index_dir), "--kb", str(kb), "--encoder", str(encoder),
                                "--max-pixels", str(QUERY_MAX_PIXELS), *flags]) as server:
                results[name] = load(server, args.requests, args.big_every, args.k)
            cfg = ServerConfig(workers=int(flags[1]), queue=int(flags[3]), max_pixels=QUERY_MAX_PIXELS)
            results[name]["bound_mb"] = round(cfg.memory_bound_mb(results[name]["rss_before_mb"]))
            print(name, json.dumps(results[name]), flush=True)
    print("\n| server | answers | errors other than 503 | RSS warm MB | peak RSS MB | bound MB | RSS after MB | s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        answers = ", ".join(f"{n} × {s}" for s, n in sorted(r["statuses"].items()))
        print(f"| {name} | {answers} | {r['errors_other_than_503']} | {r['rss_before_mb']} | {r['peak_rss_mb']} | "
              f"{r['bound_mb']} | {r['rss_after_mb']} | {r['seconds']} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(r["errors_other_than_503"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
