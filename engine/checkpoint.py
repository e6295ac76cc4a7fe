"""Atomically written training checkpoints and everything an exact resume needs (generic over the task's model).

A checkpoint directory (``OUT/last``, ``OUT/best``) holds:

* whatever the task's ``save_model(directory)`` writes (the retrieval trainer: a ``QueryEncoder.save_pretrained``
  dir, so ``QueryEncoder.from_pretrained(OUT/best)`` needs no flags);
* ``train_config.json`` — the run's full config; ``metrics.json`` — dev metrics at that step;
* ``training_state.pt`` (``last`` only) — optimizer, LR scheduler, GradScaler, the task's extra state (e.g. a
  learned log temperature) and the RNG states of every rank (python, numpy, torch, CUDA); tensors and plain
  containers only, read with ``weights_only=True``;
* ``trainer_state.json`` — epoch, step within the epoch, global step, best metric; written last, so its presence
  marks a complete directory.

Writing goes through :func:`foundations.io.write_dir_atomically` (``.last.tmp``, fsync, two renames): a SIGKILL at
any point leaves the previous or the new checkpoint, and :func:`find_checkpoint` also accepts ``.last.old`` (a kill
between the renames). ``VLT5_TRAIN_TEST_KILL=during_save:N`` / ``after_save:N`` makes the process SIGKILL itself at
step N (crash tests). Moved here from ``retrieval/training/checkpoint.py``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from foundations.config import from_dict, load_json
from foundations.errors import ConfigError, UserError
from foundations.io import RecordingFile, complete_dir, write_dir_atomically

logger = logging.getLogger(__name__)

STATE_JSON = "trainer_state.json"
STATE_PT = "training_state.pt"
TRAIN_CONFIG = "train_config.json"
METRICS = "metrics.json"
TRAINING_KEYS = ("optimizer", "scheduler", "scaler", "rng")  # what resume_or_init reads from training_state.pt
KILL_ENV = "VLT5_TRAIN_TEST_KILL"  # tests only: "during_save:N" / "after_save:N" SIGKILLs this process


@dataclass
class TrainerState:
    epoch: int = 0  # the epoch in progress (or about to start)
    step_in_epoch: int = 0  # optimizer steps already done in that epoch
    global_step: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    world_size: int = 1
    format_version: int = 1


def maybe_kill(point: str, step: int) -> None:
    """SIGKILL this process at a named point when the test variable asks for it (deterministic crash tests)."""
    if os.environ.get(KILL_ENV) == f"{point}:{step}":
        logger.warning("test kill point %s at step %d: SIGKILL", point, step)
        os.kill(os.getpid(), signal.SIGKILL)


# -- RNG ---------------------------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and plain containers (safe for ``weights_only`` loading)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {"python": random.getstate(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)),
                                                                    int(pos), int(has_gauss), float(cached)],
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# -- writing -----------------------------------------------------------------------------------------------------
def save_torch(obj: Any, path: Path) -> None:
    """``torch.save(obj, path)``, raising the ``OSError`` of a failed write (for :func:`foundations.io.disk_errors`):
    torch itself reports one as ``RuntimeError('unexpected pos ...')`` (:class:`foundations.io.RecordingFile`)."""
    raw = RecordingFile(path)
    try:
        torch.save(obj, raw)
    finally:
        raw.close()  # raises the first failed write's OSError


def save_model_dir(run_dir: Path, name: str, write_model: Callable[[Path], None], step: int = 0) -> Path:
    """Only the model (e.g. ``OUT/init``), written atomically."""
    return write_dir_atomically(run_dir / name, write_model, lambda: maybe_kill("during_save", step))


def save_checkpoint(run_dir: Path, name: str, write_model: Callable[[Path], None], config: dict[str, Any],
                    state: TrainerState, metrics: dict[str, Any], training: dict[str, Any] | None) -> Path:
    """Write checkpoint ``name`` (``last``/``best``); ``training`` (optimizer, scheduler, scaler, task extras,
    rngs) is stored when given."""

    def write(directory: Path) -> None:
        write_model(directory)
        (directory / TRAIN_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        (directory / METRICS).write_text(json.dumps(metrics, indent=2) + "\n")
        if training is not None:
            save_torch(training, directory / STATE_PT)
        (directory / STATE_JSON).write_text(json.dumps(asdict(state), indent=2) + "\n")  # last: the marker

    path = write_dir_atomically(run_dir / name, write, lambda: maybe_kill("during_save", state.global_step))
    logger.info("saved %s checkpoint (step %d) to %s", name, state.global_step, path)
    return path


# -- reading -----------------------------------------------------------------------------------------------------
def find_checkpoint(run_dir: Path, name: str = "last") -> Path | None:
    """The complete checkpoint ``name`` of a run dir, if any (``.name.old`` after a kill between renames)."""
    return complete_dir(run_dir / name, STATE_JSON)


DAMAGED = "the checkpoint is damaged: restore it from a copy, or delete {dir} to train from the start"


def read_state(directory: Path) -> TrainerState:
    """``trainer_state.json``; a damaged or foreign file is one :class:`UserError` naming it."""
    path = directory / STATE_JSON
    try:
        return from_dict(TrainerState, load_json(path), str(path))
    except ConfigError as exc:
        raise UserError(f"{exc}; {DAMAGED.format(dir=directory)}") from None


def load_training_state(directory: Path) -> tuple[TrainerState, dict[str, Any]]:
    """The trainer state and the ``training_state.pt`` dict of a ``last`` checkpoint (read with
    ``weights_only=True``); a truncated, corrupt or foreign file is one :class:`UserError` naming it."""
    path = directory / STATE_PT
    if not path.is_file():
        raise ValueError(f"{directory}: no {STATE_PT}; only a 'last' checkpoint can be resumed")
    state = read_state(directory)
    try:
        training = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch reports a truncated zip or a refused pickle as RuntimeError / UnpicklingError
        first = " ".join(str(exc).split(". ")[0].split())  # never torch's advice to turn weights_only off
        raise UserError(f"{path}: not a readable training state ({type(exc).__name__}: {first}); "
                        f"{DAMAGED.format(dir=directory)}") from None
    missing = [k for k in TRAINING_KEYS if not isinstance(training, dict) or k not in training]
    if missing:
        raise UserError(f"{path}: not a training state of this toolkit (no {missing}); {DAMAGED.format(dir=directory)}")
    return state, training
