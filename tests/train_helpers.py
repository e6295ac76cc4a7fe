"""Tiny training data for the tests of ``vlt5r train`` / mine_negatives (test_train*.py, test_mine*.py).

The demo task generator writes the KB and queries (a few scenes per split); features are either written directly
with h5py (random, fast: fc dim 12, a 3x3 grid of width 16, odd sizes so a transposed dim fails) or extracted
with a tiny OpenAI-format CLIP through the real extraction CLI.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

from retrieval.demo.task import DemoTaskConfig, write_demo_task
from vlt5.tiny import make_tiny_tokenizer_dir

REPO = Path(__file__).resolve().parents[1]
FC_DIM, GRID_TOKENS, GRID_DIM = 12, 9, 16


def write_features(path: Path, ids: list[str], fc_dim: int = FC_DIM, grid: tuple[int, int] | None = None,
                   seed: int = 0) -> Path:
    """A feature file in our HDF5 layout with random fc (and grid) rows."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        f.create_dataset("ids", data=np.array(ids, dtype=h5py.string_dtype("utf-8")))
        f.create_dataset("fc", data=rng.standard_normal((len(ids), fc_dim)).astype(np.float32))
        attrs = {"format_version": 1, "fc_dim": fc_dim, "backbone": "random", "modality": "image"}
        if grid is not None:
            f.create_dataset("grid", data=rng.standard_normal((len(ids), *grid)).astype(np.float32))
            side = int(grid[0] ** 0.5)
            attrs.update(grid_hw=[side, side], grid_dim=grid[1])
        f.attrs.update(attrs)
    return path


def read_ids(path: Path, key: str = "id") -> list[str]:
    return [json.loads(line)[key] for line in path.read_text().splitlines() if line.strip()]


def make_data(root: Path, train: int = 12, dev: int = 4, test: int = 4) -> dict[str, Path]:
    """Demo-task files + random feature files + a tiny tokenizer under ``root``."""
    paths = write_demo_task(root, DemoTaskConfig(train_scenes=train, dev_scenes=dev, test_scenes=test,
                                                 image_size=32, questions_per_scene=2))
    scenes = sorted(p.stem for p in (root / "images" / "scenes").glob("*.png"))
    paths["kb_features"] = write_features(root / "kb.h5", read_ids(paths["kb"]), seed=1)
    paths["query_features"] = write_features(root / "scenes.h5", scenes, grid=(GRID_TOKENS, GRID_DIM), seed=2)
    paths["question_features"] = write_features(root / "questions.h5", read_ids(paths["questions"]), seed=3)
    paths["tokenizer"] = make_tiny_tokenizer_dir(root / "tokenizer")
    return paths


def train_args(paths: dict[str, Path], out: Path, *extra: str) -> list[str]:
    """Flags of a tiny, fast, deterministic run (1 thread, no progress bar, no dropout unless asked)."""
    return ["--kb", str(paths["kb"]), "--kb-features", str(paths["kb_features"]),
            "--train-queries", str(paths["train"]), "--dev-queries", str(paths["dev"]),
            "--query-features", str(paths["query_features"]), "--tokenizer", str(paths["tokenizer"]),
            "--d-model", "24", "--num-layers", "1", "--num-heads", "2", "--d-kv", "8", "--d-ff", "20",
            "--batch-size", "4", "--hard-negatives", "2", "--threads", "1", "--no-progress", "--no-baselines",
            "--no-tensorboard", "--out", str(out), *extra]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago: torchrun's --master_port (tests run in parallel workers,
    so a fixed port collides)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_train(args: list[str], env: dict[str, str] | None = None, timeout: float = 300,
              torchrun: int | None = None, command: str = "train") -> subprocess.CompletedProcess:
    """``python -m vlt5r COMMAND ARGS`` (``train`` by default; or under ``torchrun --nproc_per_node N``) in a fresh
    process."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
                **(env or {})}
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(torchrun), "--master_port",
               str(free_port()), "-m", "vlt5r", command, *args]
    else:
        cmd = [sys.executable, "-m", "vlt5r", command, *args]
    return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)


def log_records(run_dir: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "log.jsonl").read_text().splitlines()) if r["kind"] == kind]
