"""GPU extraction throughput: ViT-B/32- and RN101-shaped models at fp16, CPU vs GPU JPEG decoding (``make bench-gpu``).

    python benchmarks/bench_extract_gpu.py                  # ~1-2 min on one GPU after the image set exists
    python benchmarks/bench_extract_gpu.py --images 20000 --batch-size 512 --cpu-workers 4 16

Generates ``--images`` JPEGs of typical photo sizes (an equal share of 640x480, 480x640, 500x375, 800x600 and
1024x768; random crops/flips of scikit-image's photos, quality 90; in parallel, once) and the two randomly
initialised OpenAI-format checkpoints (``feature_extraction.tiny.VIT_B32`` / ``RN101``: the released shapes, so the
released cost). Each row is one in-process ``extract()`` into a fresh file, after an unreported warm-up run of
512 images per model (CUDA context, cuDNN autotuning, page cache):

* ``img/s`` is the encoding loop's rate (what the summary prints: decode, transfer, forward, copy back, write
  queue), ``whole s`` the entire call (listing, model load, consolidation of the HDF5 file);
* ``decode cpu``: DataLoader workers decode + resize with PIL (``--cpu-workers``, each a row);
  ``decode gpu``: workers only read bytes, nvJPEG decodes a batch at once and the resize runs on the GPU;
* fc only (``--no-grid``, what clip-retrieval computes), plus ViT-B/32 with its 7x7x768 grid.

Output: a markdown table on stdout (the format documented in docs/extraction.md "GPU") and the same rows as JSON
in ``WORKDIR/results.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from feature_extraction.config import ExtractConfig  # noqa: E402
from feature_extraction.extract import extract  # noqa: E402
from feature_extraction.tiny import RN101, VIT_B32, make_image_folder, make_openai_clip  # noqa: E402

SIZES = ((640, 480), (480, 640), (500, 375), (800, 600), (1024, 768))
CHUNK = 250  # images per generating task


def image_set(folder: Path, n: int) -> Path:
    """``n`` JPEGs under ``folder`` (sub-folders per size and chunk), generated in parallel; returns a list file."""
    listing = folder / f"list_{n}.txt"
    if listing.is_file():
        return listing
    tasks = []
    for k in range(-(-n // CHUNK)):
        size = SIZES[k % len(SIZES)]
        tasks.append((folder / f"{size[0]}x{size[1]}" / f"c{k:03d}", min(CHUNK, n - k * CHUNK), size, k))
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=len(os.sched_getaffinity(0))) as pool:
        futures = [pool.submit(make_image_folder, d, count, size, seed) for d, count, size, seed in tasks]
        paths = [p for f in futures for p in f.result()]
    listing.write_text("".join(f"{p}\n" for p in paths))
    print(f"generated {len(paths)} JPEGs in {time.perf_counter() - start:.0f} s", flush=True)
    return listing


def one_run(listing: Path, model: Path, out: Path, decode: str, workers: int, batch: int, grid: bool) -> dict:
    out.unlink(missing_ok=True)
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    summary = extract(ExtractConfig(out=out, backbone=str(model), image_list=listing, device="cuda",
                                    batch_size=batch, num_workers=workers, decode=decode, grid=grid,
                                    progress=False))
    whole = time.perf_counter() - start
    out.unlink()
    return {"rate": summary.written / summary.encode_seconds, "whole_s": whole, "written": summary.written,
            "on_cpu": sum(summary.decoded_on_cpu.values()), "peak_gib": torch.cuda.max_memory_allocated() / 2**30}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=REPO / "runs" / "bench_extract_gpu")
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--cpu-workers", type=int, nargs="+", default=[4, max(1, len(os.sched_getaffinity(0)) - 2)],
                        help="DataLoader workers for the CPU-decoding rows (one row each)")
    parser.add_argument("--gpu-workers", type=int, default=4, help="workers reading bytes for --decode gpu")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_extract_gpu: needs CUDA (torch.cuda.is_available() is false)")
    logging.basicConfig(level=logging.WARNING)
    args.workdir.mkdir(parents=True, exist_ok=True)
    listing = image_set(args.workdir / "images", args.images)
    warm = args.workdir / "warmup_list.txt"
    warm.write_text("".join(listing.read_text().splitlines(keepends=True)[:512]))
    name = torch.cuda.get_device_name()
    print(f"{name}, torch {torch.__version__}, {len(os.sched_getaffinity(0))} CPUs, {args.images} JPEGs of "
          f"{', '.join(f'{w}x{h}' for w, h in SIZES)}, batch {args.batch_size}, fp16\n")
    print("| model | decode | workers | grid | img/s | whole s | decoded on CPU | peak GPU GiB |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for label, spec in (("ViT-B/32", VIT_B32), ("RN101", RN101)):
        model = args.workdir / f"{label.replace('/', '')}.pt"
        if not model.exists():
            make_openai_clip(model, spec)
        out = args.workdir / "out.h5"
        one_run(warm, model, out, "gpu", args.gpu_workers, args.batch_size, False)
        plan = [("cpu", w, False) for w in args.cpu_workers] + [("gpu", args.gpu_workers, False)]
        if label == "ViT-B/32":
            plan.append(("gpu", args.gpu_workers, True))
        for decode, workers, grid in plan:
            row = {"model": label, "decode": decode, "workers": workers, "grid": grid, "gpu": name,
                   **one_run(listing, model, out, decode, workers, args.batch_size, grid)}
            rows.append(row)
            print(f"| {label} | {decode} | {workers} | {'yes' if grid else 'no'} | {row['rate']:.0f} | "
                  f"{row['whole_s']:.1f} | {row['on_cpu']} | {row['peak_gib']:.1f} |", flush=True)
    (args.workdir / "results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
