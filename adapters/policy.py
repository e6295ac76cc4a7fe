"""Freezing policies and optimizer parameter groups for the joint query encoder.

Every parameter belongs to one group, decided by its name:

* ``adapters`` — Houlsby / LoRA / prompt parameters (:func:`adapters.base.is_adapter_param`);
* ``head``     — the retrieval head: ``head.*`` (projection to CLIP space) and ``pooler.*``;
* ``visual``   — the visual embedding's own parameters (``visual_embedding.*``: feature / box projections and
  their RMSNorms, ``img_order_embedding``, the optional fc projection). The object-order table is ``shared``
  and stays in ``backbone``, as in VL-Adapter;
* ``backbone`` — everything else (``shared``, T5 blocks, final norm).

A policy is a ``+``-joined list of parts:

* ``adapters``, ``visual``, ``head`` — those groups; ``norms`` — every T5 RMSNorm weight (VL_adapter's
  ``--unfreeze_layer_norms``);
* ``last_n_blocks:N`` — the last N T5 blocks, the final norm, and the head (a new head must train);
* ``full`` — everything.

``adapters+visual+head`` is the VL-Adapter setting (DESIGN.md §4.9) and the default.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from torch import nn

from adapters.base import count_parameters, is_adapter_param
from foundations.errors import UserError

logger = logging.getLogger(__name__)

DEFAULT_POLICY = "adapters+visual+head"
GROUPS = ("head", "adapters", "visual", "backbone")
_BLOCK = re.compile(r"(^|\.)block\.(\d+)\.")


class PolicyError(UserError):
    """An unknown policy, or learning rates missing for a trainable group."""


def param_group_of(name: str) -> str:
    """Group of a parameter name (see the module docstring)."""
    if is_adapter_param(name):
        return "adapters"
    if name.startswith(("head.", "pooler.")):
        return "head"
    if "visual_embedding." in name:
        return "visual"
    return "backbone"


def trainable_names(model: nn.Module, policy: str = DEFAULT_POLICY) -> list[str]:
    """Names of the parameters ``policy`` trains (does not change the model)."""
    parts = [p.strip() for p in policy.split("+") if p.strip()]
    if not parts:
        raise PolicyError("empty policy")
    names = [n for n, _ in model.named_parameters()]
    num_blocks = 1 + max((int(m.group(2)) for n in names if (m := _BLOCK.search(n))), default=-1)
    chosen: set[str] = set()
    for part in parts:
        if part == "full":
            chosen.update(names)
        elif part in ("adapters", "visual", "head"):
            chosen.update(n for n in names if param_group_of(n) == part)
        elif part == "norms":
            chosen.update(n for n in names if n.endswith("layer_norm.weight") and param_group_of(n) == "backbone")
        elif part.startswith("last_n_blocks:"):
            try:
                n_last = int(part.split(":", 1)[1])
            except ValueError:
                raise PolicyError(f"bad policy part {part!r}: expected last_n_blocks:<int>") from None
            if not 0 < n_last <= num_blocks:
                raise PolicyError(f"{part}: the model has {num_blocks} blocks")
            first = num_blocks - n_last
            for n in names:
                m = _BLOCK.search(n)
                if (m and int(m.group(2)) >= first and param_group_of(n) == "backbone") or \
                        n.endswith("final_layer_norm.weight") or param_group_of(n) == "head":
                    chosen.add(n)
        else:
            raise PolicyError(f"unknown policy part {part!r}; use adapters, visual, head, norms, "
                              "last_n_blocks:N or full, joined with '+'")
    return [n for n in names if n in chosen]


def apply_policy(model: nn.Module, policy: str = DEFAULT_POLICY) -> list[str]:
    """Set ``requires_grad`` per ``policy``; returns the trainable parameter names (in model order)."""
    names = set(trainable_names(model, policy))
    for name, param in model.named_parameters():
        param.requires_grad_(name in names)
    trainable, total = count_parameters(model)
    logger.info("policy %r: %d / %d parameters trainable (%.2f%%)", policy, trainable, total,
                100.0 * trainable / max(total, 1))
    return [n for n, _ in model.named_parameters() if n in names]


def param_groups(model: nn.Module, lrs: dict[str, float], weight_decay: float = 0.0) -> list[dict[str, Any]]:
    """Optimizer parameter groups of the *trainable* parameters, one per group present, each with its own
    learning rate: ``lrs`` maps group name (head / adapters / visual / backbone) to lr; a ``"default"`` entry
    covers groups not named. Each group dict also carries ``"name"`` (ignored by torch optimizers)."""
    unknown = set(lrs) - set(GROUPS) - {"default"}
    if unknown:
        raise PolicyError(f"unknown parameter groups {sorted(unknown)}; groups are {GROUPS}")
    grouped: dict[str, list[nn.Parameter]] = {g: [] for g in GROUPS}
    for name, param in model.named_parameters():
        if param.requires_grad:
            grouped[param_group_of(name)].append(param)
    out = []
    for group, params in grouped.items():
        if not params:
            continue
        lr = lrs.get(group, lrs.get("default"))
        if lr is None:
            raise PolicyError(f"no learning rate for trainable group {group!r} ({len(params)} tensors); "
                              f"pass lrs[{group!r}] or lrs['default']")
        out.append({"name": group, "params": params, "lr": lr, "weight_decay": weight_decay})
    return out
