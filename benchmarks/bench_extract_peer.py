"""Our extraction vs ``clip-retrieval inference`` (the PyPI package), whole processes, alternating, in one go.

    python3 -m venv /tmp/crenv && /tmp/crenv/bin/pip install clip-retrieval 'setuptools<81'   # once
    python benchmarks/bench_extract_peer.py --peer /tmp/crenv/bin/clip-retrieval

Same images (500x375 JPEGs, ``bench_extract.ensure_images``), the same OpenAI-format checkpoint (a randomly
initialised ViT-B/32, ``feature_extraction.tiny.VIT_B32``, read by ``clip.load`` on both sides), the same batch size,
fc only (``--no-grid``; clip-retrieval ``--enable_text False``), float16 stored (clip-retrieval stores float16).
Variants run round-robin (``--repeats`` rounds), so a change of load on a shared machine hits every variant alike;
each row is the best round. Time = the whole process, from ``exec`` to exit (imports, model load, the peer's warm-up,
writing), measured by this script; "encode img/s" is our summary's rate of the encoding loop alone. The load
average (1 min) before each run is printed. At the end the peer's embeddings are compared with ours (cosine of the
L2-normalised fc, matched by file name): the two computed the same thing.

clip-retrieval's ``--num_prepro_workers`` defaults to 4; on a small CPU box that starves its forward, so
``--peer-workers`` (default 1) sets it; ours uses its CPU default (decode in the main process, every core to torch).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np

from bench_extract import REPO, ensure_images  # noqa: I001  (sibling module; puts the repo on sys.path)
from feature_extraction.tiny import VIT_B32, make_openai_clip

ENV = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled",
                    "PYTHONWARNINGS": "ignore"}
PEER_METADATA = ("import json, sys, pandas as pd; "
                 "print(json.dumps(pd.read_parquet(sys.argv[1])['image_path'].tolist()))")


def ours(images: Path, model: Path, out: Path, batch: int, precision: str) -> list[str]:
    return [sys.executable, str(REPO / "feature_extraction" / "clip_prepro_feats.py"), "--images", str(images),
            "--out", str(out / "feats.h5"), "--backbone", str(model), "--batch-size", str(batch), "--no-grid",
            "--precision", precision, "--device", "cpu", "--no-progress", "--quiet"]


def peer(exe: Path, images: Path, model: Path, out: Path, batch: int, workers: int) -> list[str]:
    return [str(exe), "inference", "--input_dataset", str(images), "--output_folder", str(out), "--clip_model",
            str(model), "--enable_text", "False", "--batch_size", str(batch), "--num_prepro_workers", str(workers)]


def timed(cmd: list[str], out: Path) -> tuple[float, float | None]:
    """(whole-process seconds, our encode rate or None) of one fresh run into an empty ``out``."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    rate = re.search(r"written \d+ \(([\d.]+) items/s\)", proc.stdout)
    return seconds, float(rate.group(1)) if rate else None


def agreement(our_out: Path, peer_out: Path, peer_python: Path) -> float:
    """Min cosine between our fc (L2-normalised) and the peer's embedding of the same file."""
    with h5py.File(our_out / "feats.h5") as f:
        ids = [i.decode() if isinstance(i, bytes) else i for i in f["ids"][:]]
        fc = f["fc"][:].astype(np.float64)
    paths = json.loads(subprocess.run([str(peer_python), "-c", PEER_METADATA,
                                       str(peer_out / "metadata" / "metadata_0.parquet")],
                                      capture_output=True, text=True, check=True, env=ENV).stdout)
    emb = np.load(peer_out / "img_emb" / "img_emb_0.npy").astype(np.float64)
    row = {i: n for n, i in enumerate(ids)}
    mine = fc[[row[Path(p).stem] for p in paths]]
    mine /= np.linalg.norm(mine, axis=1, keepdims=True)
    return float(np.min(np.sum(mine * emb / np.linalg.norm(emb, axis=1, keepdims=True), axis=1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=REPO / "runs" / "bench_extract")
    parser.add_argument("--peer", type=Path, default=Path("/tmp/crenv/bin/clip-retrieval"),
                        help="the clip-retrieval executable of its own virtual environment")
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--size", default="500x375")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="round-robin rounds; each row is the best")
    parser.add_argument("--peer-workers", type=int, default=1)
    parser.add_argument("--variants", nargs="+", default=["ours fp32", "ours bf16", "clip-retrieval"])
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    paths = ensure_images(args.workdir, args.images, tuple(int(v) for v in args.size.split("x")))  # type: ignore
    folder = args.workdir / f"peer_{args.images}"
    if not folder.is_dir() or len(list(folder.glob("*.jpg"))) != args.images:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        for p in paths:
            (folder / p.name).symlink_to(p)
    model = args.workdir / "vit_b32.pt"
    if not model.exists():
        make_openai_clip(model, VIT_B32)
    if "clip-retrieval" in args.variants and not args.peer.exists():
        sys.exit(f"{args.peer} not found: install clip-retrieval into its own venv (see the module docstring)")
    commands = {"ours fp32": ours(folder, model, args.workdir / "peer_ours_fp32", args.batch_size, "fp32"),
                "ours bf16": ours(folder, model, args.workdir / "peer_ours_bf16", args.batch_size, "bf16"),
                "clip-retrieval": peer(args.peer, folder, model, args.workdir / "peer_cr", args.batch_size,
                                       args.peer_workers)}
    outs = {"ours fp32": "peer_ours_fp32", "ours bf16": "peer_ours_bf16", "clip-retrieval": "peer_cr"}
    print(f"{args.images} JPEGs {args.size}, batch {args.batch_size}, fc only, {len(os.sched_getaffinity(0))} CPUs, "
          f"{args.repeats} round-robin rounds, clip-retrieval --num_prepro_workers {args.peer_workers}", flush=True)
    best: dict[str, tuple[float, float | None]] = {}
    for r in range(args.repeats):
        for name in args.variants:
            load = os.getloadavg()[0]
            seconds, rate = timed(commands[name], args.workdir / outs[name])
            print(f"round {r}: {name}: {seconds:.1f} s whole process, encode rate {rate}, load before {load:.1f}",
                  flush=True)
            if name not in best or seconds < best[name][0]:
                best[name] = (seconds, rate)
    print("\n| variant | best whole-process s | images/s (whole process) | encode img/s (ours) | vs clip-retrieval |")
    print("|---|---|---|---|---|")
    base = best.get("clip-retrieval", (None, None))[0]
    for name, (seconds, rate) in best.items():
        ratio = f"{base / seconds:.2f}x" if base else "-"
        print(f"| {name} | {seconds:.1f} | {args.images / seconds:.1f} | {rate or '-'} | {ratio} |")
    if "clip-retrieval" in best:
        peer_python = args.peer.parent / "python"
        for name in ("ours fp32", "ours bf16"):
            if name in best:
                cos = agreement(args.workdir / outs[name], args.workdir / "peer_cr", peer_python)
                print(f"{name} vs clip-retrieval embeddings: min cosine {cos:.5f}")


if __name__ == "__main__":
    main()
