"""The training function: one generic loop that reads top to bottom (in the manner of nanoGPT's ``train.py``).

setup (process group, seeds) -> data (KB vectors, queries, features) -> model (encoder, task, optimizer,
scheduler, scaler) -> resume or fresh start (config, ``init`` encoder, baseline table) -> for each epoch, for
each micro-batch: forward under autocast, backward (DDP syncs on the last micro-batch of an accumulation),
unscale + clip + step + schedule -> log / evaluate on dev / save ``last`` and ``best`` -> test evaluation with
the best encoder and the comparison table. Everything before the first step that fails because of the user's
files or flags raises :class:`UserError` (the driver prints it on one line).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from feature_extraction.store import FeatureStore
from retrieval.training import checkpoint as ckpt
from retrieval.training import distributed
from retrieval.training.baselines import baseline_table, format_table
from retrieval.training.config import TrainConfig
from retrieval.training.batches import EpochBatches, TokenizedQuestions, make_loader
from retrieval.training.data import feature_dims, load_kb, load_queries, open_features
from retrieval.training.evaluation import encode_queries, evaluate_vectors, flat_index
from retrieval.training.logs import MetricLogger
from retrieval.training.model import RetrievalTask, build_encoder, build_optimizer, build_scheduler
from vlt5 import QueryEncoder

logger = logging.getLogger(__name__)


class UserError(Exception):
    """A problem with the user's files or flags, found before training starts (one line, exit 2)."""


@dataclass
class TrainResult:
    run_dir: str
    global_step: int
    best_metric: float | None
    best_step: int | None
    dev: dict[str, float] | None = None
    test: dict[str, dict[str, float]] = field(default_factory=dict)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    try:
        yield
    except (ValueError, OSError) as exc:
        raise UserError(" ".join(str(exc).split()) or type(exc).__name__) from exc


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def changed_settings(saved: Path, cfg: TrainConfig) -> list[str]:
    """``section.field`` names whose value differs from the run's saved config (``loop.resume`` aside)."""
    if not saved.is_file():
        return []
    old, new = json.loads(saved.read_text()), json.loads(json.dumps(cfg.to_dict()))
    return [f"{s}.{k}" for s, fields in new.items() if isinstance(fields, dict) for k, v in fields.items()
            if old.get(s, {}).get(k) != v and (s, k) != ("loop", "resume")]


def train(cfg: TrainConfig) -> TrainResult:
    # -- setup -------------------------------------------------------------------------------------------------
    with user_errors():
        env = distributed.setup(cfg.loop.device)
    run_dir = Path(cfg.loop.out)
    if cfg.loop.threads:
        torch.set_num_threads(cfg.loop.threads)
    seed_everything(cfg.loop.seed)  # the same on every rank: identical initial weights
    metrics_names, select = cfg.eval.metrics, cfg.eval.select_metric

    # -- data and model ----------------------------------------------------------------------------------------
    with user_errors():
        if cfg.optim.precision == "fp16" and env.device.type != "cuda":
            raise ValueError("precision fp16 needs a CUDA device (GradScaler); use bf16 on the CPU")
        kb = load_kb(cfg.data.kb, cfg.data.kb_features, cfg.data.kb_text_features, cfg.data.kb_side)
        store = open_features(cfg.data.query_features, cfg.data.cache_features, cfg.data.cache_max_gb)
        kb_ids = set(kb.ids)
        splits = {"train": load_queries(cfg.data.train_queries, kb_ids, store, "train")}
        for split in ("dev", "test"):
            if getattr(cfg.data, f"{split}_queries"):
                splits[split] = load_queries(getattr(cfg.data, f"{split}_queries"), kb_ids, store, split)
        questions = FeatureStore.open(cfg.data.question_features) if cfg.data.question_features else None
        fc_dim, grid_tokens, grid_dim = feature_dims(store)
        encoder = build_encoder(cfg.model, fc_dim, grid_tokens, grid_dim, kb.dim).to(env.device)
        task = RetrievalTask(encoder, kb.ids, torch.from_numpy(kb.vectors).to(env.device), cfg.optim.temperature,
                             cfg.optim.learn_temperature, env, cfg.loop.gather_negatives).to(env.device)
        optimizer = build_optimizer(task, cfg.optim)
        accum = cfg.optim.grad_accum
        steps_per_epoch = len(splits["train"]) // cfg.data.batch_size // accum
        if steps_per_epoch == 0:
            raise ValueError(f"{cfg.data.train_queries}: {len(splits['train'])} queries make no optimizer step of "
                             f"{cfg.data.batch_size} x {accum} (batch size x grad_accum)")
        total_steps = min(cfg.loop.max_steps or math.inf, steps_per_epoch * cfg.loop.epochs)
        scheduler = build_scheduler(optimizer, cfg.optim, int(total_steps))
        last = ckpt.find_checkpoint(run_dir)
        if cfg.loop.resume == "yes" and last is None:
            raise ValueError(f"{run_dir}: no last checkpoint to resume from")
        if cfg.loop.resume == "no" and last is not None:
            raise ValueError(f"{run_dir} already holds a checkpoint ({last}); pass --resume or another --out")
    scaler = torch.amp.GradScaler(env.device.type, enabled=cfg.optim.precision == "fp16")
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.optim.precision)
    kb_index = flat_index(kb.ids, kb.vectors)
    tokens = TokenizedQuestions(encoder.tokenizer, [q.question for q in splits["train"]], encoder.config.inputs)
    trainable = [p for p in task.parameters() if p.requires_grad]

    # -- resume or fresh start ---------------------------------------------------------------------------------
    state = ckpt.TrainerState(world_size=env.world_size)
    if last is not None:
        with user_errors():
            state, training = ckpt.load_training_state(last, encoder)
        optimizer.load_state_dict(training["optimizer"])
        scheduler.load_state_dict(training["scheduler"])
        scaler.load_state_dict(training["scaler"])
        with torch.no_grad():
            task.log_temperature.copy_(training["log_temperature"])
        rngs = training["rng"]
        if len(rngs) != env.world_size:
            logger.warning("resuming %d-process state with %d processes: data order is kept, random streams are "
                           "not", len(rngs), env.world_size)
        ckpt.set_rng_state(rngs[env.rank % len(rngs)])
        logger.info("resumed from %s: epoch %d, step %d of the epoch, global step %d", last, state.epoch,
                    state.step_in_epoch, state.global_step)
        changed = changed_settings(run_dir / "config.json", cfg)
        if changed and env.is_main:
            logger.warning("resuming with changed settings %s (config.json keeps the first start's)", changed)
    else:
        if env.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            cfg.save(run_dir / "config.json")
            if cfg.loop.save_init:
                ckpt.write_atomically(run_dir, "init", lambda d: ckpt.save_encoder(d, encoder, store.attrs), 0)
            if cfg.eval.baselines:
                tables = {split: baseline_table(qs, kb, store, questions, {"joint_untrained": encoder},
                                                metrics_names, cfg.eval.encode_batch_size, kb_index)
                          for split, qs in splits.items() if split != "train"}
                (run_dir / "baselines.json").write_text(json.dumps(tables, indent=2) + "\n")
                for split, table in tables.items():
                    logger.info("baselines on %s before training:\n%s", split, format_table(table))
        seed_everything(cfg.loop.seed + env.rank)  # per-rank dropout streams
    distributed.barrier(env)
    log = MetricLogger(run_dir, env.is_main, cfg.loop.tensorboard)
    model = DistributedDataParallel(task, device_ids=[env.device.index] if env.device.type == "cuda" else None) \
        if env.distributed else task
    train_config = cfg.to_dict()

    def evaluate_dev() -> dict[str, float] | None:
        if "dev" not in splits or not env.is_main:
            return None
        vectors = encode_queries(encoder, splits["dev"], store, cfg.eval.encode_batch_size)
        return evaluate_vectors(vectors, splits["dev"], kb_index, metrics_names, name="joint")

    def after_eval(dev: dict[str, float] | None) -> None:
        if dev is None:
            return
        log.log("dev", state.global_step, {**dev, "epoch": state.epoch})
        if state.best_metric is None or dev[select] > state.best_metric:
            state.best_metric, state.best_step = dev[select], state.global_step
            ckpt.save_checkpoint(run_dir, "best", encoder, train_config, state, {"dev": dev}, None, store.attrs)

    def save_last(dev: dict[str, float] | None) -> None:
        rngs = distributed.gather_objects(ckpt.rng_state(), env)  # a collective: every rank calls it
        if env.is_main:
            training = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict(), "log_temperature": task.log_temperature.detach().cpu(),
                        "rng": rngs}
            ckpt.save_checkpoint(run_dir, "last", encoder, train_config, state, {"dev": dev}, training,
                                 store.attrs)
        distributed.barrier(env)
        ckpt.maybe_kill("after_save", state.global_step)

    # -- training ----------------------------------------------------------------------------------------------
    task.train()
    dev: dict[str, float] | None = None
    window: dict[str, float] = {}
    for epoch in range(state.epoch, cfg.loop.epochs):
        if state.global_step >= total_steps:
            break
        batches = EpochBatches(splits["train"], store, tokens, encoder.config.inputs,
                               cfg.data.batch_size, cfg.data.hard_negatives, cfg.loop.seed, epoch, env.rank,
                               env.world_size)
        start = state.step_in_epoch * accum
        loader = make_loader(batches, start, steps_per_epoch * accum, cfg.data.num_workers, cfg.data.prefetch,
                             pin_memory=env.device.type == "cuda")
        bar = tqdm(total=steps_per_epoch, initial=state.step_in_epoch, desc=f"epoch {epoch + 1}/{cfg.loop.epochs}",
                   disable=not (env.is_main and cfg.loop.progress), dynamic_ncols=True)
        t_step = t_data = time.perf_counter()
        for micro, batch in enumerate(loader, start=start):
            window["data_time"] = window.get("data_time", 0.0) + time.perf_counter() - t_data
            batch["inputs"] = {k: v.to(env.device, non_blocking=True) for k, v in batch["inputs"].items()}
            sync = (micro + 1) % accum == 0
            no_sync = model.no_sync() if env.distributed and not sync else contextlib.nullcontext()
            with no_sync:  # DDP all-reduces gradients only in the backward of an accumulation's last micro-batch
                with torch.autocast(env.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                    loss, metrics = model(batch)
                scaler.scale(loss / accum).backward()
            for name, value in metrics.items():
                window[name] = window.get(name, 0.0) + float(value) / accum
            if not sync:
                t_data = time.perf_counter()
                continue
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.optim.grad_clip or math.inf)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            state.global_step += 1
            state.step_in_epoch += 1
            window["steps"] = window.get("steps", 0.0) + 1
            window["step_time"] = window.get("step_time", 0.0) + time.perf_counter() - t_step
            window["grad_norm"] = window.get("grad_norm", 0.0) + float(grad_norm)
            bar.update(1)
            if state.global_step % cfg.loop.log_every == 0 or state.global_step == total_steps:
                n = window.pop("steps")
                values = distributed.mean_over_ranks({k: v / n for k, v in window.items()}, env)
                values.update({f"lr_{g['name']}": g["lr"] for g in optimizer.param_groups}, epoch=epoch)
                bar.set_postfix(loss=f"{values['loss']:.4f}")
                log.log("train", state.global_step, values, console=not cfg.loop.progress)
                window = {}
            if cfg.loop.eval_every and state.global_step % cfg.loop.eval_every == 0:
                after_eval(dev := evaluate_dev())
            if cfg.loop.save_every and state.global_step % cfg.loop.save_every == 0:
                save_last(dev)
            if state.global_step >= total_steps:
                break
            t_step = t_data = time.perf_counter()
        bar.close()
        if state.step_in_epoch == steps_per_epoch:  # the epoch is complete
            state.epoch, state.step_in_epoch = epoch + 1, 0
        if not (cfg.loop.eval_every and state.global_step % cfg.loop.eval_every == 0):
            after_eval(dev := evaluate_dev())
        save_last(dev)

    # -- final evaluation --------------------------------------------------------------------------------------
    result = TrainResult(str(run_dir), state.global_step, state.best_metric, state.best_step, dev)
    if env.is_main and "test" in splits:
        best = ckpt.find_checkpoint(run_dir, "best")
        final = QueryEncoder.from_pretrained(best).to(env.device) if best is not None else encoder
        vectors = encode_queries(final, splits["test"], store, cfg.eval.encode_batch_size)
        joint = evaluate_vectors(vectors, splits["test"], kb_index, metrics_names, name="joint")
        before = run_dir / "baselines.json"
        table = {**(json.loads(before.read_text()).get("test", {}) if before.is_file() else {}), "joint": joint}
        (run_dir / "comparison.json").write_text(json.dumps(table, indent=2) + "\n")
        log.log("test", state.global_step, joint)
        logger.info("test split (%d queries):\n%s", len(splits["test"]), format_table(table))
        result.test = table
    if env.is_main:
        (run_dir / "result.json").write_text(json.dumps(asdict(result), indent=2) + "\n")
    log.close()
    distributed.barrier(env)
    distributed.cleanup()
    return result
