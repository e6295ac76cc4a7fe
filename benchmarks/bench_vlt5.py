"""Speed of the VL-T5 joint encoder at the real (t5-base / Epoch30) size, random weights.

    python benchmarks/bench_vlt5.py                         # t5-base shape, CPU, a minute or two on 2 cores
    python benchmarks/bench_vlt5.py --size tiny --device cuda --batch 64
    python benchmarks/bench_vlt5.py --checkpoint snap/pretrain/VLT5/Epoch30.pth   # also time the surgery + load

Measured, per attention implementation (eager, sdpa), with the configured batch of questions (``--text`` tokens,
a quarter of them padding) and ``--regions`` visual tokens (36 = VL_adapter's pooled 6x6 CLIP grid):

* joint: ``JointEncoder`` forward (text + visual tokens) — what a query costs;
* text-only: ``JointEncoder`` with no visual tokens vs transformers' own ``T5EncoderModel`` on the same weights —
  the overhead of driving the T5 blocks with our precomputed bias (should be ~0);
* train step: forward + backward with Houlsby adapters under the ``adapters+visual+head`` policy.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from adapters import HoulsbyConfig, inject  # noqa: E402
from adapters.policy import apply_policy  # noqa: E402
from vlt5 import JointEncoder, VLT5Config  # noqa: E402
from vlt5.tiny import tiny_config  # noqa: E402


def timed(fn: Callable[[], object], repeats: int, device: str) -> float:
    """Median seconds of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def bench_one(cfg: VLT5Config, ids: torch.Tensor, feats: torch.Tensor, repeats: int, dev: str) -> str:
    """One line of timings for one attention implementation."""
    from transformers import T5EncoderModel

    enc = JointEncoder(cfg).to(dev).eval()
    t5 = T5EncoderModel(cfg.to_t5_config()).to(dev).eval()  # transformers' own encoder, same text weights
    t5.load_state_dict({k: v for k, v in enc.state_dict().items()
                        if k.startswith("shared.") or (k.startswith("encoder.") and "visual" not in k)}, strict=False)
    t5.encoder.embed_tokens = t5.shared
    with torch.no_grad():
        joint = timed(lambda: enc(ids, vis_feats=feats), repeats, dev)
        ours = timed(lambda: enc(ids), repeats, dev)
        theirs = timed(lambda: t5(input_ids=ids, attention_mask=(ids != 0).long()), repeats, dev)
    inject(enc, HoulsbyConfig())
    apply_policy(enc, "adapters+visual")
    enc.train()
    step = timed(lambda: enc(ids, vis_feats=feats).last_hidden_state.float().pow(2).mean().backward(), repeats, dev)
    B = ids.shape[0]
    return (f"{cfg.attn_implementation:5s}  joint fwd {1e3 * joint:8.1f} ms ({B / joint:7.1f} queries/s)   "
            f"text-only: ours {1e3 * ours:7.1f} ms vs T5EncoderModel {1e3 * theirs:7.1f} ms   "
            f"adapter train step {1e3 * step:8.1f} ms")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=["base", "tiny"], default="base")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--text", type=int, default=20)
    p.add_argument("--regions", type=int, default=36)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--checkpoint", type=Path, help="a real VL-T5 .pth: time from_vlt5_checkpoint on it")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base_cfg = VLT5Config(dropout_rate=0.0) if args.size == "base" else tiny_config(dropout_rate=0.0)
    B, L, V, dev = args.batch, args.text, args.regions, args.device
    ids = torch.randint(3, 1000 if args.size == "base" else 99, (B, L), device=dev)
    ids[:, -1] = 1
    ids[: B // 2, 3 * L // 4:] = 0  # half the batch padded
    feats = torch.randn(B, V, base_cfg.visual.feat_dim, device=dev)
    print(f"size={args.size} device={dev} batch={B} text={L} regions={V} threads={torch.get_num_threads()}")
    if args.checkpoint:
        start = time.perf_counter()
        enc, report = JointEncoder.from_vlt5_checkpoint(args.checkpoint)
        print(f"from_vlt5_checkpoint: {time.perf_counter() - start:.1f} s\n{report}")
    for attn in ("eager", "sdpa"):
        print(bench_one(base_cfg.with_overrides(attn_implementation=attn), ids, feats, args.repeats, dev))

if __name__ == "__main__":
    main()
