"""The one training loop of the toolkit, read top to bottom (nanoGPT's ``train.py``, litgpt's ``fit``).

    env = setup(cfg.loop, cfg.optim)                  # process group, threads, the same seed on every rank
    task = MyTask(...)                                # the trainer's model + loss + data + evaluation
    result = fit(task, cfg.loop, cfg.optim, cfg.to_dict(), env)
    teardown(env)

:func:`fit` runs the phases

1. **prepare** — AdamW over the task's named groups, warmup + schedule, GradScaler, freeze schedule, the length
   of the run; checks the run dir against ``loop.resume``;
2. **resume or init** — from ``OUT/last`` (weights, optimizer, scheduler, scaler, task extras, every rank's RNG
   state, data position) or fresh (``config.json``, ``init/``, the task's ``on_fresh_start``, per-rank seeds);
3. **fit** — for each epoch, for each micro-batch: ``task.training_step`` (forward under autocast (bf16/fp16),
   backward; DDP syncs on the last micro-batch of an accumulation), drop frozen groups' gradients, unscale +
   clip + step + schedule; every ``log_every`` steps a ``train`` record; every ``eval_every`` steps and at each
   epoch end **validate**; checkpoints ``last`` at ``save_every`` and epoch ends;
4. **validate** — ``task.evaluate()`` on rank 0, ``dev`` record, ``best/`` when the selection metric improves,
   ``curves.png``;
5. **test** — ``task.test(best)`` on rank 0, ``test`` record.

Everything before the first step that fails because of the user's files or flags raises
:class:`foundations.errors.UserError`. Moved here from ``retrieval/training/loop.py``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from engine import checkpoint as ckpt
from engine import distributed
from engine.config import LoopConfig, OptimConfig
from engine.curves import CURVES_NAME, draw_curves
from engine.distributed import DistEnv
from engine.errors import user_errors
from engine.logs import MetricLogger, read_log, require_wandb
from engine.optim import FreezeSchedule, build_optimizer, build_scheduler
from engine.task import Task
from foundations.config import save_json
from foundations.errors import UserError

logger = logging.getLogger(__name__)

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class FitResult:
    run_dir: str
    global_step: int
    best_metric: float | None
    best_step: int | None
    dev: dict[str, float] | None = None
    test: dict[str, float] | None = None


@dataclass
class Run:
    """Everything one run carries between the phases (no closures over a dozen locals)."""

    task: Task
    loop: LoopConfig
    optim: OptimConfig
    config: dict[str, Any]
    env: DistEnv
    run_dir: Path
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    freeze: FreezeSchedule
    steps_per_epoch: int
    total_steps: int
    last: Path | None
    trainable: list[nn.Parameter]
    state: ckpt.TrainerState = field(default_factory=ckpt.TrainerState)
    log: MetricLogger | None = None
    model: nn.Module | None = None  # the task, or DDP around it
    window: dict[str, float] = field(default_factory=dict)  # sums since the last train record
    frozen: set[str] = field(default_factory=set)


# -- 0. setup ------------------------------------------------------------------------------------------------------
def setup(loop: LoopConfig, optim: OptimConfig) -> DistEnv:
    """Join the torchrun group (if any), set CPU threads, seed every rank alike (identical initial weights)."""
    with user_errors():
        env = distributed.setup(loop.device)
    if optim.precision == "fp16" and env.device.type != "cuda":
        raise UserError("precision fp16 needs a CUDA device (GradScaler); use bf16 on the CPU")
    if loop.threads:
        torch.set_num_threads(loop.threads)
    if loop.wandb != "off":
        require_wandb(loop.wandb)  # before anything is written, not at the first log record
    ckpt.seed_everything(loop.seed)
    return env


def teardown(env: DistEnv) -> None:
    distributed.barrier(env)
    distributed.cleanup()


def fit(task: Task, loop: LoopConfig, optim: OptimConfig, config: dict[str, Any], env: DistEnv) -> FitResult:
    """Train ``task`` (already on ``env.device``) and return where the run ended; see the module docstring."""
    run = prepare(task, loop, optim, config, env)
    resume_or_init(run)
    distributed.barrier(env)
    run.log = MetricLogger(run.run_dir, env.is_main, loop.tensorboard, loop.wandb, loop.wandb_project, config)
    run.model = DistributedDataParallel(task, device_ids=[env.device.index] if env.device.type == "cuda" else None) \
        if env.distributed else task

    task.train()
    dev: dict[str, float] | None = None
    for epoch in range(run.state.epoch, loop.epochs):
        if run.state.global_step >= run.total_steps:
            break
        dev = train_epoch(run, epoch, dev)

    result = FitResult(str(run.run_dir), run.state.global_step, run.state.best_metric, run.state.best_step, dev)
    if env.is_main:
        result.test = final_test(run)
    run.log.close()
    return result


# -- 1. prepare ----------------------------------------------------------------------------------------------------
def prepare(task: Task, loop: LoopConfig, optim: OptimConfig, config: dict[str, Any], env: DistEnv) -> Run:
    run_dir = Path(loop.out)
    with user_errors():
        optimizer = build_optimizer(task.param_groups(), optim)
        freeze = FreezeSchedule(optim, [g["name"] for g in optimizer.param_groups])
        micro = task.micro_batches_per_epoch()
        steps_per_epoch = micro // optim.grad_accum
        if steps_per_epoch == 0:
            raise ValueError(f"{micro} micro-batches per epoch make no optimizer step of grad_accum "
                             f"{optim.grad_accum}")
        total_steps = int(min(loop.max_steps or math.inf, steps_per_epoch * loop.epochs))
        last = ckpt.find_checkpoint(run_dir)
        if loop.resume == "yes" and last is None:
            raise ValueError(f"{run_dir}: no last checkpoint to resume from")
        if loop.resume == "no" and last is not None:
            raise ValueError(f"{run_dir} already holds a checkpoint ({last}); pass --resume or another --out")
    scheduler = build_scheduler(optimizer, optim, total_steps)
    scaler = torch.amp.GradScaler(env.device.type, enabled=optim.precision == "fp16")
    trainable = [p for p in task.parameters() if p.requires_grad]
    return Run(task, loop, optim, config, env, run_dir, optimizer, scheduler, scaler, freeze, steps_per_epoch,
               total_steps, last, trainable, ckpt.TrainerState(world_size=env.world_size))


# -- 2. resume or init ---------------------------------------------------------------------------------------------
def resume_or_init(run: Run) -> None:
    env, run_dir = run.env, run.run_dir
    if run.last is not None:
        with user_errors():
            run.state, training = ckpt.load_training_state(run.last)
            run.task.load_model(run.last)
        run.optimizer.load_state_dict(training["optimizer"])
        run.scheduler.load_state_dict(training["scheduler"])
        run.scaler.load_state_dict(training["scaler"])
        run.task.load_extra_state(training)
        rngs = training["rng"]
        if len(rngs) != env.world_size:
            logger.warning("resuming %d-process state with %d processes: data order is kept, random streams are "
                           "not", len(rngs), env.world_size)
        ckpt.set_rng_state(rngs[env.rank % len(rngs)])
        logger.info("resumed from %s: epoch %d, step %d of the epoch, global step %d", run.last, run.state.epoch,
                    run.state.step_in_epoch, run.state.global_step)
        changed = changed_settings(run_dir / "config.json", run.config)
        if changed and env.is_main:
            logger.warning("resuming with changed settings %s (config.json keeps the first start's)", changed)
        return
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_json(run_dir / "config.json", run.config)
        if run.loop.save_init:
            ckpt.save_model_dir(run_dir, "init", run.task.save_model, 0)
        run.task.on_fresh_start(run_dir)
    ckpt.seed_everything(run.loop.seed + env.rank)  # per-rank dropout streams


def changed_settings(saved: Path, config: dict[str, Any]) -> list[str]:
    """Dotted names whose value differs from the run's saved config (``loop.resume`` aside)."""
    if not saved.is_file():
        return []
    old, new = json.loads(saved.read_text()), json.loads(json.dumps(config))

    def diff(a: dict[str, Any], b: dict[str, Any], prefix: str) -> Iterator[str]:
        for key, value in b.items():
            if isinstance(value, dict) and isinstance(a.get(key), dict):
                yield from diff(a[key], value, f"{prefix}{key}.")
            elif a.get(key) != value:
                yield f"{prefix}{key}"

    return [name for name in diff(old, new, "") if name != "loop.resume"]


# -- 3. fit --------------------------------------------------------------------------------------------------------
def train_epoch(run: Run, epoch: int, dev: dict[str, float] | None) -> dict[str, float] | None:
    """The micro-batches of one epoch from the resume point on; returns the latest dev metrics."""
    task, state, env, loop = run.task, run.state, run.env, run.loop
    accum = run.optim.grad_accum
    autocast_dtype = AUTOCAST.get(run.optim.precision)
    autocast = functools.partial(torch.autocast, env.device.type, dtype=autocast_dtype,
                                 enabled=autocast_dtype is not None)
    start = state.step_in_epoch * accum
    batches = task.train_batches(epoch, start, run.steps_per_epoch * accum)
    bar = tqdm(total=run.steps_per_epoch, initial=state.step_in_epoch, desc=f"epoch {epoch + 1}/{loop.epochs}",
               disable=not (env.is_main and loop.progress), dynamic_ncols=True)
    window = run.window
    t_step = t_data = time.perf_counter()
    for micro, batch in enumerate(batches, start=start):
        window["data_time"] = window.get("data_time", 0.0) + time.perf_counter() - t_data
        batch = task.move_batch(batch, env.device)
        sync = (micro + 1) % accum == 0
        no_sync = run.model.no_sync() if env.distributed and not sync else contextlib.nullcontext()  # type: ignore
        with no_sync:  # DDP all-reduces gradients only in the backward of an accumulation's last micro-batch
            metrics = task.training_step(run.model, batch, autocast,  # type: ignore[arg-type]
                                         lambda loss: run.scaler.scale(loss / accum).backward())
        for name, value in metrics.items():
            window[name] = window.get(name, 0.0) + float(value) / accum
        if not sync:
            t_data = time.perf_counter()
            continue
        grad_norm = optimizer_step(run, epoch)
        window["steps"] = window.get("steps", 0.0) + 1
        window["step_time"] = window.get("step_time", 0.0) + time.perf_counter() - t_step
        window["grad_norm"] = window.get("grad_norm", 0.0) + grad_norm
        bar.update(1)
        if state.global_step % loop.log_every == 0 or state.global_step == run.total_steps:
            log_train(run, epoch, bar)
        if loop.eval_every and state.global_step % loop.eval_every == 0:
            dev = validate(run)
        if loop.save_every and state.global_step % loop.save_every == 0:
            save_last(run, dev)
        if state.global_step >= run.total_steps:
            break
        t_step = t_data = time.perf_counter()
    bar.close()
    if state.step_in_epoch == run.steps_per_epoch:  # the epoch is complete
        state.epoch, state.step_in_epoch = epoch + 1, 0
    if not (loop.eval_every and state.global_step % loop.eval_every == 0):
        dev = validate(run)
    save_last(run, dev)
    return dev


def optimizer_step(run: Run, epoch: int) -> float:
    """Drop frozen groups' gradients, unscale, clip, step, schedule; returns the gradient norm before clipping."""
    if run.freeze:
        run.frozen = run.freeze.frozen(epoch, run.state.global_step)
        FreezeSchedule.drop_gradients(run.optimizer, run.frozen)
    run.scaler.unscale_(run.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(run.trainable, run.optim.grad_clip or math.inf)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()
    run.state.global_step += 1
    run.state.step_in_epoch += 1
    return float(grad_norm)


def log_train(run: Run, epoch: int, bar: Any) -> None:
    """One ``train`` record: the window's means over its steps and over ranks, each group's LR (0 if frozen)."""
    n = run.window.pop("steps")
    values = distributed.mean_over_ranks({k: v / n for k, v in run.window.items()}, run.env)
    values.update({f"lr_{g['name']}": 0.0 if g["name"] in run.frozen else g["lr"]
                   for g in run.optimizer.param_groups}, epoch=epoch)
    bar.set_postfix(loss=f"{values['loss']:.4f}")
    run.log.log("train", run.state.global_step, values, console=not run.loop.progress)  # type: ignore[union-attr]
    run.window.clear()


def save_last(run: Run, dev: dict[str, float] | None) -> None:
    """``OUT/last`` with everything an exact resume needs (a collective: every rank calls it)."""
    rngs = distributed.gather_objects(ckpt.rng_state(), run.env)
    if run.env.is_main:
        training = {"optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
                    "scaler": run.scaler.state_dict(), **run.task.extra_state(), "rng": rngs}
        ckpt.save_checkpoint(run.run_dir, "last", run.task.save_model, run.config, run.state, {"dev": dev},
                             training)
    distributed.barrier(run.env)
    ckpt.maybe_kill("after_save", run.state.global_step)


# -- 4. validate ---------------------------------------------------------------------------------------------------
def validate(run: Run) -> dict[str, float] | None:
    """Rank 0: dev metrics, ``best/`` when they improve, ``curves.png``. Other ranks return None at once."""
    if not run.env.is_main:
        return None
    task, state = run.task, run.state
    task.eval()
    with torch.no_grad():
        dev = task.evaluate()
    task.train()
    if dev is not None:
        run.log.log("dev", state.global_step, {**dev, "epoch": state.epoch})  # type: ignore[union-attr]
        if task.select_metric is not None and improved(dev[task.select_metric], state.best_metric, task.select_mode):
            state.best_metric, state.best_step = dev[task.select_metric], state.global_step
            ckpt.save_checkpoint(run.run_dir, "best", task.save_model, run.config, state, {"dev": dev}, None)
    if run.loop.curves:
        draw_curves(read_log(run.run_dir), run.run_dir / CURVES_NAME, task.select_metric,
                    f"{run.run_dir.name}: step {state.global_step}")
    if dev is not None:
        task.after_evaluation(run.run_dir)
    return dev


def improved(value: float, best: float | None, mode: str) -> bool:
    return best is None or (value > best if mode == "max" else value < best)


# -- 5. test -------------------------------------------------------------------------------------------------------
def final_test(run: Run) -> dict[str, float] | None:
    """Rank 0: the task's test metrics with the best checkpoint (or the current model when there is none)."""
    best = ckpt.find_checkpoint(run.run_dir, "best") if run.task.select_metric is not None else None
    run.task.eval()
    with torch.no_grad():
        test = run.task.test(best)
    if test is not None:
        run.log.log("test", run.state.global_step, test)  # type: ignore[union-attr]
    return test
