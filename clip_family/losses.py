"""The contrastive losses of the CLIP family as pure functions: features in, scalar loss out.

* :func:`clip_loss` — CLIP's symmetric InfoNCE (Radford et al. 2021, Fig. 3) over the (global) batch. Across
  ranks the features are gathered (:func:`gather_features`, open_clip ``loss.py``'s ``gather_features``): by
  default without autograd through the gather, the local shard put back with its gradient; ``gather_with_grad``
  gathers with autograd; ``local_loss`` scores only this rank's rows against the global batch.
* :func:`siglip_loss` — SigLIP's pairwise sigmoid loss (Zhai et al. 2023, Alg. 1): labels +1 on the diagonal and
  -1 elsewhere, ``-Σ log σ(label · (t·x·y + b)) / B_local``; across ranks every other rank's text features are
  gathered with autograd and scored as negatives only (open_clip's ``dist_impl="gather"``).
* :func:`scale_from_param` — the exp-ed logit scale from its learnable log, clamped at 100 (CLIP §2.5).

Features are expected L2-normalised (the model's ``forward`` does it). Initial values: CLIP log-scale
``ln(1/0.07)``, no bias; SigLIP log-scale ``ln 10`` and bias ``-10`` (:data:`INIT`).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.distributed.nn as dist_nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ["INIT", "MAX_LOGIT_SCALE", "clip_loss", "gather_features", "scale_from_param", "siglip_loss"]

MAX_LOGIT_SCALE = 100.0
# loss -> (initial log logit scale, initial logit bias or None)
INIT: dict[str, tuple[float, float | None]] = {"clip": (math.log(1 / 0.07), None), "siglip": (math.log(10.0), -10.0)}


def scale_from_param(log_scale: Tensor) -> Tensor:
    """``exp(log_scale)`` clamped at :data:`MAX_LOGIT_SCALE` (the clamp passes no gradient above it)."""
    return log_scale.clamp(max=math.log(MAX_LOGIT_SCALE)).exp()


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_features(image: Tensor, text: Tensor, *, local_loss: bool = False,
                    gather_with_grad: bool = False) -> tuple[Tensor, Tensor]:
    """Every rank's (B, D) image and text features concatenated in rank order: (W·B, D) each.

    Without ``gather_with_grad`` the gather carries no gradient and (unless ``local_loss``) this rank's own rows
    are put back as the local tensors, so the gradient flows into the local shard."""
    rank, world = _world()
    if world == 1:
        return image, text
    if gather_with_grad:
        return torch.cat(dist_nn.all_gather(image), 0), torch.cat(dist_nn.all_gather(text), 0)
    images = [torch.zeros_like(image) for _ in range(world)]
    texts = [torch.zeros_like(text) for _ in range(world)]
    dist.all_gather(images, image.detach())
    dist.all_gather(texts, text.detach())
    if not local_loss:
        images[rank], texts[rank] = image, text
    return torch.cat(images, 0), torch.cat(texts, 0)


def clip_loss(image: Tensor, text: Tensor, logit_scale: Tensor | float, logit_bias: Tensor | None = None, *,
              local_loss: bool = False, gather_with_grad: bool = False) -> Tensor:
    """Symmetric cross-entropy of image→text and text→image logits; ``image`` / ``text`` are this rank's (B, D)
    normalised features, ``logit_scale`` the exp-ed scale. Equals open_clip's ``ClipLoss`` with the same options."""
    rank, world = _world()
    if world > 1:
        all_image, all_text = gather_features(image, text, local_loss=local_loss, gather_with_grad=gather_with_grad)
        if local_loss:
            per_image = logit_scale * image @ all_text.T  # (B, W·B)
            per_text = logit_scale * text @ all_image.T  # (B, W·B)
        else:
            per_image = logit_scale * all_image @ all_text.T  # (W·B, W·B)
            per_text = per_image.T
    else:
        per_image = logit_scale * image @ text.T  # (B, B)
        per_text = per_image.T
    if logit_bias is not None:
        per_image, per_text = per_image + logit_bias, per_text + logit_bias
    labels = torch.arange(per_image.shape[0], device=image.device)  # (B,) or (W·B,)
    if world > 1 and local_loss:
        labels = labels + rank * image.shape[0]
    return (F.cross_entropy(per_image, labels) + F.cross_entropy(per_text, labels)) / 2


def _sigmoid_term(image: Tensor, text: Tensor, logit_scale: Tensor | float, logit_bias: Tensor | float,
                  negative_only: bool) -> Tensor:
    logits = logit_scale * image @ text.T + logit_bias  # (B, B')
    labels = -torch.ones_like(logits)  # (B, B')
    if not negative_only:
        labels = labels + 2 * torch.eye(*logits.shape, device=logits.device, dtype=logits.dtype)
    return -F.logsigmoid(labels * logits).sum() / image.shape[0]


def siglip_loss(image: Tensor, text: Tensor, logit_scale: Tensor | float, logit_bias: Tensor | float) -> Tensor:
    """SigLIP's sigmoid loss of this rank's (B, D) normalised features; with several ranks the other ranks'
    texts are negatives (gathered with autograd). The mean of the ranks' losses equals the single-process loss of
    the global batch, so DDP's gradient averaging gives the global gradient."""
    loss = _sigmoid_term(image, text, logit_scale, logit_bias, negative_only=False)
    rank, world = _world()
    if world > 1:
        for other, other_text in enumerate(dist_nn.all_gather(text)):
            if other != rank:
                loss = loss + _sigmoid_term(image, other_text, logit_scale, logit_bias, negative_only=True)
    return loss
