"""LoRA (Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022), as VL-Adapter uses it
(ylsung/VL_adapter ``src/lora/layers.py``, after microsoft/LoRA ``loralib``): a frozen ``nn.Linear`` plus
``(alpha / r) * B @ A``, ``A`` random (Kaiming-uniform), ``B`` zero — so an injected model equals the base.

Targets are named linears: by default ``q`` and ``v`` of every T5 self-attention; any child name (``k``, ``o``,
``wi``, ``wo``) or dotted suffix (``layer.0.SelfAttention.o``) works. The replacement subclasses ``nn.Linear``
and keeps the same ``weight`` / ``bias`` parameters, so base names are unchanged and ``lora_A`` / ``lora_B`` are
added next to them (the key names adapter-only checkpoints have always used). It shows as ``LoRALinear(...,
r=, scaling=)`` in ``print(model)``; no hooks.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adapters.base import AdapterError, t5_blocks

logger = logging.getLogger(__name__)


@dataclass
class LoRAConfig:
    """``r``: rank; ``alpha``: scale numerator (scale = alpha / r); ``targets``: linear names to adapt."""

    method: ClassVar[str] = "lora"
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q", "v")

    def __post_init__(self) -> None:
        self.targets = tuple(self.targets)
        if self.r <= 0 or not self.targets:
            raise AdapterError(f"lora needs r > 0 and at least one target, got r={self.r}, targets={self.targets}")


class LoRALinear(nn.Linear):
    """``x W^T + b + scale * dropout(x) A^T B^T``; shares ``weight`` / ``bias`` with the linear it replaces."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.r, self.scaling = r, alpha / r
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, device=base.weight.device,
                                               dtype=base.weight.dtype))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, device=base.weight.device,
                                               dtype=base.weight.dtype))  # (out, r)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def extra_repr(self) -> str:  # print(model) shows LoRALinear(in, out, bias, r, scaling)
        return f"{super().extra_repr()}, r={self.r}, scaling={self.scaling:g}"

    def forward(self, x: Tensor) -> Tensor:
        base = F.linear(x, self.weight, self.bias)  # (..., out)
        return base + (self.lora_dropout(x) @ self.lora_A.T @ self.lora_B.T) * self.scaling  # (..., out)


def _matches(name: str, targets: tuple[str, ...]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def inject(model: nn.Module, cfg: LoRAConfig) -> list[str]:
    """Replace the targeted ``nn.Linear`` modules inside the T5 blocks of ``model``; returns their names."""
    blocks = {id(b) for b in t5_blocks(model)}
    replaced = []
    for block_name, block in model.named_modules():
        if id(block) not in blocks:
            continue
        for name, module in list(block.named_modules()):
            if not name or not _matches(name, cfg.targets) or not isinstance(module, nn.Linear):
                continue
            if isinstance(module, LoRALinear):
                raise AdapterError(f"{block_name}.{name} already has LoRA")
            parent_name, _, child = name.rpartition(".")
            parent = block.get_submodule(parent_name) if parent_name else block
            setattr(parent, child, LoRALinear(module, cfg.r, cfg.alpha, cfg.dropout))
            replaced.append(f"{block_name}.{name}")
    if not replaced:
        raise AdapterError(f"lora targets {cfg.targets} match no nn.Linear inside the T5 blocks")
    logger.info("lora: %d linears (r=%d, alpha=%g)", len(replaced), cfg.r, cfg.alpha)
    return replaced
