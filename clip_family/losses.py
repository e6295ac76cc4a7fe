"""The contrastive losses of the CLIP family as pure functions: features in, scalar loss out.

* :func:`clip_loss` — CLIP's symmetric InfoNCE (Radford et al. 2021, Fig. 3) over the (global) batch. Across
  ranks the features are gathered (:func:`gather_features`, open_clip ``loss.py``'s ``gather_features``): by
  default without autograd through the gather, the local shard put back with its gradient; ``gather_with_grad``
  gathers with autograd; ``local_loss`` scores only this rank's rows against the global batch.
* :func:`siglip_loss` — SigLIP's pairwise sigmoid loss (Zhai et al. 2023, Alg. 1): labels +1 on the diagonal and
  -1 elsewhere, ``-Σ log σ(label · (t·x·y + b)) / B_local``; across ranks every other rank's text features are
  scored as negatives only. How they travel is open_clip's ``SigLipLoss(dist_impl=)`` (:data:`SIGLIP_DIST`):
  ``gather`` (one autograd all-gather), ``reduce`` (one autograd all-reduce per rank, only that rank contributing),
  ``shift`` (W-1 neighbour exchanges around the ring, from the left), ``bidir`` (both ways at once: ⌊(W-1)/2⌋
  two-way exchanges, then one shift if W is even). The exchanges (:func:`neighbour_exchange`) are point-to-point
  sends whose backward sends each gradient back to the rank the tensor came from; the paper's ring (§3.3) holds
  one other rank's texts at a time instead of all W.
* :func:`scale_from_param` — the exp-ed logit scale from its learnable log, clamped at 100 (CLIP §2.5).

Features are expected L2-normalised (the model's ``forward`` does it). Initial values: CLIP log-scale
``ln(1/0.07)``, no bias; SigLIP log-scale ``ln 10`` and bias ``-10`` (:data:`INIT`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.nn as dist_nn
import torch.nn.functional as F
from torch import Tensor

from foundations.errors import ConfigError

__all__ = ["INIT", "MAX_LOGIT_SCALE", "SIGLIP_DIST", "clip_loss", "gather_features", "neighbour_exchange",
           "scale_from_param", "siglip_loss"]

MAX_LOGIT_SCALE = 100.0
# loss -> (initial log logit scale, initial logit bias or None)
INIT: dict[str, tuple[float, float | None]] = {"clip": (math.log(1 / 0.07), None), "siglip": (math.log(10.0), -10.0)}
# how siglip_loss brings the other ranks' texts (open_clip's SigLipLoss dist_impl)
SIGLIP_DIST = ("gather", "reduce", "shift", "bidir")


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


class _Exchange(torch.autograd.Function):
    """Send ``tensors[k]`` to rank ``to[k]`` and receive a tensor of its shape from rank ``source[k]``, all in one
    batch of point-to-point ops; backward sends each received tensor's gradient back to its source and receives
    the gradients of what was sent (open_clip's ``NeighbourExchange`` / ``NeighbourExchangeBidir``)."""

    @staticmethod
    def forward(ctx: Any, to: tuple[int, ...], source: tuple[int, ...], *tensors: Tensor) -> tuple[Tensor, ...]:
        ctx.to, ctx.source = to, source
        return _send_receive(to, source, tensors)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, ...]:
        return (None, None, *_send_receive(ctx.source, ctx.to, grads))


def _send_receive(to: tuple[int, ...], source: tuple[int, ...], tensors: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    tensors = tuple(t.contiguous() for t in tensors)
    received = tuple(torch.empty_like(t) for t in tensors)
    ops = [dist.P2POp(dist.isend, t, peer) for t, peer in zip(tensors, to)]
    ops += [dist.P2POp(dist.irecv, r, peer) for r, peer in zip(received, source)]
    for request in dist.batch_isend_irecv(ops):
        request.wait()
    return received


def neighbour_exchange(to: tuple[int, ...], source: tuple[int, ...], *tensors: Tensor) -> tuple[Tensor, ...]:
    """``tensors[k]`` goes to rank ``to[k]``; returns what rank ``source[k]`` sent in its own ``k``-th slot, with
    autograd (every rank must call it with the same number of tensors of the same shapes). Two slots to one peer
    in a single call would be ambiguous: :func:`siglip_loss` never does it (W = 2 uses one slot)."""
    return _Exchange.apply(tuple(to), tuple(source), *tensors)


def _texts_by_rank(text: Tensor, dist_impl: str, rank: int, world: int) -> dict[int, Tensor]:
    """Every rank's (B, D) text features (this rank's own included) by rank, with autograd, in arrival order."""
    if dist_impl == "gather":
        return dict(enumerate(dist_nn.all_gather(text)))
    if dist_impl == "reduce":  # rank i's texts = an all-reduced sum to which only rank i contributes
        return {i: dist_nn.all_reduce(text * (i == rank)) for i in range(world)}
    left, right = (rank - 1) % world, (rank + 1) % world
    texts, to_left, to_right = {rank: text}, text, text
    hops = 0
    if dist_impl == "bidir":
        for hops in range(1, (world - 1) // 2 + 1):  # after hop h: the texts of ranks rank - h and rank + h
            to_right, to_left = neighbour_exchange((right, left), (left, right), to_right, to_left)
            texts[(rank - hops) % world], texts[(rank + hops) % world] = to_right, to_left
    shifts = world - 1 if dist_impl == "shift" else (world - 1) % 2  # bidir: one more when W is even
    for hops in range(hops + 1, hops + 1 + shifts):
        (to_right,) = neighbour_exchange((right,), (left,), to_right)  # from the left: rank - hops
        texts[(rank - hops) % world] = to_right
    return texts


def siglip_loss(image: Tensor, text: Tensor, logit_scale: Tensor | float, logit_bias: Tensor | float, *,
                dist_impl: str = "gather") -> Tensor:
    """SigLIP's sigmoid loss of this rank's (B, D) normalised features; with several ranks (equal local batches)
    the other ranks' texts are negatives, brought by ``dist_impl`` (:data:`SIGLIP_DIST`; all give the same loss).
    The mean of the ranks' losses equals the single-process loss of the global batch, and gradients flow back
    through the exchanges, so DDP's gradient averaging gives the global gradient. Equals open_clip's
    ``SigLipLoss(dist_impl=...)``."""
    if dist_impl not in SIGLIP_DIST:
        raise ConfigError(f"siglip dist_impl must be one of {SIGLIP_DIST}, got {dist_impl!r}")
    rank, world = _world()
    if world == 1:
        return _sigmoid_term(image, text, logit_scale, logit_bias, negative_only=False)
    texts = _texts_by_rank(text, dist_impl, rank, world)
    # the positives use this rank's texts as the exchange returned them (gather / reduce: its own copy), so every
    # rank's backward runs the same collectives
    loss = _sigmoid_term(image, texts.pop(rank), logit_scale, logit_bias, negative_only=False)
    for other_text in texts.values():
        loss = loss + _sigmoid_term(image, other_text, logit_scale, logit_bias, negative_only=True)
    return loss
