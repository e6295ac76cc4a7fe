"""The retrieval query encoder: question + image -> one L2-normalised vector in CLIP's space.

VL-T5 joint encoder (:mod:`vlt5.modeling`) -> pooling over the real (unmasked) text + visual tokens -> linear
head to the CLIP embedding size -> L2 normalisation; trained DPR-style against CLIP embeddings of the knowledge
base (Karpukhin et al. 2020; the design of DESIGN.md §1-2). Pooling: ``mean`` (masked mean over text and visual
tokens), ``first`` (the first position, T5 has no CLS so this is the first text / prompt token) or
``attention`` (a learned score per token, masked softmax).

A saved query encoder is a directory that :meth:`QueryEncoder.from_pretrained` loads without flags:
``config.json`` (the whole resolved config, adapters included), ``model.safetensors`` and the tokenizer files.
With ``adapter_only=True`` the weights file holds only what differs from the base checkpoint named in the
config (adapters, head, pooler, visual embedding, whatever else was trainable), and loading rebuilds the base
from that reference first (``base_path=`` if it moved).

The encoder is a pure ``nn.Module``: tensors in (:func:`vlt5.inputs.text_inputs` / :func:`vlt5.inputs.visual_inputs`
make them), vectors out. Reading a feature file and batching live on the querying side
(:func:`retrieval.querying.features.encode_with_features`). Loading never changes ``requires_grad``; freezing
is :func:`adapters.policy.apply_policy`'s job (the saved ``config.policy`` says which one training used).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from adapters import config_from_dict, config_to_dict, inject, is_adapter_param
from adapters.base import AdapterError
from foundations.config import from_dict, load_config_json
from foundations.errors import ConfigError
from vlt5.checkpoint import (CONFIG_NAME, WEIGHTS_NAME, CheckpointError, LoadReport, check_shapes,
                             read_safetensors)
from vlt5.config import FORMAT_VERSION, VLT5Config
from vlt5.inputs import VisualInputConfig
from vlt5.modeling import JointEncoder
from vlt5.tokenization import load_tokenizer

logger = logging.getLogger(__name__)

POOLINGS = ("mean", "first", "attention")
BASE_KINDS = ("vlt5_checkpoint", "t5_dir")
NEW_ROWS_KEY = "joint.shared.weight::new_rows"  # rows of shared that a T5 base does not have


@dataclass
class BaseRef:
    """Where the frozen weights of an adapter-only save come from. ``t5_rows``: rows of ``shared`` the T5
    directory provides (the rest, VL-T5's added tokens, are stored with the delta)."""

    kind: str
    path: str
    t5_rows: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in BASE_KINDS:
            raise ConfigError(f"base.kind must be one of {BASE_KINDS}, got {self.kind!r}")


@dataclass
class QueryEncoderConfig:
    model: VLT5Config
    inputs: VisualInputConfig = field(default_factory=VisualInputConfig)
    pooling: str = "mean"
    proj_dim: int = 512
    normalize: bool = True
    adapters: list[dict[str, Any]] = field(default_factory=list)
    policy: str = "adapters+visual+head"
    base: BaseRef | None = None

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.proj_dim <= 0:
            raise ConfigError(f"proj_dim must be positive, got {self.proj_dim}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QueryEncoderConfig:
        return from_dict(cls, data, "QueryEncoderConfig")


# ---------------------------------------------------------------------------------------------------------------
class MeanPooler(nn.Module):
    def forward(self, hidden: Tensor, mask: Tensor) -> Tensor:
        m = mask.to(hidden.dtype)[..., None]  # (B, N, 1)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, d)


class FirstTokenPooler(nn.Module):
    def forward(self, hidden: Tensor, mask: Tensor) -> Tensor:
        return hidden[:, 0]  # (B, d)


class AttentionPooler(nn.Module):
    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.score = nn.Linear(d_model, 1)

    def forward(self, hidden: Tensor, mask: Tensor) -> Tensor:
        logits = self.score(hidden).squeeze(-1)  # (B, N)
        logits = logits.masked_fill(mask <= 0, torch.finfo(logits.dtype).min)
        weights = logits.softmax(dim=-1)  # (B, N)
        return torch.einsum("bn,bnd->bd", weights, hidden)  # (B, d)


def build_pooler(kind: str, d_model: int) -> nn.Module:
    return {"mean": MeanPooler, "first": FirstTokenPooler}.get(kind, lambda: AttentionPooler(d_model))()


# ---------------------------------------------------------------------------------------------------------------
class QueryEncoder(nn.Module):
    """``joint`` (JointEncoder, adapters from ``config.adapters`` injected) -> ``pooler`` -> ``head``."""

    def __init__(self, config: QueryEncoderConfig, joint: JointEncoder | None = None, tokenizer: Any = None) -> None:
        super().__init__()
        self.config = config
        self.joint = joint if joint is not None else JointEncoder(config.model)
        for adapter in config.adapters:
            inject(self.joint, config_from_dict(adapter))
        self.pooler = build_pooler(config.pooling, config.model.d_model)
        self.head = nn.Linear(config.model.d_model, config.proj_dim)
        self.tokenizer = tokenizer  # saved with the model; not a module

    # -- building ------------------------------------------------------------------------------------------
    @classmethod
    def from_vlt5_checkpoint(cls, path: str | Path, tokenizer_dir: str | Path, proj_dim: int,
                             pooling: str = "mean", inputs: VisualInputConfig | None = None,
                             **model_overrides: Any) -> tuple[QueryEncoder, LoadReport]:
        """A new query encoder on a VL-T5 checkpoint (see :meth:`JointEncoder.from_vlt5_checkpoint`)."""
        joint, report = JointEncoder.from_vlt5_checkpoint(path, **model_overrides)
        config = QueryEncoderConfig(model=joint.config, inputs=inputs or VisualInputConfig(), pooling=pooling,
                                    proj_dim=proj_dim, base=BaseRef("vlt5_checkpoint", str(Path(path).resolve())))
        return cls(config, joint, load_tokenizer(tokenizer_dir)), report

    @classmethod
    def from_t5(cls, t5_dir: str | Path, proj_dim: int, feat_dim: int, pooling: str = "mean",
                inputs: VisualInputConfig | None = None, tokenizer_dir: str | Path | None = None,
                **model_cfg: Any) -> QueryEncoder:
        """A new query encoder on a plain T5 directory (visual embedding new; see :meth:`JointEncoder.from_t5`)."""
        joint = JointEncoder.from_t5(t5_dir, feat_dim=feat_dim, **model_cfg)
        t5_rows = json.loads((Path(t5_dir) / "config.json").read_text())["vocab_size"]
        config = QueryEncoderConfig(model=joint.config, inputs=inputs or VisualInputConfig(), pooling=pooling,
                                    proj_dim=proj_dim, base=BaseRef("t5_dir", str(Path(t5_dir).resolve()), t5_rows))
        return cls(config, joint, load_tokenizer(tokenizer_dir or t5_dir))

    def add_adapter(self, cfg: Any) -> list[str]:
        """Inject an adapter (Houlsby / LoRA / prompt config) and record it in the config."""
        added = inject(self.joint, cfg)
        self.config.adapters.append(config_to_dict(cfg))
        return added

    # -- running -------------------------------------------------------------------------------------------
    def forward(self, **inputs: Tensor) -> Tensor:
        """Encoder keyword inputs (:meth:`JointEncoder.forward`'s; ``retrieval.querying.features.QueryCollator``
        makes them from a feature file) -> (B, proj_dim), L2-normalised."""
        out = self.joint(**inputs)
        pooled = self.pooler(out.last_hidden_state, out.attention_mask)  # (B, d)
        z = self.head(pooled)  # (B, D)
        return F.normalize(z, dim=-1) if self.config.normalize else z  # (B, D)

    # -- persistence ---------------------------------------------------------------------------------------
    def delta_state_dict(self) -> dict[str, Tensor]:
        """What an adapter-only save stores: adapters, head, pooler, visual embedding, anything trainable, and
        the rows of ``shared`` a T5 base lacks."""
        base = self.config.base
        if base is None:
            raise ValueError("adapter_only needs a base reference (build with from_vlt5_checkpoint / from_t5)")
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        state = {k: v for k, v in self.state_dict().items()
                 if k in trainable or is_adapter_param(k) or k.startswith(("head.", "pooler."))
                 or "visual_embedding." in k}
        if base.kind == "t5_dir" and "joint.shared.weight" not in state and base.t5_rows is not None:
            state[NEW_ROWS_KEY] = self.joint.shared.weight[base.t5_rows:]  # (V - t5_rows, d)
        return state

    def save_pretrained(self, directory: str | Path, adapter_only: bool = False) -> Path:
        """``config.json`` + ``model.safetensors`` (+ tokenizer files); loadable with no flags."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = self.delta_state_dict() if adapter_only else self.state_dict()
        meta = {"format_version": FORMAT_VERSION, "weights": "delta" if adapter_only else "full"}
        (directory / CONFIG_NAME).write_text(json.dumps({**meta, **self.config.to_dict()}, indent=2))
        save_file({k: v.detach().contiguous() for k, v in state.items()}, str(directory / WEIGHTS_NAME),
                  metadata={"format": "pt", **{k: str(v) for k, v in meta.items()}})
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(directory)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, base_path: str | Path | None = None) -> QueryEncoder:
        """Load a directory written by :meth:`save_pretrained`, in eval mode, every parameter trainable
        (``requires_grad`` untouched: call :func:`adapters.policy.apply_policy` with ``model.config.policy`` to
        freeze as training did). ``base_path`` only overrides where an adapter-only save's base lives (if it
        moved)."""
        directory = Path(directory)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (directory / name).is_file():
                raise CheckpointError(f"{directory}: missing {name} (written by QueryEncoder.save_pretrained)")
        data = load_config_json(directory / CONFIG_NAME)
        weights = data.pop("weights", "full")
        try:
            config = QueryEncoderConfig.from_dict(data)
        except (ConfigError, AdapterError) as exc:
            raise ConfigError(f"{directory / CONFIG_NAME}: {exc}") from exc
        has_tok = any((directory / f).is_file() for f in ("tokenizer.json", "spiece.model"))
        tokenizer = load_tokenizer(directory) if has_tok else None
        state = read_safetensors(directory / WEIGHTS_NAME)
        joint = _rebuild_base(config, base_path, directory) if weights == "delta" else JointEncoder(config.model)
        model = cls(config, joint, tokenizer)
        new_rows = state.pop(NEW_ROWS_KEY, None)
        check_shapes(model, state, directory / WEIGHTS_NAME, directory / CONFIG_NAME)
        expected = model.state_dict()
        missing = sorted(set(expected) - set(state)) if weights == "full" else []
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise CheckpointError(f"{directory / WEIGHTS_NAME}: missing {missing[:8]}, unexpected {unexpected[:8]}")
        model.load_state_dict(state, strict=False)
        if new_rows is not None:
            with torch.no_grad():
                model.joint.shared.weight[-new_rows.shape[0]:] = new_rows
        model.eval()
        return model


def _rebuild_base(config: QueryEncoderConfig, base_path: str | Path | None, directory: Path) -> JointEncoder:
    base = config.base
    if base is None:
        raise CheckpointError(f"{directory}: adapter-only weights but no base reference in config.json")
    path = Path(base_path or base.path)
    if not path.exists():
        raise CheckpointError(f"{directory}: base {base.kind} {str(path)!r} not found (pass base_path=...)")
    model_cfg = config.model.to_dict()
    if base.kind == "vlt5_checkpoint":
        joint, _ = JointEncoder.from_vlt5_checkpoint(path, **model_cfg)
        return joint
    visual = model_cfg.pop("visual")
    return JointEncoder.from_t5(path, feat_dim=visual.pop("feat_dim"), visual=visual, **model_cfg)
