"""The typed config of a distillation run (``vlt5r distill``): every leaf field is a flag
(:func:`foundations.cli.add_config_flags`), validated in ``__post_init__``, saved as the run's ``config.json``.

The recipe ``student=xlm-roberta-base teacher=openai/clip-vit-base-patch16 loss_fn=cl pooler_fn=cls layer_kd=false
alpha=.1 bs=512 warmup_steps=1000 lr=1e-4 wd=1e-4 ep=10`` is ``--student DIR --teacher hf:openai/clip-vit-base-patch16
--loss cl --pooling cls --no-layer-kd --alpha 0.1 --batch-size 512 --warmup-steps 1000 --lr 1e-4 --weight-decay 1e-4
--epochs 10`` (docs/multilingual.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from engine.config import LoopConfig, OptimConfig
from foundations.errors import ConfigError
from multilingual.data import FORMATS
from multilingual.losses import LOSSES

POOLINGS = ("mean", "cls")


def _help(text: str, **extra: Any) -> Any:
    return {"help": text, **extra}


@dataclass
class ModelSection:
    teacher: str = field(default="ViT-B/32", metadata=_help(
        "the CLIP teacher: an OpenAI name or .pt, a CLIP-family model dir, or hf:DIR / hf:HUB_ID (a transformers "
        "CLIPModel, local or already cached); its image tower becomes the mCLIP's"))
    student: str = field(default="", metadata=_help(
        "the student: a transformers text encoder directory (XLM-R, mBERT, a language's BERT) with its tokenizer"))
    pooling: str = field(default="mean", metadata=_help("how the student's tokens become one vector",
                                                        choices=POOLINGS))
    max_length: int = field(default=77, metadata=_help("student tokens per sentence (longer ones are truncated)"))
    layer_kd: bool = field(default=False, metadata=_help(
        "also distil hidden layers: MSE between learned linear maps of pooled student layers and pooled teacher "
        "layers (needs the teacher's text tower: not with --teacher-features)"))
    layer_pairs: tuple[str, ...] = field(default=(), metadata=_help(
        "STUDENT:TEACHER block pairs (1-based) for --layer-kd (default: every student block, spread uniformly)"))

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ConfigError(f"model.pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.max_length < 2:
            raise ConfigError(f"model.max_length must be >= 2, got {self.max_length}")
        self.layer_pairs = tuple(self.layer_pairs)
        for pair in self.layer_pairs:
            s, _, t = pair.partition(":")
            if not (s.isdigit() and t.isdigit() and int(s) >= 1 and int(t) >= 1):
                raise ConfigError(f"model.layer_pairs: expected STUDENT:TEACHER block numbers from 1, got {pair!r}")

    def pairs(self) -> list[tuple[int, int]]:
        return [(int(p.split(":")[0]), int(p.split(":")[1])) for p in self.layer_pairs]


@dataclass
class DataSection:
    train_data: tuple[str, ...] = field(default=(), metadata=_help(
        "parallel sentences: .jsonl, .csv, .tsv, .parquet or a datasets folder; LANG=PATH sets the language of "
        "rows without a lang column; several sources: several languages in one run"))
    val_data: tuple[str, ...] = field(default=(), metadata=_help("held-out parallel sentences (same formats)"))
    data_format: str = field(default="auto", metadata=_help("override the detected format", choices=FORMATS))
    split: str = field(default="train", metadata=_help("the split of a saved datasets DatasetDict"))
    english_column: str = field(default="english", metadata=_help("field of the English sentence"))
    foreign_column: str = field(default="foreign", metadata=_help("field of its translation"))
    lang_column: str = field(default="lang", metadata=_help("field of the translation's language code (optional)"))
    batch_size: int = field(default=64, metadata=_help("global batch of pairs per micro-batch (split over ranks)"))
    teacher_features: str | None = field(default=None, metadata=_help(
        "the teacher's English embeddings in a feature file (HDF5, ids = english keys): read instead of running "
        "the teacher; written first with the real extraction pipeline when it does not exist"))

    def __post_init__(self) -> None:
        self.train_data, self.val_data = tuple(self.train_data), tuple(self.val_data)
        if self.batch_size < 2:
            raise ConfigError(f"data.batch_size must be >= 2, got {self.batch_size}")
        if self.data_format not in FORMATS:
            raise ConfigError(f"data.data_format must be one of {FORMATS}, got {self.data_format!r}")


@dataclass
class LossSection:
    loss: str = field(default="mse", metadata=_help("distance to the teacher embedding", choices=LOSSES))
    alpha: float = field(default=0.0, metadata=_help("weight of --alpha-loss: (1 - alpha) * loss + alpha * "
                                                     "alpha_loss"))
    alpha_loss: str = field(default="mse", metadata=_help("the second loss of a mixture", choices=LOSSES))
    temperature: float = field(default=0.05, metadata=_help("temperature of the contrastive loss cl"))
    layer_kd_weight: float = field(default=1.0, metadata=_help("weight of the layer-wise term (--layer-kd)"))

    def __post_init__(self) -> None:
        for name in ("loss", "alpha_loss"):
            if getattr(self, name) not in LOSSES:
                raise ConfigError(f"loss.{name} must be one of {LOSSES}, got {getattr(self, name)!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"loss.alpha must be in [0, 1], got {self.alpha}")
        if self.temperature <= 0 or self.layer_kd_weight < 0:
            raise ConfigError(f"loss.temperature must be > 0 and layer_kd_weight >= 0 (got {self.temperature}, "
                              f"{self.layer_kd_weight})")


@dataclass
class DistillOptimConfig(OptimConfig):
    lr: float = field(default=1e-4, metadata=_help("learning rate of every group without its own"))
    lr_student: float | None = field(default=None, metadata=_help("student transformer LR (default: lr)"))
    lr_proj: float | None = field(default=None, metadata=_help("linear map(s) into the teacher's space (default: "
                                                               "lr)"))
    local_loss: bool = field(default=True, metadata=_help("DDP, cl: score only local rows against the global batch"))
    gather_with_grad: bool = field(default=True, metadata=_help("DDP, cl: gather student rows with autograd"))


@dataclass
class EvalSection:
    xtd_images: str | None = field(default=None, metadata=_help(
        "XTD-style evaluation: an image folder (ids = relative paths without suffix) or a feature file of the "
        "teacher's image embeddings"))
    xtd_captions: str | None = field(default=None, metadata=_help(
        'captions JSONL {"image", "lang", "text"}: text->image and image->text R@1/5/10 per language'))
    eval_batch_size: int = field(default=256, metadata=_help("sentences / images per encoding batch"))
    select_metric: str | None = field(default=None, metadata=_help(
        "dev metric that picks OUT/best (default: val_cosine with --val-data, else xtd_mean_t2i_r@10)"))


@dataclass
class DistillConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    loss: LossSection = field(default_factory=LossSection)
    optim: DistillOptimConfig = field(default_factory=DistillOptimConfig)
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(out="runs/mclip"))
    eval: EvalSection = field(default_factory=EvalSection)

    def __post_init__(self) -> None:
        if self.model.layer_kd and self.data.teacher_features:
            raise ConfigError("--layer-kd needs the teacher's text tower at every step: not with --teacher-features")
        if (self.eval.xtd_images is None) != (self.eval.xtd_captions is None):
            raise ConfigError("--xtd-images and --xtd-captions go together")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
