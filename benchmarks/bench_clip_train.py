"""CLIP training step: ours (``clip_family``) vs open_clip's own step, and gradient checkpointing on/off.

    python benchmarks/bench_clip_train.py [--configs tiny vit-b-32] [--rounds 40 8] [--threads 1] [--json out.json]

The machine this runs on is shared, so step times drift with the load. The ratio is therefore measured with both
implementations in **one process, alternating step by step**: for each (config, checkpointing) a fresh process
builds both models and one fixed in-memory batch (random pixels, real captions), warms each up, then runs
``--rounds`` rounds of one step each, the order swapped every round (ours first, then open_clip first, ...). Each
round gives a ratio ours / open_clip of two steps taken within seconds of each other; the reported ratio is the
median of the per-round ratios (with its quartiles), next to the load average before and after; both the wall-time
ratio and the CPU-time ratio (``time.process_time``: with ``--threads 1`` the work of the step, hardly affected by
other jobs taking the cores in between) are reported. Peak memory is
measured separately, each variant alone in a fresh process (``ru_maxrss`` is its own peak), over a few steps.

One step is the same for both: forward, loss, backward, clip at 1.0, AdamW step, zero_grad:

* ``ours`` — :class:`clip_family.model.ClipFamilyModel` + :func:`clip_family.losses.clip_loss` (the body of
  ``CLIPTask.training_forward``), gradient checkpointing off / on;
* ``open_clip`` — ``open_clip.model.CLIP`` with QuickGELU and ``open_clip.loss.ClipLoss`` on the same shapes,
  gradient checkpointing off / on (``set_grad_checkpointing``).

``tiny`` is the tests' tiny config (ViT 32 px / patch 8, width 128, 2 layers; text width 64, 2 layers, context 13),
batch 32; ``vit-b-32`` is the released ViT-B/32's shape with random weights, batch 8. Goal: ours / open_clip <= 1.05.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHAPES = {  # name: (batch, image res, vit layers, vit width, patch, text ctx, text width, text heads, text layers, embed)
    "tiny": (32, 32, 2, 128, 8, 13, 64, 1, 2, 24),
    "vit-b-32": (8, 224, 12, 768, 32, 77, 512, 8, 12, 512),
}


def build(impl: str, shape: tuple[int, ...]):  # -> (model, step_loss(pixels, texts) -> loss, tokens)
    import torch

    batch, res, layers, width, patch, ctx, twidth, theads, tlayers, embed = shape
    captions = [f"a handwritten {n}" for n in range(batch)]
    if impl == "ours":
        from clip_family.config import ImageTowerConfig, ModelConfig, TextTowerConfig
        from clip_family.losses import clip_loss
        from clip_family.model import ClipFamilyModel

        model = ClipFamilyModel(ModelConfig(
            embed_dim=embed, image=ImageTowerConfig(image_resolution=res, layers=(layers,), width=width,
                                                    patch_size=patch),
            text=TextTowerConfig(context_length=ctx, width=twidth, heads=theads, layers=tlayers)))
        tokens = model.tokenize(captions)

        def loss_fn(pixels: torch.Tensor) -> torch.Tensor:
            image, text, scale, _ = model(pixels, tokens)
            return clip_loss(image, text, scale)

        return model, loss_fn, model.set_gradient_checkpointing
    import open_clip
    from open_clip.loss import ClipLoss
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    model = CLIP(embed, CLIPVisionCfg(layers=layers, width=width, patch_size=patch, image_size=res),
                 CLIPTextCfg(context_length=ctx, vocab_size=49408, width=twidth, heads=theads, layers=tlayers),
                 quick_gelu=True)
    tokens = open_clip.get_tokenizer("ViT-B-32")(captions, context_length=ctx)
    criterion = ClipLoss()

    def loss_fn(pixels: torch.Tensor) -> torch.Tensor:
        image, text, scale = model(pixels, tokens)[:3]
        return criterion(image, text, scale)

    return model, loss_fn, model.set_grad_checkpointing


def prepare(impl: str, config: str, checkpointing: bool, threads: int):  # -> step() callable
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    shape = SHAPES[config]
    model, loss_fn, set_ckpt = build(impl, shape)
    model.train()
    if checkpointing:
        set_ckpt(True)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    pixels = torch.randn(shape[0], 3, shape[1], shape[1], generator=torch.Generator().manual_seed(1))

    def step() -> tuple[float, float]:
        """(wall seconds, CPU seconds of this process) of one training step."""
        start, cpu = time.perf_counter(), time.process_time()
        loss = loss_fn(pixels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start, time.process_time() - cpu

    return step


def one(impl: str, config: str, checkpointing: bool, steps: int, threads: int) -> dict[str, float]:
    """One variant alone in this process: its median step and its own peak RSS."""
    step = prepare(impl, config, checkpointing, threads)
    times = [step()[0] for _ in range(steps + 2)][2:]
    return {"step_s": statistics.median(times), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def pair(config: str, checkpointing: bool, rounds: int, threads: int) -> dict[str, object]:
    """Both variants in this process, one step each per round, the order swapped every round."""
    steps = {impl: prepare(impl, config, checkpointing, threads) for impl in ("ours", "open_clip")}
    for _ in range(2):  # warm-up
        for step in steps.values():
            step()
    load_before = os.getloadavg()
    times: dict[str, list[tuple[float, float]]] = {"ours": [], "open_clip": []}
    for r in range(rounds):
        for impl in (("ours", "open_clip") if r % 2 == 0 else ("open_clip", "ours")):
            times[impl].append(steps[impl]())
    return {"times": times, "load_before": load_before, "load_after": os.getloadavg()}


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(values, n=4)
    return q[0], statistics.median(values), q[2]


def child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["tiny", "vit-b-32"], choices=list(SHAPES))
    p.add_argument("--rounds", nargs="+", type=int, default=[40, 8], help="alternating rounds per config")
    p.add_argument("--memory-steps", type=int, default=2, help="timed steps of each variant alone (peak RSS)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU time = the step's work)")
    p.add_argument("--json", type=Path)
    p.add_argument("--one", nargs=3, metavar=("IMPL", "CONFIG", "CKPT"), help=argparse.SUPPRESS)
    p.add_argument("--pair", nargs=2, metavar=("CONFIG", "CKPT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        impl, config, ckpt = args.one
        print(json.dumps(one(impl, config, ckpt == "1", args.memory_steps, args.threads)))
        return
    if args.pair:
        print(json.dumps(pair(args.pair[0], args.pair[1] == "1", args.rounds[0], args.threads)))
        return
    rows = []
    for config, rounds in zip(args.configs, args.rounds + args.rounds[-1:] * len(args.configs)):
        for ckpt in ("0", "1"):
            run = child(["--pair", config, ckpt, "--rounds", str(rounds), "--threads", str(args.threads)])
            times = run["times"]
            wall = {impl: [t[0] for t in times[impl]] for impl in times}
            cpu = {impl: [t[1] for t in times[impl]] for impl in times}
            memory = {impl: child(["--one", impl, config, ckpt, "--memory-steps", str(args.memory_steps),
                                   "--threads", str(args.threads)])["peak_rss_mb"] for impl in ("open_clip", "ours")}
            row = {"config": config, "checkpointing": ckpt == "1", "rounds": rounds,
                   "ratio_quartiles": quartiles([a / b for a, b in zip(wall["ours"], wall["open_clip"])]),
                   "cpu_ratio_quartiles": quartiles([a / b for a, b in zip(cpu["ours"], cpu["open_clip"])]),
                   "ours_step_s": statistics.median(wall["ours"]),
                   "open_clip_step_s": statistics.median(wall["open_clip"]),
                   "ours_cpu_s": statistics.median(cpu["ours"]), "open_clip_cpu_s": statistics.median(cpu["open_clip"]),
                   "load_before": run["load_before"], "load_after": run["load_after"],
                   "ours_peak_rss_mb": memory["ours"], "open_clip_peak_rss_mb": memory["open_clip"], "times": times}
            rows.append(row)
            q1, median, q3 = row["ratio_quartiles"]
            c1, cmedian, c3 = row["cpu_ratio_quartiles"]
            print(f"{config:9} ckpt={ckpt}  open_clip {row['open_clip_step_s'] * 1000:8.1f} ms  ours "
                  f"{row['ours_step_s'] * 1000:8.1f} ms  ours/open_clip wall {median:.3f} ({q1:.3f}-{q3:.3f}) CPU "
                  f"{cmedian:.3f} ({c1:.3f}-{c3:.3f}), {rounds} rounds  load {run['load_before'][0]:.1f} -> "
                  f"{run['load_after'][0]:.1f}  "
                  f"peak RSS open_clip {memory['open_clip']:.0f} MB ours {memory['ours']:.0f} MB", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
