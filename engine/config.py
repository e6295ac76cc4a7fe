"""Typed configs of the training engine that every trainer nests in its own config (litgpt ``TrainArgs`` spirit).

* :class:`OptimConfig` — AdamW betas/eps/weight decay, warmup + schedule, clipping, accumulation, precision and
  the per-group freeze/unfreeze schedule. Learning rates are per parameter group and come from the task
  (:meth:`engine.task.Task.param_groups`); a trainer subclasses this config to add its own ``lr_*`` fields.
* :class:`LoopConfig` — run directory, epochs/steps, seed, evaluation/saving/logging cadence, resume mode,
  device, threads, outputs (init checkpoint, TensorBoard, progress bar).

Every field is a flag through :func:`foundations.cli.add_config_flags` (``help`` metadata = its help text);
validation lives in ``__post_init__`` and raises :class:`foundations.errors.ConfigError`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

from foundations.errors import ConfigError

logger = logging.getLogger(__name__)

SCHEDULES = ("linear", "cosine", "constant")
PRECISIONS = ("fp32", "bf16", "fp16")
RESUME = ("auto", "yes", "no")
WANDB_MODES = ("off", "offline", "online")
_RULE = re.compile(r"^(?P<group>[\w.-]+)@(?P<unit>epoch|step):(?P<at>\d+)$")


def _help(text: str, **extra: Any) -> Any:
    return {"help": text, **extra}


def choice(obj: object, name: str, choices: tuple[str, ...]) -> None:
    """Raise ConfigError unless ``obj.name`` is one of ``choices``."""
    value = getattr(obj, name)
    if value not in choices:
        raise ConfigError(f"{type(obj).__name__}.{name} must be one of {choices}, got {value!r}")


@dataclass(frozen=True)
class FreezeRule:
    """``GROUP@epoch:N`` / ``GROUP@step:N``: the point (epochs counted from 0, steps = optimizer steps done)."""

    group: str
    unit: str
    at: int

    @classmethod
    def parse(cls, text: str, flag: str) -> FreezeRule:
        match = _RULE.match(text)
        if match is None:
            raise ConfigError(f"optim.{flag}: expected GROUP@epoch:N or GROUP@step:N, got {text!r}")
        return cls(match["group"], match["unit"], int(match["at"]))

    def reached(self, epoch: int, step: int) -> bool:
        return (epoch if self.unit == "epoch" else step) >= self.at


@dataclass
class OptimConfig:
    weight_decay: float = field(default=0.01, metadata=_help("AdamW weight decay (groups may turn it off)"))
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    warmup_steps: int = field(default=0, metadata=_help("linear warmup steps (overrides warmup_ratio if > 0)"))
    warmup_ratio: float = field(default=0.05, metadata=_help("warmup as a fraction of all optimizer steps"))
    schedule: str = field(default="linear", metadata=_help("decay after warmup", choices=SCHEDULES))
    grad_clip: float = field(default=1.0, metadata=_help("max global grad norm (0: off)"))
    grad_accum: int = field(default=1, metadata=_help("micro-batches per optimizer step"))
    precision: str = field(default="fp32", metadata=_help(
        "fp32 | bf16 (autocast, CPU or GPU) | fp16 (autocast + GradScaler, CUDA only)", choices=PRECISIONS))
    unfreeze_at: tuple[str, ...] = field(default=(), metadata=_help(
        "GROUP@epoch:N or GROUP@step:N: the parameter group stays frozen until then (e.g. backbone@epoch:1)"))
    freeze_at: tuple[str, ...] = field(default=(), metadata=_help(
        "GROUP@epoch:N or GROUP@step:N: the parameter group stops training from then on"))

    def __post_init__(self) -> None:
        choice(self, "schedule", SCHEDULES)
        choice(self, "precision", PRECISIONS)
        if self.weight_decay < 0 or self.grad_accum < 1 or self.grad_clip < 0 or self.warmup_steps < 0:
            raise ConfigError("optim: weight_decay >= 0, grad_accum >= 1, grad_clip >= 0, warmup_steps >= 0 (got "
                              f"{self.weight_decay}, {self.grad_accum}, {self.grad_clip}, {self.warmup_steps})")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"optim.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        self.unfreeze_at, self.freeze_at = tuple(self.unfreeze_at), tuple(self.freeze_at)
        self.freeze_rules()  # validates the syntax

    def freeze_rules(self) -> tuple[list[FreezeRule], list[FreezeRule]]:
        """(unfreeze rules, freeze rules)."""
        return ([FreezeRule.parse(r, "unfreeze_at") for r in self.unfreeze_at],
                [FreezeRule.parse(r, "freeze_at") for r in self.freeze_at])


@dataclass
class LoopConfig:
    out: str = field(default="runs/train", metadata=_help("run directory (config, log, checkpoints, curves.png)"))
    epochs: int = field(default=10, metadata=_help("passes over the training data"))
    max_steps: int | None = field(default=None, metadata=_help("stop after this many optimizer steps"))
    seed: int = field(default=0, metadata=_help("seed of model init, data order and sampling"))
    eval_every: int | None = field(default=None, metadata=_help("also evaluate on dev every N steps"))
    save_every: int | None = field(default=None, metadata=_help("also save the last checkpoint every N steps"))
    log_every: int = field(default=10, metadata=_help("log training metrics every N steps"))
    resume: str = field(default="auto", metadata=_help(
        "auto: resume if OUT/last exists | yes: must resume | no: refuse a run dir with checkpoints",
        choices=RESUME, const="yes"))
    device: str = field(default="auto", metadata=_help("auto | cpu | cuda (torchrun: cuda:LOCAL_RANK)"))
    threads: int | None = field(default=None, metadata=_help("torch CPU threads"))
    save_init: bool = field(default=True, metadata=_help("save the model before training as OUT/init"))
    tensorboard: bool = field(default=True, metadata=_help("write OUT/tensorboard if tensorboard is installed"))
    progress: bool = field(default=True, metadata=_help("tqdm progress bar"))
    curves: bool = field(default=True, metadata=_help("draw OUT/curves.png at every evaluation"))
    wandb: str = field(default="off", metadata=_help(
        "also log to Weights & Biases: offline (a run directory under OUT/wandb, no network; `wandb sync` it "
        "later) | online | off; needs the wandb package only when on", choices=WANDB_MODES))
    wandb_project: str = field(default="vlt5r", metadata=_help("the W&B project of --wandb runs"))

    def __post_init__(self) -> None:
        choice(self, "resume", RESUME)
        choice(self, "wandb", WANDB_MODES)
        if self.epochs < 1 or self.log_every < 1:
            raise ConfigError(f"loop.epochs and loop.log_every must be >= 1 (got {self.epochs}, {self.log_every})")
        for name in ("max_steps", "eval_every", "save_every", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"loop.{name} must be >= 1 or unset, got {value}")
        if self.device != "auto" and self.device.split(":")[0] not in ("cpu", "cuda"):
            raise ConfigError(f"loop.device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
