"""The training configuration: one typed, nested, strictly loaded dataclass (saved as ``config.json``).

``TrainConfig`` = ``data`` (files, batch, negatives, loader) + ``model`` (query encoder init, policy, pooling,
with ``model.inputs`` — how question + image become tokens — and ``model.adapter`` — method + its parameters)
+ ``optim`` (the engine's :class:`engine.config.OptimConfig` + a learning rate per group and the temperature)
+ ``loop`` (the engine's :class:`engine.config.LoopConfig` + DDP negative gathering) + ``eval`` (metrics,
baselines). Every leaf is a flag through :func:`foundations.cli.add_config_flags` (``--model.inputs.fc_token`` =
``--fc-token``); ``help`` metadata is the flag's help text. Validation lives in ``__post_init__``;
:func:`TrainConfig.from_dict` rejects unknown keys (naming them) and upgrades a format-1 (flat ``model``) config.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine import config as engine_config
from foundations.config import from_dict, load_json, save_json
from foundations.errors import ConfigError

if TYPE_CHECKING:
    from adapters import HoulsbyConfig, LoRAConfig, PromptConfig
    from vlt5.inputs import VisualInputConfig

logger = logging.getLogger(__name__)

CONFIG_FORMAT_VERSION = 2
# format 1 kept the inputs and adapter fields flat in ``model``: their new place (``from_dict`` moves them)
FORMAT1_MODEL_FIELDS = {"grid": "inputs.grid", "fc_token": "inputs.fc_token", "boxes": "inputs.boxes",
                        "pool_grid_to": "inputs.pool_grid_to", "max_length": "inputs.max_length",
                        "prefix": "inputs.prefix", "adapters": "adapter.method", "adapter_reduction": "adapter.reduction",
                        "lora_r": "adapter.lora_r", "lora_alpha": "adapter.lora_alpha",
                        "prompt_length": "adapter.prompt_length", "prompt_mid_dim": "adapter.prompt_mid_dim"}
KB_SIDES = ("image", "text", "mean")
ADAPTERS = ("none", "houlsby", "lora", "prompt")
POOLINGS = ("mean", "first", "attention")
BOXES = ("zero", "grid_cells")
CACHE = ("auto", "yes", "no")
NEGATIVES = ("all", "batch")


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
    negatives: str = field(default="all", metadata=_help(
        "candidates each query is scored against: all = the whole KB (its vectors are frozen: one matmul), "
        "batch = the batch's positives and hard negatives (+ --kb-negatives random KB rows)", choices=NEGATIVES))
    kb_negatives: int = field(default=0, metadata=_help("with --negatives batch: random KB rows added per step"))

    def __post_init__(self) -> None:
        _choice(self, "kb_side", KB_SIDES)
        _choice(self, "cache_features", CACHE)
        _choice(self, "negatives", NEGATIVES)
        if self.kb_negatives < 0:
            raise ConfigError(f"data.kb_negatives must be >= 0, got {self.kb_negatives}")
        if self.batch_size < 1 or self.hard_negatives < -1 or self.num_workers < 0 or self.prefetch < 1:
            raise ConfigError("data: batch_size >= 1, hard_negatives >= -1, num_workers >= 0 and prefetch >= 1 "
                              f"(got {self.batch_size}, {self.hard_negatives}, {self.num_workers}, {self.prefetch})")


@dataclass
class InputsConfig:
    """How a question + image become encoder inputs (saved with the encoder as vlt5's ``VisualInputConfig``, except
    ``pool_grid_to``, which shapes the visual embedding)."""

    grid: bool = field(default=True, metadata=_help("use the grid tokens of the query image"))
    fc_token: bool = field(default=False, metadata=_help("add the image's CLIP fc as one more visual token"))
    boxes: str = field(default="zero", metadata=_help(
        "box of each grid token: zero (VL_adapter) | grid_cells (where the cell is)", choices=BOXES))
    pool_grid_to: int | None = field(default=None, metadata=_help("max-pool a square grid to NxN (VL_adapter: 6)"))
    max_length: int = field(default=40, metadata=_help("question tokens kept"))
    prefix: str = field(default="", metadata=_help("text prefix before every question, e.g. 'vqa: '"))

    def __post_init__(self) -> None:
        _choice(self, "boxes", BOXES)
        if not (self.grid or self.fc_token):
            raise ConfigError("model.inputs: at least one of grid and fc_token must be true")
        if self.max_length <= 1 or (self.pool_grid_to is not None and self.pool_grid_to < 1):
            raise ConfigError(f"model.inputs: max_length > 1 and pool_grid_to >= 1 (got {self.max_length}, "
                              f"{self.pool_grid_to})")

    def visual_input_config(self) -> VisualInputConfig:
        from vlt5.inputs import VisualInputConfig

        return VisualInputConfig(grid=self.grid, fc_token=self.fc_token, boxes=self.boxes,
                                 max_length=self.max_length, prefix=self.prefix)


@dataclass
class AdapterConfig:
    """Which parameter-efficient modules to add (``method``) and the parameters of each method."""

    method: str = field(default="none", metadata=_help("parameter-efficient modules to add", choices=ADAPTERS))
    reduction: int = field(default=8, metadata=_help("houlsby: bottleneck = d_model / reduction"))
    lora_r: int = field(default=8, metadata=_help("lora: rank"))
    lora_alpha: float = field(default=16.0, metadata=_help("lora: scale numerator"))
    prompt_length: int = field(default=8, metadata=_help("prompt: prefix length"))
    prompt_mid_dim: int = field(default=128, metadata=_help("prompt: reparameterisation width"))

    def __post_init__(self) -> None:
        _choice(self, "method", ADAPTERS)

    def build(self) -> HoulsbyConfig | LoRAConfig | PromptConfig | None:
        """The adapters package's config of ``method`` (None for ``none``)."""
        from adapters import HoulsbyConfig, LoRAConfig, PromptConfig

        builders = {"houlsby": lambda: HoulsbyConfig(reduction_factor=self.reduction),
                    "lora": lambda: LoRAConfig(r=self.lora_r, alpha=self.lora_alpha),
                    "prompt": lambda: PromptConfig(length=self.prompt_length, mid_dim=self.prompt_mid_dim)}
        build = builders.get(self.method)
        return build() if build is not None else None


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
    policy: str = field(default="auto", metadata=_help(
        "what trains: auto (adapters+visual+head with adapters, else full) | head | adapters+visual+head | "
        "last_n_blocks:N | full | parts joined with +"))
    pooling: str = field(default="mean", metadata=_help("token pooling", choices=POOLINGS))
    proj_dim: int | None = field(default=None, metadata=_help("output size; must equal the KB dim (default: it)"))
    inputs: InputsConfig = field(default_factory=InputsConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)

    def __post_init__(self) -> None:
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
        return "adapters+visual+head" if self.adapter.method != "none" else "full"


@dataclass
class OptimConfig(engine_config.OptimConfig):
    """The engine's optimisation settings + this trainer's learning rate per parameter group and temperature."""

    lr_head: float = field(default=1e-3, metadata=_help("learning rate of head + pooler (+ log temperature)"))
    lr_adapters: float = field(default=1e-3, metadata=_help("learning rate of adapter parameters"))
    lr_visual: float = field(default=1e-3, metadata=_help("learning rate of the visual embedding"))
    lr_backbone: float = field(default=1e-4, metadata=_help("learning rate of the T5 backbone"))
    temperature: float = field(default=0.05, metadata=_help("softmax temperature tau (initial value if learned)"))
    learn_temperature: bool = field(default=False, metadata=_help("learn log(tau) with the head's learning rate"))

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.lr_head, self.lr_adapters, self.lr_visual, self.lr_backbone) < 0 or self.temperature <= 0:
            raise ConfigError("optim: learning rates must be >= 0 and temperature > 0")

    @property
    def group_lrs(self) -> dict[str, float]:
        return {"head": self.lr_head, "adapters": self.lr_adapters, "visual": self.lr_visual,
                "backbone": self.lr_backbone}


@dataclass
class LoopConfig(engine_config.LoopConfig):
    """The engine's loop settings + how DDP ranks build the candidate pool."""

    gather_negatives: bool = field(default=True, metadata=_help(
        "DDP: score each query against the candidates of the whole global batch (all ranks)"))


@dataclass
class EvalConfig:
    recall_at: tuple[int, ...] = field(default=(1, 5, 10), metadata=_help("recall cut-offs"))
    mrr_at: int = field(default=10, metadata=_help("MRR cut-off (model selection uses mrr@this)"))
    encode_batch_size: int = field(default=128, metadata=_help("queries per batch when encoding for evaluation"))
    baselines: bool = field(default=True, metadata=_help(
        "before training, evaluate CLIP image-only / text-only and the untrained encoder (dev and test)"))
    reference: bool = field(default=True, metadata=_help(
        "after training, train the generic reference encoder (a standard transformer over the same inputs) "
        "with the same data, loss and budget, for the test comparison"))
    diagnostics: bool = field(default=True, metadata=_help(
        "test the trained encoder with questions (and images) shuffled within the split: a model that "
        "ignores a modality shows no drop"))

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
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a JSON object")
        version = data.get("format_version", CONFIG_FORMAT_VERSION)
        data = {k: v for k, v in data.items() if k != "format_version"}
        if version == 1 and isinstance(data.get("model"), dict):
            model = dict(data["model"])
            for old, new in FORMAT1_MODEL_FIELDS.items():
                if old in model:
                    section, name = new.split(".")
                    model.setdefault(section, {})[name] = model.pop(old)
            data["model"] = model
        return from_dict(cls, data, where)

    def save(self, path: str | Path) -> None:
        save_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(load_json(path), str(path))


def _choice(obj: object, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(obj, name)
    if value not in choices:
        raise ConfigError(f"{type(obj).__name__}.{name} must be one of {choices}, got {value!r}")
