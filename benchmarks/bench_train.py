"""Training step time: the engine (``retrieval.training.train`` on :mod:`engine`) vs the old loop vs the bound.

    python benchmarks/bench_train.py [--configs tiny t5-small] [--steps 60 12] [--threads 1] [--json out.json]

For each model size it times, on the same data, interleaved over ``--rounds`` rounds (best median kept):
* ``bound``  — forward + backward + clip + AdamW step + schedule of the task on batches already collated and
  held in memory (no data loading at all, in this process): the best any loop could do;
* ``engine`` — the generic engine's loop, ``retrieval.training.train`` in this process;
* ``old step`` — a faithful copy of the old loop's inner step (:func:`old_step_times`) on today's model, in this
  process: the loop-only comparison (same model code, same process as ``engine``);
* ``old tree`` — the 192-line ``train()`` of ``retrieval/training/loop.py`` before the engine, run whole from an
  export of commit ``--old-commit`` (``git archive`` into a temporary folder; nothing in the checkout changes) in a
  fresh process with the same settings (its flat ``model`` config), read from its ``log.jsonl``. Its model code is
  that commit's too (the encoder has changed since), so it is a reference, not the loop-only comparison.
Every loop logs every step; a loop's time per step is the gap between consecutive ``train`` records of its
``log.jsonl`` (all of it: waiting for the batch, moving it, forward, backward, step, logging). Every loop reads the
query features from the in-memory cache (the default when the file fits).
The data are the demo task's queries with random features of realistic shapes: ``tiny`` = the demo CLIP
(fc 48, 8x8 grid of width 64) and the tiny random-init encoder; ``t5-small`` = ViT-B/32-like features (fc 512,
7x7 grid of width 768) and a t5-small-sized encoder (d 512, 6 layers, 8 heads, d_ff 2048).
Goals: engine / old step <= 1.05 (issue 9) and engine / bound <= 1.1.
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


DEFAULT_STEPS = {"tiny": 60, "t5-small": 12}


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


def old_step_times(cfg: TrainConfig) -> list[float]:
    """A faithful copy of the old loop's inner step (``retrieval/training/loop.py`` at ``OLD_COMMIT``: timing window,
    autocast, GradScaler, clip, step, schedule, per-step logging), here on today's model and task, one process.
    Only the DDP/accumulation branches it never takes on one process with ``grad_accum 1`` are left out."""
    from engine.logs import MetricLogger

    torch.manual_seed(cfg.loop.seed)
    torch.set_num_threads(cfg.loop.threads or 1)
    task = build_task(cfg)
    optimizer = build_optimizer(task.param_groups(), cfg.optim)
    total_steps = cfg.loop.max_steps or 0
    scheduler = build_scheduler(optimizer, cfg.optim, total_steps)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    autocast_dtype = None
    trainable = [p for p in task.parameters() if p.requires_grad]
    run_dir = Path(cfg.loop.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    log = MetricLogger(run_dir, True, False)
    task.train()
    window: dict[str, float] = {}
    global_step, accum = 0, 1
    per_epoch = task.micro_batches_per_epoch()
    for epoch in range(total_steps // per_epoch + 1):
        if global_step >= total_steps:
            break
        loader = task.train_batches(epoch, 0, per_epoch)
        t_step = t_data = time.perf_counter()
        for micro, batch in enumerate(loader):
            window["data_time"] = window.get("data_time", 0.0) + time.perf_counter() - t_data
            batch["inputs"] = {k: v.to("cpu", non_blocking=True) for k, v in batch["inputs"].items()}
            sync = (micro + 1) % accum == 0
            with torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast_dtype is not None):
                loss, metrics = task(batch)
            scaler.scale(loss / accum).backward()
            for name, value in metrics.items():
                window[name] = window.get(name, 0.0) + float(value) / accum
            if not sync:
                continue
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.optim.grad_clip or float("inf"))
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            global_step += 1
            window["steps"] = window.get("steps", 0.0) + 1
            window["step_time"] = window.get("step_time", 0.0) + time.perf_counter() - t_step
            window["grad_norm"] = window.get("grad_norm", 0.0) + float(grad_norm)
            n = window.pop("steps")
            values = {k: v / n for k, v in window.items()}
            values.update({f"lr_{g['name']}": g["lr"] for g in optimizer.param_groups}, epoch=epoch)
            log.log("train", global_step, values, console=True)
            window = {}
            if global_step >= total_steps:
                break
            t_step = t_data = time.perf_counter()
    log.close()
    return step_walls(run_dir)


def step_walls(run_dir: Path) -> list[float]:
    """Wall time per optimizer step, everything included (data, step, logging): the gaps between consecutive
    ``train`` records of ``log.jsonl`` (logged every step; timestamps in ms)."""
    stamps = [r["time"] for r in map(json.loads, (run_dir / "log.jsonl").read_text().splitlines())
              if r["kind"] == "train"]
    return [b - a for a, b in zip(stamps, stamps[1:])]


def engine_times(cfg: TrainConfig) -> list[float]:
    """The engine's loop (``retrieval.training.train``) in this process; the logged step times."""
    from retrieval.training import train

    train(cfg)
    return step_walls(Path(cfg.loop.out))


def loop_times(tree: Path, cfg: dict) -> list[float]:
    """``train(cfg)`` of the code in ``tree`` in a fresh process; the logged step times."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(cfg["loop"]["threads"])}
    subprocess.run([sys.executable, "-c", RUNNER, json.dumps(cfg), str(tree)], cwd=tree, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return step_walls(Path(cfg["loop"]["out"]))


def export_old_tree(commit: str, where: Path) -> Path:
    """The files of ``commit`` under ``where`` (``git archive``: the checkout and its git state are untouched)."""
    where.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    return where


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=["tiny", "t5-small"], choices=list(SIZES))
    p.add_argument("--steps", type=int, nargs="+", help="timed steps per config, in --configs order (after warm-up; "
                   "default: tiny 60, t5-small 12)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3, help="interleaved repetitions (noisy shared machines)")
    p.add_argument("--old-commit", default=OLD_COMMIT)
    p.add_argument("--no-old-tree", action="store_true", help="skip the whole-old-code reference (faster)")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    results = {}
    print(f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPUs; median step time (ms)")
    print(f"{'config':<10} {'bound':>8} {'old step':>9} {'engine':>8} {'old tree':>9}   engine/old step   "
          "engine/old tree   engine/bound")
    with tempfile.TemporaryDirectory() as tmp:
        old_tree = export_old_tree(args.old_commit, Path(tmp) / "old")
        steps_of = args.steps + args.steps[-1:] * len(args.configs) if args.steps else \
            [DEFAULT_STEPS[c] for c in args.configs]
        for size, steps in zip(args.configs, steps_of):
            data = make_data(Path(tmp) / f"data_{size}", size)
            total = steps + args.warmup
            row: dict[str, float] = {}
            for round_ in range(args.rounds):  # interleaved rounds, alternating the order of the two loops
                base = config(data, size, Path(tmp) / f"bound_{size}{round_}", total, args.threads)
                times = {"bound": bound_times(TrainConfig.from_dict(base), total)}
                order = ("old_step", "engine", "old_tree") if round_ % 2 == 0 else ("engine", "old_step", "old_tree")
                for name in order[:2] if args.no_old_tree else order:
                    cfg = config(data, size, Path(tmp) / f"{name}_{size}{round_}", total, args.threads)
                    if name == "old_tree":
                        times[name] = loop_times(old_tree, old_layout(cfg))
                    else:
                        times[name] = (engine_times if name == "engine" else old_step_times)(TrainConfig.from_dict(cfg))
                for name, values in times.items():
                    row[name] = min(row.get(name, float("inf")), statistics.median(values[args.warmup:]))
            row.setdefault("old_tree", float("nan"))
            results[size] = {k: round(v * 1000, 2) for k, v in row.items()}
            for other in ("old_step", "old_tree", "bound"):
                results[size][f"engine_over_{other}"] = round(row["engine"] / row[other], 3)
            r = results[size]
            print(f"{size:<10} {r['bound']:>8.1f} {r['old_step']:>9.1f} {r['engine']:>8.1f} {r['old_tree']:>9.1f}   "
                  f"{r['engine_over_old_step']:>14.3f}x   {r['engine_over_old_tree']:>14.3f}x   "
                  f"{r['engine_over_bound']:>11.3f}x", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
