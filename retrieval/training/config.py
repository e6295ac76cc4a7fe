"""The training configuration: one typed, nested, strictly loaded dataclass (saved as ``config.json``).

``TrainConfig`` = ``data`` (files, batch, negatives, loader) + ``model`` (query encoder init, adapters, policy,
inputs) + ``optim`` (AdamW groups, schedule, clipping, accumulation, precision, temperature) + ``loop`` (run
dir, epochs, seed, checkpoints, device) + ``eval`` (metrics, baselines). Every field is a CLI flag
(:mod:`retrieval.training.cli`); ``help`` metadata is the flag's help text. Validation lives in
``__post_init__``; :func:`TrainConfig.from_dict` rejects unknown keys (naming them).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from foundations.config import from_dict
from foundations.errors import ConfigError

logger = logging.getLogger(__name__)

CONFIG_FORMAT_VERSION = 1
KB_SIDES = ("image", "text", "mean")
ADAPTERS = ("none", "houlsby", "lora", "prompt")
POOLINGS = ("mean", "first", "attention")
SCHEDULES = ("linear", "cosine", "constant")
PRECISIONS = ("fp32", "bf16", "fp16")
RESUME = ("auto", "yes", "no")
CACHE = ("auto", "yes", "no")


def _help(text: str, **extra: Any) -> Any:
    return {"help": text, **extra}


@dataclass
class DataConfig:
    kb: str = field(default="", metadata=_help("knowledge base JSONL {id, title, text, image?}"))
    kb_features: str | None = field(default=None, metadata=_help(
        "CLIP features of the KB entries' images (our HDF5; ids = KB ids or the image paths without suffix)"))
    kb_text_features: str | None = field(default=None, metadata=_help(
        "CLIP text features of the KB entries (ids = KB ids), e.g. clip_prepro_feats --texts kb.jsonl"))
    kb_side: str = field(default="image", metadata=_help("KB vector: image fc, text fc or their mean", choices=KB_SIDES))
    train_queries: str = field(default="", metadata=_help("training queries JSONL"))
    dev_queries: str | None = field(default=None, metadata=_help("dev queries JSONL (evaluated every epoch)"))
    test_queries: str | None = field(default=None, metadata=_help("test queries JSONL (evaluated once at the end)"))
    query_features: str = field(default="", metadata=_help("CLIP features (fc + grid) of the query images"))
    question_features: str | None = field(default=None, metadata=_help(
        "CLIP text features of the questions keyed by query id (for the clip_text baseline)"))
    batch_size: int = field(default=32, metadata=_help("global queries per micro-batch (all ranks together)"))
    hard_negatives: int = field(default=1, metadata=_help(
        "hard negatives sampled per query from its list each step (-1: all of them, 0: in-batch only)"))
    num_workers: int = field(default=0, metadata=_help("DataLoader worker processes collating batches"))
    prefetch: int = field(default=4, metadata=_help("batches each worker prepares ahead"))
    cache_features: str = field(default="auto", metadata=_help(
        "hold the query feature file in memory (auto: if under cache_max_gb)", choices=CACHE))
    cache_max_gb: float = field(default=4.0, metadata=_help("size limit for cache_features=auto"))

    def __post_init__(self) -> None:
        _choice(self, "kb_side", KB_SIDES)
        _choice(self, "cache_features", CACHE)
        if self.batch_size < 1 or self.hard_negatives < -1 or self.num_workers < 0 or self.prefetch < 1:
            raise ConfigError("data: batch_size >= 1, hard_negatives >= -1, num_workers >= 0 and prefetch >= 1 "
                              f"(got {self.batch_size}, {self.hard_negatives}, {self.num_workers}, {self.prefetch})")


@dataclass
class ModelConfig:
    init: str = field(default="random", metadata=_help(
        "random | t5:DIR (plain T5 dir) | vlt5:PATH (VL-T5 .pth) | encoder:DIR (a saved QueryEncoder)"))
    tokenizer: str | None = field(default=None, metadata=_help("tokenizer dir (needed for random and vlt5:)"))
    d_model: int = field(default=64, metadata=_help("random init: hidden size"))
    num_layers: int = field(default=2, metadata=_help("random init: T5 blocks"))
    num_heads: int = field(default=4, metadata=_help("random init: attention heads"))
    d_kv: int = field(default=16, metadata=_help("random init: size of one head"))
    d_ff: int = field(default=128, metadata=_help("random init: feed-forward size"))
    dropout: float = field(default=0.1, metadata=_help("dropout rate (all inits)"))
    adapters: str = field(default="none", metadata=_help("parameter-efficient modules to add", choices=ADAPTERS))
    adapter_reduction: int = field(default=8, metadata=_help("houlsby: bottleneck = d_model / reduction"))
    lora_r: int = field(default=8, metadata=_help("lora: rank"))
    lora_alpha: float = field(default=16.0, metadata=_help("lora: scale numerator"))
    prompt_length: int = field(default=8, metadata=_help("prompt: prefix length"))
    prompt_mid_dim: int = field(default=128, metadata=_help("prompt: reparameterisation width"))
    policy: str = field(default="auto", metadata=_help(
        "what trains: auto (adapters+visual+head with adapters, else full) | head | adapters+visual+head | "
        "last_n_blocks:N | full | parts joined with +"))
    pooling: str = field(default="mean", metadata=_help("token pooling", choices=POOLINGS))
    proj_dim: int | None = field(default=None, metadata=_help("output size; must equal the KB dim (default: it)"))
    fc_token: bool = field(default=False, metadata=_help("add the image's CLIP fc as one more visual token"))
    grid: bool = field(default=True, metadata=_help("use the grid tokens of the query image"))
    boxes: str = field(default="zero", metadata=_help(
        "box of each grid token: zero (VL_adapter) | grid_cells (where the cell is)", choices=("zero", "grid_cells")))
    pool_grid_to: int | None = field(default=None, metadata=_help("max-pool a square grid to NxN (VL_adapter: 6)"))
    max_length: int = field(default=40, metadata=_help("question tokens kept"))
    prefix: str = field(default="", metadata=_help("text prefix before every question, e.g. 'vqa: '"))

    def __post_init__(self) -> None:
        _choice(self, "adapters", ADAPTERS)
        _choice(self, "pooling", POOLINGS)
        kind = self.init.split(":", 1)[0]
        if kind not in ("random", "t5", "vlt5", "encoder") or (kind != "random" and ":" not in self.init):
            raise ConfigError(f"model.init must be random, t5:DIR, vlt5:PATH or encoder:DIR, got {self.init!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.proj_dim is not None and self.proj_dim < 1:
            raise ConfigError(f"model.proj_dim must be positive, got {self.proj_dim}")

    @property
    def resolved_policy(self) -> str:
        if self.policy != "auto":
            return self.policy
        return "adapters+visual+head" if self.adapters != "none" else "full"


@dataclass
class OptimConfig:
    lr_head: float = field(default=1e-3, metadata=_help("learning rate of head + pooler (+ log temperature)"))
    lr_adapters: float = field(default=1e-3, metadata=_help("learning rate of adapter parameters"))
    lr_visual: float = field(default=1e-3, metadata=_help("learning rate of the visual embedding"))
    lr_backbone: float = field(default=1e-4, metadata=_help("learning rate of the T5 backbone"))
    weight_decay: float = field(default=0.01, metadata=_help("AdamW weight decay (not on the temperature)"))
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
    temperature: float = field(default=0.05, metadata=_help("softmax temperature tau (initial value if learned)"))
    learn_temperature: bool = field(default=False, metadata=_help("learn log(tau) with the head's learning rate"))

    def __post_init__(self) -> None:
        _choice(self, "schedule", SCHEDULES)
        _choice(self, "precision", PRECISIONS)
        if min(self.lr_head, self.lr_adapters, self.lr_visual, self.lr_backbone, self.weight_decay) < 0:
            raise ConfigError("optim: learning rates and weight_decay must be >= 0")
        if self.temperature <= 0 or self.grad_accum < 1 or self.grad_clip < 0 or self.warmup_steps < 0:
            raise ConfigError("optim: temperature > 0, grad_accum >= 1, grad_clip >= 0, warmup_steps >= 0 (got "
                              f"{self.temperature}, {self.grad_accum}, {self.grad_clip}, {self.warmup_steps})")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"optim.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")

    @property
    def group_lrs(self) -> dict[str, float]:
        return {"head": self.lr_head, "adapters": self.lr_adapters, "visual": self.lr_visual,
                "backbone": self.lr_backbone}


@dataclass
class LoopConfig:
    out: str = field(default="runs/train", metadata=_help("run directory (config, log, checkpoints)"))
    epochs: int = field(default=10, metadata=_help("passes over the training queries"))
    max_steps: int | None = field(default=None, metadata=_help("stop after this many optimizer steps"))
    seed: int = field(default=0, metadata=_help("seed of model init, data order and negative sampling"))
    eval_every: int | None = field(default=None, metadata=_help("also evaluate on dev every N steps"))
    save_every: int | None = field(default=None, metadata=_help("also save the last checkpoint every N steps"))
    log_every: int = field(default=10, metadata=_help("log training metrics every N steps"))
    resume: str = field(default="auto", metadata=_help(
        "auto: resume if OUT/last exists | yes: must resume | no: refuse a run dir with checkpoints",
        choices=RESUME, const="yes"))
    device: str = field(default="auto", metadata=_help("auto | cpu | cuda (torchrun: cuda:LOCAL_RANK)"))
    threads: int | None = field(default=None, metadata=_help("torch CPU threads"))
    gather_negatives: bool = field(default=True, metadata=_help(
        "DDP: score each query against the candidates of the whole global batch (all ranks)"))
    save_init: bool = field(default=True, metadata=_help("save the encoder before training as OUT/init"))
    tensorboard: bool = field(default=True, metadata=_help("write OUT/tensorboard if tensorboard is installed"))
    progress: bool = field(default=True, metadata=_help("tqdm progress bar"))

    def __post_init__(self) -> None:
        _choice(self, "resume", RESUME)
        if self.epochs < 1 or self.log_every < 1:
            raise ConfigError(f"loop.epochs and loop.log_every must be >= 1 (got {self.epochs}, {self.log_every})")
        for name in ("max_steps", "eval_every", "save_every", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"loop.{name} must be >= 1 or unset, got {value}")
        if self.device != "auto" and self.device.split(":")[0] not in ("cpu", "cuda"):
            raise ConfigError(f"loop.device must be auto, cpu, cuda or cuda:N, got {self.device!r}")


@dataclass
class EvalConfig:
    recall_at: tuple[int, ...] = field(default=(1, 5, 10), metadata=_help("recall cut-offs"))
    mrr_at: int = field(default=10, metadata=_help("MRR cut-off (model selection uses mrr@this)"))
    encode_batch_size: int = field(default=128, metadata=_help("queries per batch when encoding for evaluation"))
    baselines: bool = field(default=True, metadata=_help(
        "before training, evaluate CLIP image-only / text-only and the untrained encoder (dev and test)"))

    def __post_init__(self) -> None:
        self.recall_at = tuple(int(k) for k in self.recall_at)
        if not self.recall_at or min(self.recall_at) < 1 or self.mrr_at < 1 or self.encode_batch_size < 1:
            raise ConfigError(f"eval: cut-offs and encode_batch_size must be >= 1 (got {self.recall_at}, "
                              f"{self.mrr_at}, {self.encode_batch_size})")

    @property
    def metrics(self) -> list[str]:
        return [f"mrr@{self.mrr_at}"] + [f"recall@{k}" for k in self.recall_at]

    @property
    def select_metric(self) -> str:
        return f"mrr@{self.mrr_at}"


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        for name in ("kb", "train_queries", "query_features"):
            if not getattr(self.data, name):
                raise ConfigError(f"data.{name} is required (--{name.replace('_', '-')} PATH)")
        need = {"image": ("kb_features",), "text": ("kb_text_features",),
                "mean": ("kb_features", "kb_text_features")}[self.data.kb_side]
        for name in need:
            if not getattr(self.data, name):
                raise ConfigError(f"data.kb_side={self.data.kb_side} needs --{name.replace('_', '-')} PATH")
        if self.model.init.split(":")[0] in ("random", "vlt5") and not self.model.tokenizer:
            raise ConfigError(f"model.init={self.model.init.split(':')[0]} needs --tokenizer DIR")
        if self.optim.precision == "fp16" and self.loop.device == "cpu":
            raise ConfigError("precision fp16 needs a CUDA device (GradScaler); use bf16 on the CPU")

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": CONFIG_FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "train config") -> TrainConfig:
        data = {k: v for k, v in data.items() if k != "format_version"}
        return from_dict(cls, data, where)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from None
        return cls.from_dict(data, str(path))


def _choice(obj: object, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(obj, name)
    if value not in choices:
        raise ConfigError(f"{type(obj).__name__}.{name} must be one of {choices}, got {value!r}")
