"""What a trainer gives the engine: a :class:`Task` (open_clip's ``task/`` in spirit: model + loss as one module).

The engine (:func:`engine.fit.fit`) owns the loop, the optimizer, precision, DDP, checkpoints and logs; the task
owns everything that is about *its* problem:

* ``training_forward(batch) -> (loss, metrics)`` — the scalar loss of one micro-batch and detached scalar metrics
  to log (``loss`` among them; a ``temperature`` entry is drawn in ``curves.png``);
* ``training_step(model, batch, autocast, backward) -> metrics`` — what the engine calls per micro-batch: by
  default one forward through ``model`` (the task, or DDP around it) and one ``backward(loss)``; a task whose
  loss couples the rows of a batch overrides it to run the batch in pieces (CLIP's feature-cache accumulation);
* ``param_groups()`` — named AdamW groups ``{"name", "params", "lr", "weight_decay"?}`` (per-group learning rates;
  the names are what ``optim.freeze_at`` / ``unfreeze_at`` refer to);
* data: ``micro_batches_per_epoch()`` (global micro-batches, the same on every rank) and
  ``train_batches(epoch, start, stop)`` (this rank's micro-batches ``start .. stop-1`` of ``epoch``, a pure function
  of them so that a resume sees the same data);
* ``evaluate()`` — dev metrics (rank 0 only; no collectives), ``select_metric`` / ``select_mode`` pick ``best/``;
* the model's files: ``save_model(dir)`` / ``load_model(dir)``, plus ``extra_state()`` / ``load_extra_state()`` for
  training-only tensors kept in ``training_state.pt`` (e.g. a learned log temperature);
* hooks: ``on_fresh_start(run_dir)`` (rank 0, before the first step of a new run: baselines),
  ``after_evaluation(run_dir)`` (rank 0, once each ``dev`` record is logged: plots of the run so far) and
  ``test(best_dir)`` (rank 0, after training: the final test metrics).

A Task is an ``nn.Module`` whose ``forward`` is ``training_forward``, so DDP can wrap it.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)


def move_to(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor (in nested dicts / lists / tuples) on ``device``; other leaves unchanged."""
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(v, device) for v in batch)
    return batch


class Task(nn.Module, abc.ABC):
    """Model + loss + data + evaluation of one trainer; see the module docstring for the contract."""

    select_metric: str | None = None  # the dev metric that picks OUT/best (None: no best checkpoint)
    select_mode: str = "max"  # or "min" (e.g. a dev loss)

    def forward(self, batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
        return self.training_forward(batch)

    @abc.abstractmethod
    def training_forward(self, batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
        """(scalar loss of this rank's micro-batch, detached scalar metrics including ``loss``)."""

    def training_step(self, model: nn.Module, batch: Any, autocast: Callable[[], AbstractContextManager[Any]],
                      backward: Callable[[Tensor], None]) -> dict[str, Tensor]:
        """One micro-batch: the forward pass(es) through ``model`` (this task, or DDP around it) under ``autocast()``
        and ``backward(loss)`` for each loss (the engine scales it for precision and accumulation); returns the
        metrics. Override it to compute one batch's loss in pieces with several backward passes."""
        with autocast():
            loss, metrics = model(batch)
        backward(loss)
        return metrics

    @abc.abstractmethod
    def param_groups(self) -> list[dict[str, Any]]:
        """Named optimizer groups of the trainable parameters."""

    @abc.abstractmethod
    def micro_batches_per_epoch(self) -> int:
        """Global micro-batches in one epoch (the same on every rank)."""

    @abc.abstractmethod
    def train_batches(self, epoch: int, start: int, stop: int) -> Iterable[Any]:
        """This rank's micro-batches ``start .. stop-1`` of ``epoch``, in order."""

    @abc.abstractmethod
    def save_model(self, directory: Path) -> None:
        """Write the model (loadable without the training config) into ``directory``."""

    @abc.abstractmethod
    def load_model(self, directory: Path) -> None:
        """Load ``save_model``'s weights into this task's model in place (the optimizer keeps its parameters)."""

    def move_batch(self, batch: Any, device: torch.device) -> Any:
        return move_to(batch, device)

    def evaluate(self) -> dict[str, float] | None:
        """Dev metrics (called on rank 0 in eval mode without grad), or None when there is nothing to evaluate."""
        return None

    def extra_state(self) -> dict[str, Tensor]:
        """Training-only tensors to keep in ``training_state.pt`` (keys must not clash with the engine's)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` saved (``state`` is the whole ``training_state.pt`` dict)."""

    def on_fresh_start(self, run_dir: Path) -> None:
        """Rank 0, once, before the first step of a new run (after ``config.json`` and ``init/``)."""

    def after_evaluation(self, run_dir: Path) -> None:
        """Rank 0, after each evaluation's ``dev`` record is in ``log.jsonl`` (e.g. a plot of the run so far)."""

    def test(self, best: Path | None) -> dict[str, float] | None:
        """Rank 0, after training: final metrics with the best checkpoint (``best`` dir, or None: current model)."""
        return None
