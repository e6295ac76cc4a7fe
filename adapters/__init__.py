"""Parameter-efficient tuning for the VL-T5 joint encoder (VL-Adapter, Sung et al., CVPR 2022).

One file per method — :mod:`adapters.houlsby`, :mod:`adapters.lora`, :mod:`adapters.prompt` — each with a
dataclass config and ``inject(model, cfg) -> list[str]``; :mod:`adapters.base` finds, freezes, saves and loads
adapter parameters by name; :mod:`adapters.policy` says what trains (``"adapters+visual+head"``, ``"head"``,
``"last_n_blocks:N"``, ``"full"``) and builds optimizer parameter groups with separate learning rates.

Typical use (the training driver)::

    from adapters import HoulsbyConfig, inject
    from adapters.policy import apply_policy, param_groups
    inject(query_encoder.joint, HoulsbyConfig(reduction_factor=8))   # or query_encoder.add_adapter(cfg)
    trainable = apply_policy(query_encoder, "adapters+visual+head")
    optim = torch.optim.AdamW(param_groups(query_encoder, {"head": 1e-3, "adapters": 1e-3, "visual": 1e-4}))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from torch import nn

from adapters.base import (AdapterError, adapter_state_dict, count_parameters, is_adapter_param,
                           load_adapter_state_dict, mark_only_adapters_trainable)
from adapters.houlsby import HoulsbyConfig
from adapters.houlsby import inject as inject_houlsby
from adapters.lora import LoRAConfig
from adapters.lora import inject as inject_lora
from adapters.prompt import PromptConfig
from adapters.prompt import inject as inject_prompt
from foundations.config import from_dict

AdapterConfig = HoulsbyConfig | LoRAConfig | PromptConfig

CONFIGS: dict[str, type] = {"houlsby": HoulsbyConfig, "lora": LoRAConfig, "prompt": PromptConfig}
INJECTORS: dict[str, Callable[[nn.Module, Any], list[str]]] = {
    "houlsby": inject_houlsby, "lora": inject_lora, "prompt": inject_prompt}


def inject(model: nn.Module, cfg: AdapterConfig) -> list[str]:
    """Add the adapters described by ``cfg`` to ``model`` (a JointEncoder or a module containing one) as
    visible modules (wrappers / replaced linears / a prefix module; no hooks). Base parameters keep their names
    and values and ``requires_grad`` is not touched; returns the names of the added / replaced modules."""
    method = getattr(type(cfg), "method", None)
    if method not in INJECTORS:
        raise AdapterError(f"unknown adapter config {cfg!r}")
    return INJECTORS[method](model, cfg)


def config_to_dict(cfg: AdapterConfig) -> dict[str, Any]:
    """``{"method": ..., fields...}`` (JSON-ready: tuples become lists)."""
    fields = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}
    return {"method": type(cfg).method, **fields}


def config_from_dict(data: dict[str, Any]) -> AdapterConfig:
    """Inverse of :func:`config_to_dict`; unknown methods or fields raise."""
    data = dict(data)
    method = data.pop("method", None)
    if method not in CONFIGS:
        raise AdapterError(f"adapter config needs 'method' in {sorted(CONFIGS)}, got {method!r}")
    return from_dict(CONFIGS[method], data, f"adapter[{method}]")


__all__ = ["AdapterConfig", "AdapterError", "HoulsbyConfig", "LoRAConfig", "PromptConfig", "adapter_state_dict",
           "config_from_dict", "config_to_dict", "count_parameters", "inject", "is_adapter_param",
           "load_adapter_state_dict", "mark_only_adapters_trainable"]
