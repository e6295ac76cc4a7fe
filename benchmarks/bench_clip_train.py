"""CLIP training step: ours (``clip_family``) vs open_clip's own step, and gradient checkpointing on/off.

    python benchmarks/bench_clip_train.py [--configs tiny vit-b-32] [--steps 20 4] [--threads 2] [--json out.json]

For each config, each variant runs in a fresh process (so ``ru_maxrss`` is that variant's own peak memory) on one
fixed in-memory batch of random pixels and real captions, with the same step: forward, loss, backward, clip at
1.0, AdamW step, zero_grad:

* ``ours`` — :class:`clip_family.model.ClipFamilyModel` + :func:`clip_family.losses.clip_loss` (the body of
  ``CLIPTask.training_forward``), gradient checkpointing off / on;
* ``open_clip`` — ``open_clip.model.CLIP`` with QuickGELU and ``open_clip.loss.ClipLoss`` on the same shapes,
  gradient checkpointing off / on (``set_grad_checkpointing``).

``tiny`` is the tests' tiny config (ViT 32 px / patch 8, width 128, 2 layers; text width 64, 2 layers, context 13),
batch 32; ``vit-b-32`` is the released ViT-B/32's shape with random weights, batch 8. Reported: median step time
over the timed steps (after 2 warm-up steps) and peak RSS. Goal: ours / open_clip <= 1.05.
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


def one(impl: str, config: str, checkpointing: bool, steps: int, threads: int) -> dict[str, float]:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    shape = SHAPES[config]
    model, loss_fn, set_ckpt = build(impl, shape)
    model.train()
    if checkpointing:
        set_ckpt(True)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    pixels = torch.randn(shape[0], 3, shape[1], shape[1])
    times = []
    for step in range(steps + 2):
        start = time.perf_counter()
        loss = loss_fn(pixels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= 2:
            times.append(time.perf_counter() - start)
    return {"step_s": statistics.median(times), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["tiny", "vit-b-32"], choices=list(SHAPES))
    p.add_argument("--steps", nargs="+", type=int, default=[20, 4])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path)
    p.add_argument("--one", nargs=3, metavar=("IMPL", "CONFIG", "CKPT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        impl, config, ckpt = args.one
        print(json.dumps(one(impl, config, ckpt == "1", args.steps[0], args.threads)))
        return
    results = []
    for config, steps in zip(args.configs, args.steps + args.steps[-1:] * len(args.configs)):
        for ckpt in ("0", "1"):
            for impl in ("open_clip", "ours"):
                out = subprocess.run([sys.executable, __file__, "--one", impl, config, ckpt, "--steps", str(steps),
                                      "--threads", str(args.threads)], capture_output=True, text=True, check=True)
                row = {"config": config, "impl": impl, "checkpointing": ckpt == "1",
                       **json.loads(out.stdout.strip().splitlines()[-1])}
                results.append(row)
                print(f"{config:9} {impl:9} ckpt={ckpt}  step {row['step_s'] * 1000:8.1f} ms  "
                      f"peak RSS {row['peak_rss_mb']:7.0f} MB", flush=True)
    for config in args.configs:
        for ckpt in (False, True):
            pair = {r["impl"]: r for r in results if r["config"] == config and r["checkpointing"] == ckpt}
            print(f"{config} ckpt={ckpt}: ours / open_clip = {pair['ours']['step_s'] / pair['open_clip']['step_s']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
