"""Self-describing, atomically written training checkpoints, and everything an exact resume needs.

A checkpoint directory (``OUT/last``, ``OUT/best``) holds:

* ``config.json`` + ``model.safetensors`` + tokenizer files — :meth:`QueryEncoder.save_pretrained`, so
  ``QueryEncoder.from_pretrained(OUT/best)`` needs no flags;
* ``train_config.json`` — the full :class:`TrainConfig` of the run; ``metrics.json`` — dev metrics at that step;
* ``trainer_state.json`` — epoch, step within the epoch, global step, best metric (human-readable);
* ``training_state.pt`` (``last`` only) — optimizer, LR scheduler, GradScaler, log temperature and the RNG states
  of every rank (python, numpy, torch, CUDA); tensors and plain containers only, read with ``weights_only=True``.

Writing is atomic: everything goes to ``OUT/.last.tmp``, is fsynced, then replaces ``OUT/last`` by two renames
(``last`` -> ``.last.old``, ``.last.tmp`` -> ``last``). A SIGKILL at any point leaves either the previous or the
new checkpoint; :func:`find_checkpoint` also accepts ``.last.old`` (a kill between the two renames).
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from foundations.io import fsync_path, fsync_tree
from vlt5 import QueryEncoder
from vlt5.checkpoint import WEIGHTS_NAME

logger = logging.getLogger(__name__)

STATE_JSON = "trainer_state.json"
STATE_PT = "training_state.pt"
TRAIN_CONFIG = "train_config.json"
METRICS = "metrics.json"
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


# -- writing -----------------------------------------------------------------------------------------------------
def write_atomically(run_dir: Path, name: str, write: Callable[[Path], None], step: int) -> Path:
    """Call ``write(tmp_dir)``, fsync, then make it ``run_dir/name`` (replacing the old one)."""
    final, tmp, old = run_dir / name, run_dir / f".{name}.tmp", run_dir / f".{name}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    fsync_tree(tmp)
    maybe_kill("during_save", step)
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
    os.rename(tmp, final)
    fsync_path(run_dir)
    shutil.rmtree(old, ignore_errors=True)
    return final


def save_encoder(directory: Path, encoder: QueryEncoder, feature_attrs: dict[str, Any] | None) -> None:
    """The encoder + ``backbone.json`` naming the CLIP backbone of its query features (when they record one), so
    the search CLI and server encode new images with the same backbone without the training files."""
    from retrieval.querying.backbone_ref import record_from_attrs, write_backbone_record

    encoder.save_pretrained(directory)
    if feature_attrs is not None and record_from_attrs(feature_attrs) is not None:
        write_backbone_record(directory, feature_attrs)


def save_checkpoint(run_dir: Path, name: str, encoder: QueryEncoder, train_config: dict[str, Any],
                    state: TrainerState, metrics: dict[str, Any], training: dict[str, Any] | None,
                    feature_attrs: dict[str, Any] | None = None) -> Path:
    """Write checkpoint ``name`` (``last``/``best``); ``training`` (optimizer, scheduler, scaler, temperature,
    rngs) is stored when given; ``feature_attrs`` are the query feature file's attrs (see :func:`save_encoder`)."""

    def write(directory: Path) -> None:
        save_encoder(directory, encoder, feature_attrs)
        (directory / TRAIN_CONFIG).write_text(json.dumps(train_config, indent=2) + "\n")
        (directory / METRICS).write_text(json.dumps(metrics, indent=2) + "\n")
        if training is not None:
            torch.save(training, directory / STATE_PT)
        (directory / STATE_JSON).write_text(json.dumps(asdict(state), indent=2) + "\n")

    path = write_atomically(run_dir, name, write, state.global_step)
    logger.info("saved %s checkpoint (step %d) to %s", name, state.global_step, path)
    return path


# -- reading -----------------------------------------------------------------------------------------------------
def find_checkpoint(run_dir: Path, name: str = "last") -> Path | None:
    """The complete checkpoint ``name`` of a run dir, if any (``.name.old`` after a kill between renames)."""
    for candidate in (run_dir / name, run_dir / f".{name}.old"):
        if (candidate / STATE_JSON).is_file() and (candidate / WEIGHTS_NAME).is_file():
            return candidate
    return None


def read_state(directory: Path) -> TrainerState:
    return TrainerState(**json.loads((directory / STATE_JSON).read_text()))


def load_training_state(directory: Path, encoder: QueryEncoder) -> tuple[TrainerState, dict[str, Any]]:
    """Load the model weights into ``encoder`` (in place: the optimizer keeps its parameters) and return the
    trainer state and the ``training_state.pt`` dict."""
    if not (directory / STATE_PT).is_file():
        raise ValueError(f"{directory}: no {STATE_PT}; only a 'last' checkpoint can be resumed")
    weights = load_file(str(directory / WEIGHTS_NAME))
    missing, unexpected = encoder.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ValueError(f"{directory}: the checkpoint does not match the model built from the config (missing "
                         f"{missing[:5]}, unexpected {unexpected[:5]}); resume with the run's own train_config.json")
    training = torch.load(directory / STATE_PT, map_location="cpu", weights_only=True)
    return read_state(directory), training
