"""AdamW over the task's named parameter groups, linear warmup + decay, and the per-group freeze schedule.

* :func:`build_optimizer` — ``torch.optim.AdamW`` over ``task.param_groups()`` (each ``{"name", "params", "lr",
  "weight_decay"?}``: per-group learning rates and decay).
* :func:`lr_factor` / :func:`build_scheduler` — linear warmup, then linear / cosine decay to 0 or constant
  (the HF ``get_linear_schedule_with_warmup`` family, one ``LambdaLR`` for every group).
* :class:`FreezeSchedule` — ``optim.unfreeze_at`` / ``optim.freeze_at`` rules (``GROUP@epoch:N``,
  ``GROUP@step:N``): a frozen group's gradients are dropped before clipping and the step, so AdamW neither moves
  its weights nor its moments (DDP still reduces them: the graph stays the same on every step).
Moved here from ``retrieval/training/model.py``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch

from engine.config import OptimConfig
from foundations.errors import ConfigError

logger = logging.getLogger(__name__)


def build_optimizer(groups: Sequence[dict[str, Any]], cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW over named groups; a group without ``weight_decay`` gets ``cfg.weight_decay``."""
    groups = [{"weight_decay": cfg.weight_decay, **g} for g in groups if g["params"]]
    if not groups:
        raise ValueError("nothing to train: every parameter is frozen")
    names = [g.get("name") for g in groups]
    if None in names or len(set(names)) != len(names):
        raise ValueError(f"parameter groups need unique names, got {names}")
    return torch.optim.AdamW(groups, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based): linear warmup, then decay."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = cfg.warmup_steps or int(cfg.warmup_ratio * total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup, total_steps, cfg.schedule))


class FreezeSchedule:
    """Which named groups are frozen at (epoch, optimizer steps done): frozen before an ``unfreeze_at`` point and
    from a ``freeze_at`` point on. A pure function of (epoch, step), so a resumed run freezes the same groups."""

    def __init__(self, cfg: OptimConfig, group_names: Sequence[str]) -> None:
        self.unfreeze, self.freeze = cfg.freeze_rules()
        unknown = sorted({r.group for r in self.unfreeze + self.freeze} - set(group_names))
        if unknown:
            raise ConfigError(f"optim.freeze_at / unfreeze_at name unknown parameter groups {unknown}; this run "
                              f"trains {list(group_names)}")

    def __bool__(self) -> bool:
        return bool(self.unfreeze or self.freeze)

    def frozen(self, epoch: int, step: int) -> set[str]:
        out = {r.group for r in self.unfreeze if not r.reached(epoch, step)}
        return out | {r.group for r in self.freeze if r.reached(epoch, step)}

    @staticmethod
    def drop_gradients(optimizer: torch.optim.Optimizer, frozen: set[str]) -> None:
        """``grad = None`` on the frozen groups' parameters (AdamW skips them; clipping ignores them)."""
        for group in optimizer.param_groups:
            if group["name"] in frozen:
                for p in group["params"]:
                    p.grad = None

