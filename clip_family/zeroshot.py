"""Zero-shot evaluation of any model with ``encode_image`` / ``encode_text``: image↔text recall@k on a validation
set with several captions per image (every caption counts), and zero-shot classification (Radford et al. 2021,
§3.1.4: class prompts from templates, averaged per class).

A validation image's class is the class name that appears as whole words in its first caption (the longest one
when several do, e.g. "a handwritten seven" -> ``seven``); images whose caption names no class are left out of
the accuracy.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from clip_family.data import Item


def recall_at_k(image: Tensor, text: Tensor, owner: Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """``i2t_r@k`` (an image finds any of its captions in its top k) and ``t2i_r@k`` (a caption finds its image);
    ``image`` (N, E) and ``text`` (M, E) normalised, ``owner`` (M,) the image row of each caption."""
    scores = image @ text.T  # (N, M)
    out: dict[str, float] = {}
    own = owner[None, :] == torch.arange(len(image))[:, None]  # (N, M) caption j belongs to image i
    for k in ks:
        top_t = scores.topk(min(k, scores.shape[1]), dim=1).indices  # (N, k)
        out[f"i2t_r@{k}"] = float(own.gather(1, top_t).any(dim=1).float().mean())
        top_i = scores.T.topk(min(k, scores.shape[0]), dim=1).indices  # (M, k)
        out[f"t2i_r@{k}"] = float((top_i == owner[:, None]).any(dim=1).float().mean())
    out["mean_recall"] = sum(out.values()) / len(out)
    return out


def _words(text: str) -> str:
    return " " + " ".join(re.findall(r"[\w-]+", text.lower())) + " "


def class_of(caption: str, classes: Sequence[str]) -> int | None:
    """The index of the longest class name found as whole words in ``caption`` (case-insensitive), else None."""
    text = _words(caption)
    best: int | None = None
    for i, name in enumerate(classes):
        needle = _words(name)
        if needle in text and (best is None or len(name) > len(classes[best])):
            best = i
    return best


def class_embeddings(encode_text: Callable[[list[str]], Tensor], classes: Sequence[str],
                     templates: Sequence[str]) -> Tensor:
    """(C, E) normalised mean of each class's normalised template embeddings."""
    prompts = [t.format(c) for c in classes for t in templates]
    emb = F.normalize(encode_text(prompts).float(), dim=-1).view(len(classes), len(templates), -1)  # (C, T, E)
    return F.normalize(emb.mean(dim=1), dim=-1)


def evaluate_items(encode_images: Callable[[list[Item]], Tensor], encode_text: Callable[[list[str]], Tensor],
                   items: Sequence[Item], classes: Sequence[str] = (),
                   templates: Sequence[str] = ("a photo of a {}.",)) -> dict[str, float]:
    """Recall@1/5/10 both ways and, with ``classes``, ``zeroshot_accuracy`` (+ ``zeroshot_n``)."""
    image = F.normalize(encode_images(list(items)).float(), dim=-1)  # (N, E)
    captions = [c for item in items for c in item.captions]
    owner = torch.tensor([i for i, item in enumerate(items) for _ in item.captions])  # (M,)
    text = F.normalize(encode_text(captions).float(), dim=-1)  # (M, E)
    metrics = recall_at_k(image, text, owner)
    if classes:
        labels = [class_of(item.captions[0], classes) for item in items]
        keep = torch.tensor([label is not None for label in labels])
        if keep.any():
            predicted = (image @ class_embeddings(encode_text, classes, templates).T).argmax(dim=1)  # (N,)
            truth = torch.tensor([label if label is not None else -1 for label in labels])
            metrics["zeroshot_accuracy"] = float((predicted[keep] == truth[keep]).float().mean())
            metrics["zeroshot_n"] = float(keep.sum())
    return metrics
