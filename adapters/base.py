"""What every adapter method shares: recognising adapter parameters by name, freezing, saving and loading them.

Adapter parameters are found by a name filter (litgpt ``adapter.py`` habit), so a state dict of a model with
adapters is the base model's state dict plus keys that match :data:`ADAPTER_KEY`:

* ``...layer.{0,1}.adapter.*``  Houlsby bottlenecks (:mod:`adapters.houlsby`)
* ``....lora_A`` / ``....lora_B``  LoRA factors (:mod:`adapters.lora`)
* ``prompt.*``                   the learned text prefix (:mod:`adapters.prompt`)

Injection never renames a base parameter, so a base checkpoint still loads into an injected model.
"""

from __future__ import annotations

import logging
import re

import torch
from torch import Tensor, nn

from foundations.errors import UserError

logger = logging.getLogger(__name__)

ADAPTER_KEY = re.compile(r"(^|\.)(adapter|prompt)\.|(^|\.)lora_[AB]$")


class AdapterError(UserError):
    """Adapters cannot be injected or loaded as asked; the message names the modules or keys."""


def is_adapter_param(name: str) -> bool:
    """True for parameter / state-dict names that belong to an adapter."""
    return ADAPTER_KEY.search(name) is not None


def adapter_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Only the adapter tensors of ``model`` (detached, names as in ``model.state_dict()``)."""
    return {k: v.detach() for k, v in model.state_dict().items() if is_adapter_param(k)}


def load_adapter_state_dict(model: nn.Module, state: dict[str, Tensor], strict: bool = True) -> None:
    """Load adapter tensors into a model with the same adapters injected. With ``strict``, ``state`` must hold
    exactly the model's adapter keys (no base keys, none missing)."""
    not_adapter = sorted(k for k in state if not is_adapter_param(k))
    if not_adapter:
        raise AdapterError(f"not adapter keys (load the base model separately): {not_adapter[:8]}")
    expected = {k for k in model.state_dict() if is_adapter_param(k)}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if strict and (missing or unexpected):
        raise AdapterError(f"adapter keys do not match the injected adapters: missing {missing[:8]}, "
                           f"unexpected {unexpected[:8]} (inject the same adapter configs first)")
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)


def mark_only_adapters_trainable(model: nn.Module) -> list[str]:
    """``requires_grad`` on adapter parameters only; returns their names."""
    names = []
    for name, param in model.named_parameters():
        param.requires_grad_(is_adapter_param(name))
        if param.requires_grad:
            names.append(name)
    if not names:
        logger.warning("mark_only_adapters_trainable: the model has no adapter parameters")
    return names


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total


def t5_blocks(model: nn.Module) -> list[nn.Module]:
    """The ``T5Block`` modules of ``model`` in order (a JointEncoder, a QueryEncoder or any T5 stack)."""
    from transformers.models.t5.modeling_t5 import T5Block

    blocks = [m for m in model.modules() if isinstance(m, T5Block)]
    if not blocks:
        raise AdapterError(f"{type(model).__name__} has no T5Block modules to adapt")
    return blocks


def zeros_like_linear(layer: nn.Linear) -> None:
    with torch.no_grad():
        layer.weight.zero_()
        if layer.bias is not None:
            layer.bias.zero_()
