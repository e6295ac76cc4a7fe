"""``train(cfg) -> TrainResult``: the retrieval trainer on the generic engine (:mod:`engine.fit`).

    setup (process group, threads, seed) -> build_task (KB vectors, queries, features, encoder)
    -> engine.fit (resume-or-init, epochs, dev evaluation, best/last checkpoints, curves.png, test)
    -> the generic reference encoder, same data and budget (OUT/reference; its test row joins comparison.json)
    -> result.json

The driver is ``vlt5r train`` (:mod:`vlt5r.drivers.train`); it builds the flags from :class:`TrainConfig`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import engine
from foundations.config import save_json
from retrieval.training.config import TrainConfig
from retrieval.training.task import build_task, train_reference

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: str
    global_step: int
    best_metric: float | None
    best_step: int | None
    dev: dict[str, float] | None = None
    test: dict[str, dict[str, float]] = field(default_factory=dict)  # the comparison table on test


def train(cfg: TrainConfig) -> TrainResult:
    """Train the joint query encoder of ``cfg``; see docs/training.md for what the run directory holds."""
    env = engine.setup(cfg.loop, cfg.optim)
    task = build_task(cfg, env)
    fitted = engine.fit(task, cfg.loop, cfg.optim, cfg.to_dict(), env)
    if cfg.eval.reference and "test" in task.splits:  # the generic reference, same inputs and budget
        train_reference(task, env)
    result = TrainResult(fitted.run_dir, fitted.global_step, fitted.best_metric, fitted.best_step, fitted.dev,
                         task.comparison)
    if env.is_main:
        save_json(Path(result.run_dir) / "result.json", asdict(result))
    engine.teardown(env)
    return result
