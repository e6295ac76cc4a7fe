"""Training step time: the engine (``retrieval.training.train`` on :mod:`engine`) vs the old loop vs the bound.

    python benchmarks/bench_train.py [--configs tiny t5-small] [--steps 60 12] [--threads 1] [--json out.json]

For each model size it times, on the same data, interleaved over ``--rounds`` rounds (best median kept):
* ``bound``  — forward + backward + clip + AdamW step + schedule of the task on batches already collated and
  held in memory (no data loading at all, in this process): the best any loop could do;
* ``engine`` — the generic engine's loop (``step_time`` of ``log.jsonl``: waiting for the batch, moving it,
  forward, backward, step, logging), in a fresh process;
* ``old``    — the 192-line ``train()`` of ``retrieval/training/loop.py`` before the engine, run from an export of
  commit ``--old-commit`` (``git archive`` into a temporary folder; nothing in the checkout changes) in a fresh
  process with the same settings (its flat ``model`` config), also read from its ``log.jsonl``.
Both loops read the query features from the in-memory cache (the default when the file fits).
The data are the demo task's queries with random features of realistic shapes: ``tiny`` = the demo CLIP
(fc 48, 8x8 grid of width 64) and the tiny random-init encoder; ``t5-small`` = ViT-B/32-like features (fc 512,
7x7 grid of width 768) and a t5-small-sized encoder (d 512, 6 layers, 8 heads, d_ff 2048).
Goals: engine / old <= 1.05 (issue 9) and engine / bound <= 1.1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
OLD_COMMIT = "3209673"  # the last commit with retrieval/training/loop.py's train()
RUNNER = ("import json, sys; import retrieval; assert retrieval.__file__.startswith(sys.argv[2]), retrieval.__file__; "
          "from retrieval.training import TrainConfig, train; train(TrainConfig.from_dict(json.loads(sys.argv[1])))")

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from retrieval.demo.task import DemoTaskConfig, write_demo_task  # noqa: E402
from engine.optim import build_optimizer, build_scheduler  # noqa: E402
from retrieval.training import TrainConfig, build_task  # noqa: E402
from retrieval.training.batches import EpochBatches  # noqa: E402
from retrieval.training.tokenizer import jsonl_texts, train_tokenizer  # noqa: E402

SIZES = {
    "tiny": dict(features=(48, 64, 64), model=dict(d_model=64, num_layers=2, num_heads=4, d_kv=16, d_ff=128),
                 batch=32),
    "t5-small": dict(features=(512, 49, 768), model=dict(d_model=512, num_layers=6, num_heads=8, d_kv=64, d_ff=2048),
                     batch=8),
}


def write_features(path: Path, ids: list[str], fc: int, tokens: int | None = None, width: int | None = None) -> None:
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f.create_dataset("ids", data=np.array(ids, dtype=h5py.string_dtype("utf-8")))
        f.create_dataset("fc", data=rng.standard_normal((len(ids), fc)).astype(np.float16))
        if tokens:
            f.create_dataset("grid", data=rng.standard_normal((len(ids), tokens, width)).astype(np.float16))
            side = int(tokens**0.5)
            f.attrs.update(grid_hw=[side, side])
        f.attrs.update(format_version=1, fc_dim=fc, modality="image")


def make_data(root: Path, size: str) -> dict[str, str]:
    paths = write_demo_task(root, DemoTaskConfig(train_scenes=600, dev_scenes=2, test_scenes=2, image_size=32,
                                                             questions_per_scene=2))
    fc, tokens, width = SIZES[size]["features"]
    kb_ids = [json.loads(line)["id"] for line in paths["kb"].read_text().splitlines()]
    scenes = sorted(p.stem for p in paths["scenes"].glob("*.png"))
    write_features(root / "kb.h5", kb_ids, fc)
    write_features(root / "scenes.h5", scenes, fc, tokens, width)
    train_tokenizer(jsonl_texts([paths["train"], paths["kb"]]), root / "tokenizer")
    return {"kb": str(paths["kb"]), "kb_features": str(root / "kb.h5"), "train_queries": str(paths["train"]),
            "query_features": str(root / "scenes.h5"), "tokenizer": str(root / "tokenizer")}


def config(data: dict[str, str], size: str, out: Path, steps: int, threads: int) -> dict:
    """The run's config as a dict in the engine's (nested) layout."""
    return {
        "data": {**{k: v for k, v in data.items() if k != "tokenizer"}, "batch_size": SIZES[size]["batch"],
                 "hard_negatives": 3, "cache_features": "yes"},
        "model": {**SIZES[size]["model"], "inputs": {"fc_token": True, "boxes": "grid_cells"},
                  "tokenizer": data["tokenizer"]},
        "optim": {"lr_backbone": 1e-4},
        "loop": {"out": str(out), "max_steps": steps, "log_every": 1, "threads": threads, "progress": False,
                 "save_init": False, "tensorboard": False},
        "eval": {"baselines": False}}


def old_layout(cfg: dict) -> dict:
    """The same config in the old loop's layout (format 1: ``model`` flat; no ``loop.curves``)."""
    model = {k: v for k, v in cfg["model"].items() if k != "inputs"} | cfg["model"]["inputs"]
    loop = {k: v for k, v in cfg["loop"].items() if k != "curves"}
    return {**cfg, "model": model, "loop": loop}


def bound_times(cfg: TrainConfig, steps: int) -> list[float]:
    """fwd + bwd + clip + step + schedule on pre-collated in-memory batches (the same model and task)."""
    torch.manual_seed(0)
    torch.set_num_threads(cfg.loop.threads or 1)
    task = build_task(cfg)
    optimizer = build_optimizer(task.param_groups(), cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, steps)
    source = EpochBatches(task.splits["train"], task.store, task.tokens, task.encoder.config.inputs,
                          cfg.data.batch_size, 3, 0, 0)
    batches = [source[m] for m in range(min(len(source), 16))]
    trainable = [p for p in task.parameters() if p.requires_grad]
    task.train()
    times = []
    for step in range(steps):
        t0 = time.perf_counter()
        loss, _ = task.training_forward(batches[step % len(batches)])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, cfg.optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        times.append(time.perf_counter() - t0)
    return times


def loop_times(tree: Path, cfg: dict) -> list[float]:
    """``train(cfg)`` of the code in ``tree`` in a fresh process; the logged step times."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(cfg["loop"]["threads"])}
    subprocess.run([sys.executable, "-c", RUNNER, json.dumps(cfg), str(tree)], cwd=tree, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = Path(cfg["loop"]["out"]) / "log.jsonl"
    return [r["step_time"] for r in map(json.loads, log.read_text().splitlines()) if r["kind"] == "train"]


def export_old_tree(commit: str, where: Path) -> Path:
    """The files of ``commit`` under ``where`` (``git archive``: the checkout and its git state are untouched)."""
    where.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    return where


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=["tiny", "t5-small"], choices=list(SIZES))
    p.add_argument("--steps", type=int, nargs="+", default=[60, 12], help="timed steps per config (after warm-up)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3, help="interleaved repetitions (noisy shared machines)")
    p.add_argument("--old-commit", default=OLD_COMMIT)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    results = {}
    print(f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPUs; median step time (ms)")
    print(f"{'config':<10} {'bound':>8} {'old loop':>9} {'engine':>8}   engine/old   engine/bound")
    with tempfile.TemporaryDirectory() as tmp:
        old_tree = export_old_tree(args.old_commit, Path(tmp) / "old")
        for size, steps in zip(args.configs, args.steps + args.steps[-1:] * len(args.configs)):
            data = make_data(Path(tmp) / f"data_{size}", size)
            total = steps + args.warmup
            row: dict[str, float] = {}
            for round_ in range(args.rounds):  # interleaved rounds, alternating the order of the two loops
                base = config(data, size, Path(tmp) / f"bound_{size}{round_}", total, args.threads)
                times = {"bound": bound_times(TrainConfig.from_dict(base), total)}
                order = ("old", "engine") if round_ % 2 == 0 else ("engine", "old")
                for name in order:
                    cfg = config(data, size, Path(tmp) / f"{name}_{size}{round_}", total, args.threads)
                    times[name] = loop_times(old_tree, old_layout(cfg)) if name == "old" else loop_times(REPO, cfg)
                for name, values in times.items():
                    row[name] = min(row.get(name, float("inf")), statistics.median(values[args.warmup:]))
            results[size] = {k: round(v * 1000, 2) for k, v in row.items()}
            results[size]["engine_over_old"] = round(row["engine"] / row["old"], 3)
            results[size]["engine_over_bound"] = round(row["engine"] / row["bound"], 3)
            r = results[size]
            print(f"{size:<10} {r['bound']:>8.1f} {r['old']:>9.1f} {r['engine']:>8.1f}   {r['engine_over_old']:>9.3f}x"
                  f"   {r['engine_over_bound']:>11.3f}x", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
