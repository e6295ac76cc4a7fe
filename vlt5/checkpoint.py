"""Checkpoint surgery for VL-T5 state dicts and loading of plain T5 directories (DESIGN.md §4.1).

VL-T5 saves ``torch.save(model.state_dict())`` of the whole seq2seq model (j-min/VL-T5 ``trainer_base.save``),
under DDP with a ``module.`` prefix, and loads with ``load_state_dict(strict=False)`` after renaming legacy
``vis_encoder.`` keys (``trainer_base.load_checkpoint``). We keep ``shared.weight`` and ``encoder.*``, drop the
decoder, ``lm_head``, a fine-tuned model's ``answer_head`` and the stray
``encoder.visual_embedding.layer_norm.weight`` of the released ``Epoch30.pth``, recognise the tied copies of
``shared`` (``encoder.embed_tokens``, ``encoder.visual_embedding.obj_order_embedding``, ``decoder.embed_tokens``),
and report all of it. Anything
missing, unexpected or of the wrong shape is an error naming the keys (``strict=False`` downgrades it to a
warning; the report is attached to the error either way). Files are read with ``torch.load(weights_only=True)``
or safetensors — never unpickled.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import T5EncoderModel

from adapters.base import is_adapter_param
from foundations.errors import ConfigError, UserError
from vlt5.config import FORMAT_VERSION, VLT5Config
from vlt5.tokenization import load_tokenizer

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TIED_ALIASES = ("encoder.embed_tokens.weight", "encoder.visual_embedding.obj_order_embedding.weight",
                "decoder.embed_tokens.weight")
NEW_MODULES = ("encoder.visual_embedding.fc_embedding.",)  # our extensions: absent from VL-T5 checkpoints
# The model class is passed in (``cls``): this module never imports vlt5.modeling, which imports it.
EncoderT = TypeVar("EncoderT", bound=nn.Module)
STRAY_KEYS = {"encoder.visual_embedding.layer_norm.weight":
              "stray norm over the visual sum, unused with individual_vis_layer_norm (VL-T5 default)"}


class CheckpointError(UserError):
    """A checkpoint cannot be loaded faithfully. ``report`` (a :class:`LoadReport`, when available) says why."""

    def __init__(self, message: str, report: LoadReport | None = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class LoadReport:
    """What :func:`load_vlt5_checkpoint` did with every key of a checkpoint. ``str(report)`` prints it."""

    path: str
    prefix_stripped: str | None = None
    renamed_legacy: int = 0
    kept: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    tied: list[str] = field(default_factory=list)
    ignored: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched or self.conflicts)

    def problems(self) -> str:
        parts = []
        if self.missing:
            parts.append(f"missing encoder keys: {self.missing}")
        if self.unexpected:
            parts.append(f"unexpected keys: {self.unexpected}")
        if self.mismatched:
            parts.append("shape mismatches: " + ", ".join(f"{k} checkpoint {tuple(a)} vs model {tuple(b)}"
                                                          for k, a, b in self.mismatched))
        if self.conflicts:
            parts.append(f"tied copies that differ from shared.weight: {self.conflicts}")
        return "; ".join(parts)

    def __str__(self) -> str:
        by_reason: dict[str, int] = {}
        for reason in self.ignored.values():
            by_reason[reason] = by_reason.get(reason, 0) + 1
        lines = [f"LoadReport({self.path})",
                 f"  prefix stripped: {self.prefix_stripped!r}; "
                 f"legacy vis_encoder. keys renamed: {self.renamed_legacy}",
                 f"  kept: {len(self.kept)} encoder tensors",
                 f"  new (extensions VL-T5 does not have, freshly initialised): {self.new or 'none'}",
                 f"  tied copies of shared.weight (checked equal, not stored twice): {self.tied}"]
        lines += [f"  ignored {n}: {reason}" for reason, n in sorted(by_reason.items())]
        for name in ("missing", "unexpected", "mismatched", "conflicts"):
            lines.append(f"  {name}: {getattr(self, name) or 'none'}")
        lines.append(f"  config: {json.dumps(self.config)}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
def read_safetensors(path: str | Path) -> dict[str, Tensor]:
    """``safetensors.torch.load_file``; a truncated or corrupt file is one :class:`CheckpointError` naming it."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file, truncated or corrupt "
                              f"({' '.join(str(exc).split())})") from None


def check_shapes(model: nn.Module, state: dict[str, Tensor], weights: Path, config: Path) -> None:
    """Refuse weights whose tensors have other sizes than the model ``config`` builds (one line, the first one)."""
    expected = model.state_dict()
    wrong = [(k, tuple(v.shape), tuple(expected[k].shape)) for k, v in state.items()
             if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    if wrong:
        name, have, want = wrong[0]
        raise CheckpointError(f"{weights}: {len(wrong)} tensor(s) do not have the sizes {config} gives, e.g. {name} "
                              f"is {have} in the weights but {want} by the config")


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A state dict from ``.safetensors`` or a torch file (``weights_only=True``); ``{"state_dict": ...}`` /
    ``{"model": ...}`` wrappers are unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle with custom classes, or not a torch file at all
        raise CheckpointError(f"{path}: not readable with torch.load(weights_only=True): {exc}") from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and set(obj) == {wrapper} and isinstance(obj[wrapper], dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    return obj


def normalise_keys(state: dict[str, Tensor], report: LoadReport) -> dict[str, Tensor]:
    """Strip a DDP ``module.`` prefix and rename legacy ``vis_encoder.`` to ``encoder.``."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith("module."):
            key, report.prefix_stripped = key[len("module."):], "module."
        if key.startswith("vis_encoder."):
            key = "encoder." + key[len("vis_encoder."):]
            report.renamed_legacy += 1
        out[key] = value
    return out


def infer_config(state: dict[str, Tensor], path: str | Path = "checkpoint") -> VLT5Config:
    """Architecture from tensor shapes (normalised keys). Not inferable, left at t5-base defaults:
    ``relative_attention_max_distance`` (128), ``layer_norm_epsilon``, ``dropout_rate``."""

    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise CheckpointError(f"{path}: cannot infer the config, key {key!r} is missing")
        return tuple(state[key].shape)

    shared_key = "shared.weight" if "shared.weight" in state else "encoder.embed_tokens.weight"
    vocab_size, d_model = shape(shared_key)
    layers = {int(m.group(1)) for k in state if (m := re.match(r"encoder\.block\.(\d+)\.", k))}
    if not layers:
        raise CheckpointError(f"{path}: no encoder.block.N.* keys: not a VL-T5 / T5 encoder checkpoint")
    buckets, heads = shape("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    inner, _ = shape("encoder.block.0.layer.0.SelfAttention.q.weight")
    gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in state
    d_ff = shape("encoder.block.0.layer.1.DenseReluDense." + ("wi_0" if gated else "wi") + ".weight")[0]
    _, feat_dim = shape("encoder.visual_embedding.feat_embedding.0.weight")
    n_images, _ = shape("encoder.visual_embedding.img_order_embedding.weight")
    _, pos_in = shape("encoder.visual_embedding.absolute_vis_pos_embedding.0.weight")
    if pos_in != 5:
        raise CheckpointError(f"{path}: absolute_vis_pos_embedding takes {pos_in} inputs; VL-T5 uses 5 "
                              "(x1, y1, x2, y2, area)")
    fc_key = "encoder.visual_embedding.fc_embedding.0.weight"
    fc_dim = shape(fc_key)[1] if fc_key in state else None
    return VLT5Config(vocab_size=vocab_size, d_model=d_model, d_kv=inner // heads, d_ff=d_ff,
                      num_layers=max(layers) + 1, num_heads=heads, relative_attention_num_buckets=buckets,
                      feed_forward_proj="gated-gelu" if gated else "relu",
                      visual={"feat_dim": feat_dim, "n_images": n_images, "fc_dim": fc_dim})  # type: ignore[arg-type]


def classify_keys(state: dict[str, Tensor], model_state: dict[str, Tensor], report: LoadReport) -> dict[str, Tensor]:
    """Fill ``report`` and return the tensors to load (model names)."""
    if "shared.weight" not in state and "encoder.embed_tokens.weight" in state:
        state = {**state, "shared.weight": state["encoder.embed_tokens.weight"]}
        report.ignored["encoder.embed_tokens.weight"] = "used as shared.weight (no shared.weight in checkpoint)"
    keep: dict[str, Tensor] = {}
    for key, value in state.items():
        if key in report.ignored:
            continue
        if key in model_state:
            if tuple(value.shape) != tuple(model_state[key].shape):
                report.mismatched.append((key, tuple(value.shape), tuple(model_state[key].shape)))
            else:
                keep[key] = value
                report.kept.append(key)
        elif key in TIED_ALIASES:
            report.tied.append(key)
            shared = state.get("shared.weight")
            if shared is not None and (shared.shape != value.shape or not torch.equal(shared, value)):
                report.conflicts.append(key)
        elif key in STRAY_KEYS:
            report.ignored[key] = STRAY_KEYS[key]
        elif key.startswith("decoder."):
            report.ignored[key] = "decoder (the joint encoder has none)"
        elif key == "lm_head.weight":
            report.ignored[key] = "lm_head (decoder output projection)"
        elif key.startswith("answer_head."):
            report.ignored[key] = "answer_head (classifier of a fine-tuned VL-T5 VQA model)"
        else:
            report.unexpected.append(key)
    absent = sorted(set(model_state) - set(keep) - {k for k, _, _ in report.mismatched})
    report.new = [k for k in absent if k.startswith(NEW_MODULES)]
    report.missing = [k for k in absent if not k.startswith(NEW_MODULES)]
    return keep


def load_vlt5_checkpoint(cls: type[EncoderT], path: str | Path, strict: bool = True,
                         **overrides: Any) -> tuple[EncoderT, LoadReport]:
    """See :meth:`vlt5.modeling.JointEncoder.from_vlt5_checkpoint`."""
    report = LoadReport(path=str(path))
    state = normalise_keys(read_state_dict(path), report)
    try:
        config = infer_config(state, path).with_overrides(**overrides)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}", report) from exc
    report.config = config.to_dict()
    model = cls(config)
    keep = classify_keys(state, model.state_dict(), report)
    if not report.ok:
        message = f"{path}: {report.problems()}"
        if strict:
            raise CheckpointError(message + " (pass strict=False to load anyway; missing tensors keep their "
                                  "random initialisation)", report)
        logger.warning(message)
    model.load_state_dict(keep, strict=False)
    model.eval()
    logger.info("%s", report)
    return model, report


# ---------------------------------------------------------------------------------------------------------------
def load_t5(cls: type[EncoderT], t5_dir: str | Path, feat_dim: int = 2048, vocab_size: int | None = None,
            **cfg: Any) -> EncoderT:
    """See :meth:`vlt5.modeling.JointEncoder.from_t5`."""
    t5_dir = Path(t5_dir)
    if not (t5_dir / "config.json").is_file():
        raise CheckpointError(f"{t5_dir}: not a transformers T5 directory (no config.json)")
    attn = cfg.get("attn_implementation", "sdpa")
    t5 = T5EncoderModel.from_pretrained(t5_dir, attn_implementation=attn)
    if vocab_size is None:
        vocab_size = _vlt5_vocab_size(t5_dir, t5.config.vocab_size)
    visual = {"feat_dim": feat_dim, **cfg.pop("visual", {})}
    config = VLT5Config.from_t5_config(t5.config, vocab_size=vocab_size, visual=visual, **cfg)
    old = t5.shared.weight.data  # (V_t5, d)
    if vocab_size != old.shape[0]:
        new = torch.nn.Embedding(vocab_size, config.d_model)  # normal(0, 1) init, as HF's resize did for VL-T5
        n = min(vocab_size, old.shape[0])
        with torch.no_grad():
            new.weight[:n] = old[:n]
        logger.info("%s: resized shared %d -> %d rows (rows >= %d are new)", t5_dir, old.shape[0], vocab_size, n)
        t5.shared = new
    model = cls(config, t5=t5)
    model.eval()
    return model


def _vlt5_vocab_size(t5_dir: Path, t5_rows: int) -> int:
    """len(VL-T5 tokenizer) if ``t5_dir`` has tokenizer files, else the T5 embedding's row count."""
    if any((t5_dir / name).is_file() for name in ("spiece.model", "tokenizer.json")):
        return len(load_tokenizer(t5_dir))
    logger.warning("%s: no tokenizer files; keeping the T5 vocabulary size %d (pass vocab_size=...)", t5_dir, t5_rows)
    return t5_rows


# ---------------------------------------------------------------------------------------------------------------
def save_joint_encoder(state: dict[str, Tensor], config: VLT5Config, directory: str | Path) -> Path:
    """``config.json`` + ``model.safetensors`` of a bare joint encoder's ``state`` (no adapters: save a
    QueryEncoder, which records them)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if any(is_adapter_param(k) for k in state):
        raise ValueError("this JointEncoder has adapters injected; save the QueryEncoder that records them")
    config.save(directory / CONFIG_NAME)
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(directory / WEIGHTS_NAME),
              metadata={"format": "pt", "format_version": str(FORMAT_VERSION)})
    return directory


def load_joint_encoder(cls: type[EncoderT], directory: str | Path) -> EncoderT:
    directory = Path(directory)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (directory / name).is_file():
            raise CheckpointError(f"{directory}: missing {name} (written by JointEncoder.save_pretrained)")
    model = cls(VLT5Config.load(directory / CONFIG_NAME))
    state = read_safetensors(directory / WEIGHTS_NAME)
    check_shapes(model, state, directory / WEIGHTS_NAME, directory / CONFIG_NAME)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"{directory / WEIGHTS_NAME}: missing {result.missing_keys}, "
                              f"unexpected {result.unexpected_keys}")
    model.eval()
    return model
