"""The distillation losses as pure functions: a student's embeddings of foreign sentences against the teacher's
embeddings of their English originals (Reimers & Gurevych 2020, "Making monolingual sentence embeddings
multilingual"; Carlsson et al. 2022, Multilingual-CLIP: MSE to the CLIP text embedding).

* :func:`mse_loss` — mean squared error to the teacher embedding as the teacher gives it (not normalised), the mean
  over every element (``nn.MSELoss``);
* :func:`cosine_loss` — ``1 - cos(student, teacher)``, averaged over the batch;
* :func:`contrastive_loss` — ``cl``: CLIP's symmetric InfoNCE between the normalised student and teacher rows of
  the batch at a fixed temperature (:func:`clip_family.losses.clip_loss` with ``logit_scale = 1 / temperature``;
  across torchrun ranks it gathers the other ranks' rows as negatives, as CLIP does);
* :func:`distill_loss` — ``(1 - alpha) * loss + alpha * alpha_loss``: the mixtures of the recipes
  (``loss_fn=cl alpha=.1`` → ``--loss cl --alpha 0.1 --alpha-loss mse``);
* :func:`layer_kd_loss` — the mean over chosen layer pairs of the MSE between a learned linear map of a student
  layer's pooled states and the teacher layer's pooled states (the sentences differ in language, so tokens do not
  align: each layer is pooled first).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from clip_family.losses import clip_loss
from foundations.errors import ConfigError

LOSSES = ("mse", "cosine", "cl")


def mse_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """(B, E), (B, E) -> mean of the squared differences over every element."""
    return F.mse_loss(student, teacher)


def cosine_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """(B, E), (B, E) -> mean over rows of ``1 - cos``."""
    return (1.0 - F.cosine_similarity(student, teacher, dim=-1)).mean()


def contrastive_loss(student: Tensor, teacher: Tensor, temperature: float, *, local_loss: bool = True,
                     gather_with_grad: bool = True) -> Tensor:
    """Symmetric InfoNCE of the normalised rows: student row i must pick teacher row i among the batch and back."""
    return clip_loss(F.normalize(teacher, dim=-1), F.normalize(student, dim=-1), 1.0 / temperature,
                     local_loss=local_loss, gather_with_grad=gather_with_grad)


def one_loss(name: str, student: Tensor, teacher: Tensor, temperature: float, **dist: bool) -> Tensor:
    if name == "mse":
        return mse_loss(student, teacher)
    if name == "cosine":
        return cosine_loss(student, teacher)
    if name == "cl":
        return contrastive_loss(student, teacher, temperature, **dist)
    raise ConfigError(f"loss must be one of {LOSSES}, got {name!r}")


def distill_loss(student: Tensor, teacher: Tensor, loss: str = "mse", alpha: float = 0.0, alpha_loss: str = "mse",
                 temperature: float = 0.05, **dist: bool) -> tuple[Tensor, dict[str, Tensor]]:
    """``(1 - alpha) * loss + alpha * alpha_loss`` and its parts (``loss_<name>``, detached, for the log)."""
    main = one_loss(loss, student, teacher, temperature, **dist)
    parts = {f"loss_{loss}": main.detach()}
    if alpha == 0.0:
        return main, parts
    other = one_loss(alpha_loss, student, teacher, temperature, **dist)
    parts[f"loss_{alpha_loss}"] = other.detach()
    return (1.0 - alpha) * main + alpha * other, parts


def layer_kd_loss(student_layers: Sequence[Tensor], teacher_layers: Sequence[Tensor],
                  maps: nn.ModuleList) -> Tensor:
    """Mean over pairs k of ``mse(maps[k](student_layers[k]), teacher_layers[k])``; (B, W_s) and (B, W_t) rows."""
    if not (len(student_layers) == len(teacher_layers) == len(maps)) or not maps:
        raise ConfigError(f"layer KD needs as many student layers, teacher layers and maps, got "
                          f"{len(student_layers)}, {len(teacher_layers)}, {len(maps)}")
    total = sum(mse_loss(m(s), t) for m, s, t in zip(maps, student_layers, teacher_layers))
    return total / len(maps)  # type: ignore[return-value]
