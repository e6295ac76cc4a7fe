"""Training step time of the driver's loop vs the in-memory bound of the same model.

    python benchmarks/bench_train.py [--configs tiny t5-small] [--steps 40] [--threads 1] [--json out.json]

For each model size it times
* ``bound``  — forward + backward + clip + AdamW step + schedule of the task on batches already collated and
  held in memory (no data loading at all): the best the loop could do;
* ``driver`` — :func:`retrieval.train`'s loop itself (``step_time`` of ``log.jsonl``: waiting for the batch,
  moving it, forward, backward, step, logging), reading the query features from an HDF5 file in one of three
  ways: ``h5`` (read per batch in the main process), ``h5+worker`` (read by one DataLoader worker, prefetching)
  and ``memory`` (the file cached in RAM, the default when it fits).
The data are the demo task's queries with random features of realistic shapes: ``tiny`` = the demo CLIP
(fc 48, 8x8 grid of width 64) and the tiny random-init encoder; ``t5-small`` = ViT-B/32-like features (fc 512,
7x7 grid of width 768) and a t5-small-sized encoder (d 512, 6 layers, 8 heads, d_ff 2048).
``loader alone`` is the data path without the model (HDF5 reads or the in-memory copy, collation) per batch.
Medians over the timed steps (the first steps are warm-up), best of ``--rounds`` interleaved rounds; the goal
is driver / bound <= 1.1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from retrieval.demo.task import DemoTaskConfig, write_demo_task  # noqa: E402
from retrieval.training import TrainConfig, train  # noqa: E402
from retrieval.training.batches import EpochBatches, TokenizedQuestions, make_loader  # noqa: E402
from retrieval.training.data import feature_dims, load_kb, load_queries, open_features  # noqa: E402
from retrieval.training.model import RetrievalTask, build_encoder, build_optimizer, build_scheduler  # noqa: E402
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


def config(data: dict[str, str], size: str, out: Path, steps: int, threads: int, **data_cfg: object) -> TrainConfig:
    return TrainConfig.from_dict({
        "data": {**{k: v for k, v in data.items() if k != "tokenizer"}, "batch_size": SIZES[size]["batch"], "hard_negatives": 3, **data_cfg},
        "model": {**SIZES[size]["model"], "fc_token": True, "boxes": "grid_cells", "tokenizer": data["tokenizer"]},
        "optim": {"lr_backbone": 1e-4},
        "loop": {"out": str(out), "max_steps": steps, "log_every": 1, "threads": threads, "progress": False,
                 "save_init": False, "tensorboard": False},
        "eval": {"baselines": False}})


def bound_times(cfg: TrainConfig, steps: int) -> list[float]:
    """fwd + bwd + clip + step + schedule on pre-collated in-memory batches (the same model and task)."""
    torch.manual_seed(0)
    torch.set_num_threads(cfg.loop.threads or 1)
    kb = load_kb(cfg.data.kb, cfg.data.kb_features, None, "image")
    store = open_features(cfg.data.query_features, "yes")
    queries = load_queries(cfg.data.train_queries, set(kb.ids), store, "train")
    encoder = build_encoder(cfg.model, *feature_dims(store), kb.dim)
    task = RetrievalTask(encoder, kb.ids, torch.from_numpy(kb.vectors), 0.05, False)
    optimizer = build_optimizer(task, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, steps)
    tokens = TokenizedQuestions(encoder.tokenizer, [q.question for q in queries], encoder.config.inputs)
    source = EpochBatches(queries, store, tokens, encoder.config.inputs, cfg.data.batch_size, 3, 0, 0)
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


def loader_time(cfg: TrainConfig, batches: int) -> float:
    """Seconds per batch of the data path alone (read + tokenised ids + collate), in the main process."""
    kb = load_kb(cfg.data.kb, cfg.data.kb_features, None, "image")
    store = open_features(cfg.data.query_features, cfg.data.cache_features)
    queries = load_queries(cfg.data.train_queries, set(kb.ids), store, "train")
    from vlt5 import load_tokenizer
    from vlt5.inputs import VisualInputConfig

    inputs = VisualInputConfig(fc_token=True, boxes="grid_cells")
    tokens = TokenizedQuestions(load_tokenizer(cfg.model.tokenizer), [q.question for q in queries], inputs)
    source = EpochBatches(queries, store, tokens, inputs, cfg.data.batch_size, 3, 0, 0)
    n = min(batches, len(source))
    t0 = time.perf_counter()
    for batch in make_loader(source, 0, n, 0, 1, False):
        del batch
    return (time.perf_counter() - t0) / n


def driver_times(cfg: TrainConfig) -> list[float]:
    train(cfg)
    log = Path(cfg.loop.out) / "log.jsonl"
    return [r["step_time"] for r in map(json.loads, log.read_text().splitlines()) if r["kind"] == "train"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=["tiny", "t5-small"], choices=list(SIZES))
    p.add_argument("--steps", type=int, nargs="+", default=[60, 12], help="timed steps per config (after warm-up)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3, help="interleaved repetitions (noisy shared machines)")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    results = {}
    print(f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPUs; median step time (ms)")
    print(f"{'config':<10} {'bound':>8} {'h5':>8} {'h5+worker':>10} {'memory':>8}   worst/bound   "
          "loader alone: h5 / memory")
    for size, steps in zip(args.configs, args.steps + args.steps[-1:] * len(args.configs)):
        with tempfile.TemporaryDirectory() as tmp:
            data = make_data(Path(tmp) / "data", size)
            total = steps + args.warmup
            modes = {"h5": dict(cache_features="no"), "h5+worker": dict(cache_features="no", num_workers=1),
                     "memory": dict(cache_features="yes")}
            row: dict[str, float] = {}
            for round_ in range(args.rounds):  # interleaved rounds; the best median of each mode is kept
                cfg = config(data, size, Path(tmp) / f"bound{round_}", total, args.threads)
                times = {"bound": bound_times(cfg, total)}
                for mode, extra in modes.items():
                    cfg = config(data, size, Path(tmp) / f"{mode}{round_}", total, args.threads, **extra)
                    times[mode] = driver_times(cfg)
                for mode, values in times.items():
                    row[mode] = min(row.get(mode, float("inf")), statistics.median(values[args.warmup:]))
            for name, cache in (("loader_h5", "no"), ("loader_memory", "yes")):
                cfg = config(data, size, Path(tmp) / name, total, args.threads, cache_features=cache)
                row[name] = loader_time(cfg, 50)
        results[size] = {k: round(v * 1000, 2) for k, v in row.items()}
        worst = max(row[m] for m in modes) / row["bound"]
        results[size]["worst_ratio"] = round(worst, 3)
        print(f"{size:<10} " + " ".join(f"{results[size][k]:>{w}.1f}" for k, w in
                                        (("bound", 8), ("h5", 8), ("h5+worker", 10), ("memory", 8)))
              + f"   {worst:.2f}x         {results[size]['loader_h5']:.1f} / {results[size]['loader_memory']:.1f}",
              flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
