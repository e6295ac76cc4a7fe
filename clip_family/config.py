"""Typed configs of the CLIP family (open_clip's JSON model configs -> ``CLIPVisionCfg`` / ``CLIPTextCfg`` in spirit).

A :class:`ModelConfig` is the whole description of one model: the two towers, the joint dimension, the loss and
which tower is locked. It is saved as ``config.json`` next to the weights; ``ClipFamilyModel.from_pretrained(dir)``
needs nothing else. The OpenAI architectures are JSON files in ``clip_family/configs/`` (:func:`named_config`:
``RN50``, ``RN101``, ``RN50x4``, ``RN50x16``, ``RN50x64``, ``ViT-B/32``, ``ViT-B/16``, ``ViT-L/14``,
``ViT-L/14@336px``); :func:`tiny_config` is the odd-sized tiny config every test uses.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from foundations.config import from_dict, load_json
from foundations.errors import ConfigError, UserError

CONFIG_DIR = Path(__file__).parent / "configs"
FORMAT_VERSION = 1
LOSSES = ("clip", "siglip")
TOWER_KINDS = ("openai", "hf")
POOLINGS = ("eos", "mean", "cls")
VARIANTS = ("CLIP", "SigLIP", "LiT", "SigLiT", "BaselineCLIP", "BaselineSigLIP")
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")


def has_hf_weights(path: str | Path) -> bool:
    """Whether a transformers tower directory holds its own weights (a saved model's tower folders hold only its
    config and tokenizer / processor files: their weights are in the model's ``model.safetensors``)."""
    return any(Path(path, name).exists() for name in HF_WEIGHT_FILES)


@dataclass
class ImageTowerConfig:
    """``openai``: ``clip.model.VisionTransformer`` (``layers`` = one depth) or ``ModifiedResNet`` (four stage
    depths); ``hf``: a transformers vision model directory (``AutoModel``; a CLIP/SigLIP dir gives its vision part)."""

    kind: str = "openai"
    image_resolution: int = 224
    layers: tuple[int, ...] = (12,)
    width: int = 768
    patch_size: int | None = 32
    path: str | None = None  # hf: the model directory

    def __post_init__(self) -> None:
        self.layers = tuple(self.layers) if isinstance(self.layers, (list, tuple)) else (int(self.layers),)
        if self.kind not in TOWER_KINDS:
            raise ConfigError(f"image.kind must be one of {TOWER_KINDS}, got {self.kind!r}")
        if self.kind == "hf" and not self.path:
            raise ConfigError("image.kind 'hf' needs image.path (a transformers model directory)")
        if self.kind == "openai" and len(self.layers) not in (1, 4):
            raise ConfigError(f"image.layers: one ViT depth or four ResNet stage depths, got {self.layers}")
        if self.kind == "openai" and len(self.layers) == 1 and not self.patch_size:
            raise ConfigError("image.patch_size is required for a ViT image tower")

    @property
    def is_vit(self) -> bool:
        return len(self.layers) == 1


@dataclass
class TextTowerConfig:
    """``openai``: CLIP's causal text transformer + BPE tokenizer, pooled at the end-of-text token; ``hf``: a
    transformers text encoder directory (BERT, XLM-R, …; a CLIP dir gives its text part) pooled by ``mean`` / ``cls``."""

    kind: str = "openai"
    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12
    path: str | None = None
    pooling: str = "eos"

    def __post_init__(self) -> None:
        if self.kind not in TOWER_KINDS:
            raise ConfigError(f"text.kind must be one of {TOWER_KINDS}, got {self.kind!r}")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"text.pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.kind == "hf":
            if not self.path:
                raise ConfigError("text.kind 'hf' needs text.path (a transformers model directory)")
            if self.pooling == "eos":
                self.pooling = "mean"


@dataclass
class ModelConfig:
    embed_dim: int = 512
    image: ImageTowerConfig = field(default_factory=ImageTowerConfig)
    text: TextTowerConfig = field(default_factory=TextTowerConfig)
    loss: str = "clip"
    lock_image: bool = False
    lock_text: bool = False
    # partial locking (open_clip ``lock_image_tower(unlocked_groups)`` / ``lock_text_tower(unlocked_layers,
    # freeze_layer_norm)``): the last N layer groups of a locked tower still train; see ``model.image_lock_groups``
    lock_image_unlocked_groups: int = 0
    lock_text_unlocked_layers: int = 0
    lock_text_freeze_layer_norm: bool = True  # False: the LayerNorms of the locked text layers still train
    init_logit_scale: float = math.log(1 / 0.07)
    init_logit_bias: float | None = None
    variant: str = "CLIP"
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ConfigError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.variant not in VARIANTS:
            raise ConfigError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.embed_dim < 1:
            raise ConfigError(f"embed_dim must be >= 1, got {self.embed_dim}")
        for name in ("lock_image_unlocked_groups", "lock_text_unlocked_layers"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "model config") -> ModelConfig:
        return from_dict(cls, data, where)


def named_configs() -> list[str]:
    """The OpenAI architecture names (``ViT-B/32`` style)."""
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
    return [n.replace("-336", "@336px").replace("ViT-B-", "ViT-B/").replace("ViT-L-", "ViT-L/") for n in names]


def named_config(name: str) -> ModelConfig:
    """The ModelConfig of an OpenAI architecture (``RN50`` … ``ViT-L/14@336px``; ``ViT-B-32`` also accepted)."""
    stem = name.replace("/", "-").replace("@336px", "-336")
    path = CONFIG_DIR / f"{stem}.json"
    if not path.is_file():
        raise UserError(f"unknown model name {name!r}; one of {', '.join(named_configs())} or 'tiny', a config "
                        "JSON, a model directory or an OpenAI-format .pt")
    return ModelConfig.from_dict(load_json(path), str(path))


def tiny_config(variant: str = "CLIP", embed_dim: int = 24, resnet: bool = False) -> ModelConfig:
    """A tiny OpenAI-architecture config with odd distinct sizes (ViT 32 px / patch 8, or a ModifiedResNet)."""
    image = (ImageTowerConfig(image_resolution=64, layers=(1, 1, 1, 1), width=8, patch_size=None) if resnet
             else ImageTowerConfig(image_resolution=32, layers=(2,), width=128, patch_size=8))
    text = TextTowerConfig(context_length=13, width=64, heads=1, layers=2)  # OpenAI .pt infers heads = width // 64
    return with_variant(ModelConfig(embed_dim=embed_dim, image=image, text=text), variant)


def with_variant(cfg: ModelConfig, variant: str) -> ModelConfig:
    """``cfg`` set up as a named variant: the loss, its initial scale/bias and which towers are locked."""
    if variant not in VARIANTS:
        raise UserError(f"unknown variant {variant!r}; one of {', '.join(VARIANTS)}")
    loss = "siglip" if "SigL" in variant else "clip"
    from clip_family.losses import INIT

    scale, bias = INIT[loss]
    baseline = variant.startswith("Baseline")
    return dataclasses.replace(cfg, variant=variant, loss=loss, init_logit_scale=scale, init_logit_bias=bias,
                               lock_image=baseline or variant in ("LiT", "SigLiT"), lock_text=baseline)
