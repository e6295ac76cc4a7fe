"""Prompt tuning: a learned prefix of ``length`` vectors in front of the text embeddings, with VL-Adapter's
reparameterisation (ylsung/VL_adapter ``src/prompt/prompt_modeling.py`` ``InputPrompts``: an embedding table
fed through Linear(d, mid) -> Tanh -> Linear(mid, d); Lester et al. 2021 / Li & Liang 2021). VL-Adapter's runs
use 40 prompt vectors and ``mid_dim`` 800.

The prefix tokens get mask 1 and take part in the text-text relative position bias (they are text positions
0..P-1, as in VL_adapter's ``JointEncoder``), so ``last_hidden_state`` grows by P rows at the front. Unlike
Houlsby and LoRA, a prefix changes the output at initialisation. The prefix is a module attribute of the
encoder (``joint.prompt``, keys ``prompt.*`` as always), visible in ``print(model)``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from adapters.base import AdapterError

logger = logging.getLogger(__name__)


@dataclass
class PromptConfig:
    """``length``: prefix vectors; ``mid_dim``: reparameterisation MLP width; ``reparameterize``: False gives
    plain prompt vectors (Lester et al.)."""

    method: ClassVar[str] = "prompt"
    length: int = 40
    mid_dim: int = 800
    reparameterize: bool = True

    def __post_init__(self) -> None:
        if self.length <= 0 or self.mid_dim <= 0:
            raise AdapterError(f"prompt.length and prompt.mid_dim must be positive, got {self.length}, {self.mid_dim}")


class PromptPrefix(nn.Module):
    """``forward(batch) -> (batch, length, d)``."""

    def __init__(self, d_model: int, cfg: PromptConfig) -> None:
        super().__init__()
        self.embedding = nn.Embedding(cfg.length, d_model)
        self.mlp: nn.Module = nn.Identity()
        if cfg.reparameterize:
            self.mlp = nn.Sequential(nn.Linear(d_model, cfg.mid_dim), nn.Tanh(), nn.Linear(cfg.mid_dim, d_model))

    def forward(self, batch: int) -> Tensor:
        prefix = self.mlp(self.embedding.weight)  # (P, d)
        return prefix.unsqueeze(0).expand(batch, -1, -1)  # (B, P, d)


def inject(model: nn.Module, cfg: PromptConfig) -> list[str]:
    """Give the encoder inside ``model`` a learned prefix; returns the new module's name. The encoder is the
    module whose class sets ``accepts_prompt_prefix = True`` (:class:`vlt5.modeling.JointEncoder`): it has a
    ``prompt`` attribute (None until injected), prepends ``prompt(batch)`` to its text embeddings, and its text
    embedding ``shared`` gives the width. A flag, not an import: adapters never import vlt5."""
    host = next(((n, m) for n, m in model.named_modules() if getattr(type(m), "accepts_prompt_prefix", False)),
                None)
    if host is None:
        raise AdapterError(f"prompt tuning needs a vlt5 JointEncoder inside {type(model).__name__}")
    name, encoder = host
    if encoder.prompt is not None:
        raise AdapterError(f"{name or 'model'} already has a prompt prefix")
    shared = encoder.shared
    encoder.prompt = PromptPrefix(shared.embedding_dim, cfg).to(shared.weight.device)
    logger.info("prompt: %d prefix vectors (reparameterised: %s)", cfg.length, cfg.reparameterize)
    return [f"{name}.prompt" if name else "prompt"]


def prompt_length(model: nn.Module) -> int:
    """Number of prefix positions a model adds in front of the text (0 without prompt tuning)."""
    for module in model.modules():
        if isinstance(module, PromptPrefix):
            return module.embedding.num_embeddings
    return 0

