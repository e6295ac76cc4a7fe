"""Throughput and memory of ``clip_prepro_feats.py`` against its bounds and against a naive loop.

    python benchmarks/bench_extract.py                      # defaults: a few minutes on a 2-core CPU box
    python benchmarks/bench_extract.py --tiny-counts 1000 5000 --b32-counts 1000 5000 --device cuda
    python benchmarks/bench_extract.py --tiny-counts --precision bf16     # every measurement at --precision bf16

For each model - the tiny ViT (32 px, decoding is its bound) and a randomly initialised ViT-B/32-shaped model
(``feature_extraction.tiny.VIT_B32``, the real architecture and cost) - it measures, on realistic JPEGs (500x375
random crops/flips of scikit-image's photos):

* script: ``clip_prepro_feats.py`` in a subprocess (items/s of its encoding loop; peak RSS of the main process,
  and that plus the DataLoader workers' USS - their private memory - polled with psutil) at each image count;
* forward bound: the same model on pre-decoded tensors at the same batch size (no I/O at all), on 1 thread or
  all CPUs (whichever is faster here), timed just before and just after each script run (the box is shared);
* decode bound: the same DataLoader (workers decode + preprocess) with no model;
* naive loop: one image at a time like CLIP-ViL's ``clip_prepro_feats.py``: decode -> preprocess -> forward
  (batch 1, same threads as the bound) -> ``np.save`` fc + ``np.savez_compressed`` grid per image, right after
  each script run.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from feature_extraction.backbones import Backbone, load_backbone  # noqa: E402
from feature_extraction.inputs import Listing  # noqa: E402
from feature_extraction.loader import make_loader  # noqa: E402
from feature_extraction.speed import autocast, weights_dtype  # noqa: E402
from feature_extraction.spool import Spool  # noqa: E402
from feature_extraction.tiny import TINY_VIT, VIT_B32, make_image_folder, make_openai_clip  # noqa: E402


def ensure_images(workdir: Path, n: int, size: tuple[int, int]) -> list[Path]:
    folder = workdir / f"jpeg_{size[0]}x{size[1]}"
    have = sorted(folder.glob("img_*.jpg")) if folder.is_dir() else []
    if len(have) < n:
        print(f"generating {n} JPEGs in {folder} ...", flush=True)
        have = make_image_folder(folder, n, size=size)
    return have[:n]


def image_list(workdir: Path, paths: list[Path]) -> Path:
    listing = workdir / f"list_{len(paths)}.txt"
    listing.write_text("".join(f"{p}\n" for p in paths))
    return listing


def run_script(listing: Path, model: Path, out: Path, batch: int, workers: int, device: str,
               precision: str = "fp32") -> dict[str, float]:
    """The real CLI in a subprocess; returns its encoding rate and the peak RSS (MiB) seen by polling."""
    for stale in (out, out.with_suffix(".skipped.tsv")):
        stale.unlink(missing_ok=True)
    Spool(out).remove()  # a killed earlier run's chunks would be resumed, not re-encoded
    cmd = [sys.executable, str(REPO / "feature_extraction" / "clip_prepro_feats.py"), "--image-list", str(listing),
           "--out", str(out), "--backbone", str(model), "--batch-size", str(batch), "--num-workers", str(workers),
           "--device", device, "--precision", precision, "--no-progress", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"})
    peak = {"main": 0.0, "tree": 0.0}

    def poll() -> None:  # main RSS every 0.2 s + workers' USS (their private pages) every 2 s
        root, workers_uss, tick = psutil.Process(proc.pid), 0, 0
        while proc.poll() is None:  # (USS reads /proc/*/smaps: ~20 ms each, too costly to poll often)
            try:
                main = root.memory_info().rss
                if tick % 10 == 0:
                    workers_uss = sum(c.memory_full_info().uss for c in root.children(recursive=True))
            except psutil.Error:
                pass
            else:
                peak["main"] = max(peak["main"], main / 2**20)
                peak["tree"] = max(peak["tree"], (main + workers_uss) / 2**20)
            tick += 1
            time.sleep(0.2)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    stdout, stderr = proc.communicate()
    watcher.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{stderr}")
    rate = float(re.search(r"written \d+ \(([\d.]+) items/s\)", stdout).group(1))
    elapsed = float(re.search(r"elapsed ([\d.]+) s", stdout).group(1))
    return {"rate": rate, "elapsed": elapsed, "rss_main": peak["main"], "rss_tree": peak["tree"]}


def forward_bound(backbone: Backbone, paths: list[Path], batch: int, n_batches: int, precision: str = "fp32",
                  grid: bool = True) -> float:
    from PIL import Image

    pixels = torch.stack([backbone.preprocess(Image.open(p).convert("RGB")) for p in paths[:batch]])
    pixels = pixels.to(backbone.device)
    with torch.inference_mode(), autocast(backbone.device, precision):
        backbone.encode_images(pixels, grid)  # warm-up
        start = time.perf_counter()
        for _ in range(n_batches):
            fc, cells = backbone.encode_images(pixels, grid)
            fc.cpu()
            if cells is not None:
                cells.cpu()
    return batch * n_batches / (time.perf_counter() - start)


def decode_bound(backbone: Backbone, paths: list[Path], batch: int, workers: int) -> float:
    todo = Listing("image", [p.stem for p in paths], [str(p) for p in paths])
    loader = make_loader(todo, batch, workers, backbone.preprocess, backbone.tokenize, 10**9, pin_memory=False)
    start = time.perf_counter()
    n = sum(len(b.ids) for b in loader)
    return n / (time.perf_counter() - start)


def naive_loop(backbone: Backbone, paths: list[Path], out_dir: Path, precision: str = "fp32") -> float:
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with torch.inference_mode(), autocast(backbone.device, precision):
        for p in paths:
            x = backbone.preprocess(Image.open(p).convert("RGB")).unsqueeze(0).to(backbone.device)
            fc, grid = backbone.encode_images(x, True)
            np.save(out_dir / f"{p.stem}.npy", fc[0].float().cpu().numpy())
            np.savez_compressed(out_dir / f"{p.stem}.npz", feat=grid[0].float().cpu().numpy())
    return len(paths) / (time.perf_counter() - start)


def best_threads(backbone: Backbone, paths: list[Path], batch: int, precision: str = "fp32") -> int:
    """1 thread or all CPUs, whichever runs the forward faster here: the bounds use the box at its best."""
    rates = {}
    for threads in sorted({1, len(os.sched_getaffinity(0))}):
        torch.set_num_threads(threads)
        rates[threads] = forward_bound(backbone, paths, batch, 2, precision)
    return max(rates, key=rates.__getitem__)


def bench_model(name: str, model: Path, counts: list[int], workers: int, args: argparse.Namespace,
                all_paths: list[Path]) -> list[str]:
    """On a shared box the load changes by the minute, so every script run is bracketed by the forward bound
    measured just before and just after it, and followed by the naive loop; the ratios use those neighbours."""
    backbone = load_backbone(str(model), args.device, weights_dtype(args.precision))
    paths = all_paths[: max(counts)]
    threads = best_threads(backbone, paths, args.batch_size, args.precision)
    dec = decode_bound(backbone, paths[:1000], args.batch_size, workers)
    rows = []
    for n in counts:
        torch.set_num_threads(threads)
        before = forward_bound(backbone, paths, args.batch_size, args.forward_batches, args.precision)
        script = run_script(image_list(args.workdir, paths[:n]), model, args.workdir / f"out_{model.stem}_{n}.h5",
                            args.batch_size, workers, args.device, args.precision)
        after = forward_bound(backbone, paths, args.batch_size, args.forward_batches, args.precision)
        naive = naive_loop(backbone, paths[: args.naive], args.workdir / "naive", args.precision)
        fwd = (before + after) / 2
        rows.append(f"| {name} | {n} | {workers} | {script['rate']:.1f} | {fwd:.1f} ({before:.1f}-{after:.1f}, "
                    f"{threads}t) | {dec:.1f} | {script['rate'] / min(fwd, dec):.2f} | {naive:.1f} | "
                    f"{script['rate'] / naive:.1f} | {script['rss_main']:.0f} / {script['rss_tree']:.0f} |")
        print(rows[-1], flush=True)
    return rows


def compare_precisions(model: Path, paths: list[Path], args: argparse.Namespace) -> None:
    """The ViT-B/32 forward alone (pre-decoded batch, CPU threads = all CPUs) at each of ``--compare-precisions``,
    alternating within each of ``--rounds`` rounds (a shared box changes load by the minute); best round each."""
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    backbone = load_backbone(str(model), args.device, torch.float32)  # bf16 autocasts these same fp32 weights
    best: dict[tuple[str, bool], float] = {}
    for r in range(args.rounds):
        for grid in (False, True):
            for precision in args.compare_precisions:
                rate = forward_bound(backbone, paths, args.batch_size, args.forward_batches, precision, grid)
                best[precision, grid] = max(rate, best.get((precision, grid), 0.0))
        print(f"round {r}: " + ", ".join(f"{p}{' grid' if g else ''} {v:.1f}" for (p, g), v in best.items())
              + f" img/s (best so far), load {os.getloadavg()[0]:.1f}", flush=True)
    base = args.compare_precisions[0]
    print("\n| forward (batch %d) | %s |" % (args.batch_size, " | ".join(args.compare_precisions)))
    print("|---|" + "---|" * len(args.compare_precisions))
    for grid in (False, True):
        cells = [f"{best[p, grid]:.1f} img/s ({best[p, grid] / best[base, grid]:.2f}x)"
                 for p in args.compare_precisions]
        print(f"| ViT-B/32 random, {'fc + grid' if grid else 'fc only'} | {' | '.join(cells)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=REPO / "runs" / "bench_extract")
    parser.add_argument("--size", default="500x375", help="JPEG width x height")
    parser.add_argument("--tiny-counts", type=int, nargs="*", default=[1000, 5000], help="none: skip the tiny ViT")
    parser.add_argument("--b32-counts", type=int, nargs="*", default=[256, 1024], help="none: skip ViT-B/32")
    parser.add_argument("--naive", type=int, default=32, help="images for the naive one-at-a-time loop")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--tiny-workers", type=int, default=2, help="decoding workers (tiny model: decode-bound)")
    parser.add_argument("--b32-workers", type=int, default=0,
                        help="decoding workers (ViT-B/32 is forward-bound: decode in the main process, as the CLI "
                             "does by default on a CPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                        help="the forward's arithmetic for every measurement (the script's --precision)")
    parser.add_argument("--compare-precisions", nargs="*", default=[],
                        help="instead of the table: the ViT-B/32 forward at these precisions, alternating")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of --compare-precisions (best of)")
    parser.add_argument("--forward-batches", type=int, default=4, help="batches timed for the forward bound")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    size = tuple(int(v) for v in args.size.split("x"))
    if args.compare_precisions:
        if not (args.workdir / "vit_b32.pt").exists():
            make_openai_clip(args.workdir / "vit_b32.pt", VIT_B32)
        compare_precisions(args.workdir / "vit_b32.pt", ensure_images(args.workdir, args.batch_size, size), args)
        return
    paths = ensure_images(args.workdir, max(args.tiny_counts + args.b32_counts), size)  # type: ignore[arg-type]
    models = {"tiny ViT (32 px)": (args.workdir / "tiny_vit.pt", TINY_VIT, args.tiny_counts, args.tiny_workers),
              "ViT-B/32 random": (args.workdir / "vit_b32.pt", VIT_B32, args.b32_counts, args.b32_workers)}
    print(f"torch {torch.__version__}, {len(os.sched_getaffinity(0))} CPUs, device {args.device}, batch "
          f"{args.batch_size}, precision {args.precision}, JPEG {args.size}; script threads = CPUs - workers (>= 1)\n")
    print("| model | images | workers | script img/s | forward bound (before-after) | decode bound | "
          "script / min(bounds) | naive img/s | script / naive | peak MiB: main RSS / + workers' USS |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, (path, spec, counts, workers) in models.items():
        if not counts:
            continue
        if not path.exists():
            make_openai_clip(path, spec)
        bench_model(name, path, counts, workers, args, paths)


if __name__ == "__main__":
    main()
