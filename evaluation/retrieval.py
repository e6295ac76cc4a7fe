"""Zero-shot image–text retrieval on Karpathy-style splits (COCO 5k / Flickr30k 1k test), CLIP_benchmark's scheme.

Every caption is a query (text→image) and every image is a query (image→text); an image has several captions,
so image→text R@k counts a hit when *any* of its captions is in the top k (not a 1:1 diagonal). Metric names
follow CLIP_benchmark (``image_retrieval_recall@k`` = text→image, ``text_retrieval_recall@k`` = image→text) and
the values equal its ``zeroshot_retrieval`` on the same embeddings (tested).

Input: BLIP/ARO's ``coco_karpathy_test.json`` / ``flickr30k_test.json`` (a list of ``{"image": rel path,
"caption": [..]}``) or Karpathy's ``dataset_coco.json`` / ``dataset_flickr30k.json`` (``{"images": [{"filepath"?,
"filename", "split", "sentences": [{"raw"}]}]}``, the ``test`` split). Image paths are relative to ``--images``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evaluation.common import EvalDataError, ImageRef, RunLog, require_file
from evaluation.scorer import Scorer
from foundations.config import load_json

KS = (1, 5, 10)


def read_karpathy(path: Path, image_root: Path, log: RunLog, split: str = "test") -> list[tuple[str, list[str]]]:
    """``[(image path, [captions])]`` from either Karpathy layout; malformed entries are skipped and counted."""
    data = load_json(require_file(path, "a Karpathy-style JSON"))
    entries: list[tuple[str, list[str]]] = []
    if isinstance(data, dict) and "images" in data:
        for n, img in enumerate(data["images"]):
            if isinstance(img, dict) and img.get("split", split) != split:
                continue  # another split of Karpathy's file
            log.rows += 1
            try:
                rel = "/".join(p for p in (img.get("filepath", ""), img["filename"]) if p)
                caps = [s["raw"] for s in img["sentences"]]
            except (KeyError, TypeError, AttributeError) as exc:
                log.bad_row(f"{path}:images[{n}]", f"missing {exc}")
                continue
            entries.append((str(image_root / rel), caps))
    elif isinstance(data, list):
        for n, ann in enumerate(data):
            log.rows += 1
            caps = ann.get("caption") if isinstance(ann, dict) else None
            caps = [caps] if isinstance(caps, str) else caps
            if not isinstance(ann, dict) or not isinstance(ann.get("image"), str) or not caps \
                    or not all(isinstance(c, str) for c in caps):
                log.bad_row(f"{path}[{n}]", 'expected {"image": str, "caption": [str, ...]}')
                continue
            entries.append((str(image_root / ann["image"]), list(caps)))
    else:
        raise EvalDataError(f"{path}: expected a list of {{image, caption}} or Karpathy's {{\"images\": [...]}}")
    return entries


def recall_at_k(scores: torch.Tensor, positives: torch.Tensor, k: int) -> torch.Tensor:
    """Per query (row): 1.0 when one of its positives (boolean ``positives``) is among the top-``k`` scores."""
    top = torch.topk(scores, min(k, scores.shape[1]), dim=1).indices  # (Q, k)
    return positives.gather(1, top).any(dim=1).float()  # (Q,)


def retrieval_metrics(text_emb: np.ndarray, image_emb: np.ndarray, text_image: Sequence[int],
                      ks: Sequence[int] = KS) -> dict[str, float]:
    """CLIP_benchmark's metrics from L2-normalised embeddings; ``text_image[t]`` = the image row of caption t."""
    scores = torch.from_numpy(np.ascontiguousarray(text_emb, np.float32)) @ \
        torch.from_numpy(np.ascontiguousarray(image_emb, np.float32)).T  # (T, I)
    positives = torch.zeros_like(scores, dtype=torch.bool)
    positives[torch.arange(len(scores)), torch.as_tensor(list(text_image))] = True
    out: dict[str, float] = {}
    for k in ks:
        out[f"image_retrieval_recall@{k}"] = recall_at_k(scores, positives, k).mean().item()
        out[f"text_retrieval_recall@{k}"] = recall_at_k(scores.T, positives.T, k).mean().item()
    return out


def examples_page(scores: np.ndarray, captions: Sequence[str], paths: Sequence[str], text_image: Sequence[int],
                  examples: int, top_k: int) -> list[dict[str, Any]]:
    """A few evenly spaced text→image and image→text queries with their top-k, for the HTML page."""
    page: list[dict[str, Any]] = []
    for t in range(0, len(captions), max(1, len(captions) // max(1, examples)))[:examples]:
        order = np.argsort(-scores[t], kind="stable")[:top_k]
        page.append({"query": captions[t], "kind": "text→image",
                     "hits": [{"image": paths[j], "score": float(scores[t, j]), "hit": int(j) == text_image[t]}
                              for j in order]})
    for i in range(0, len(paths), max(1, len(paths) // max(1, examples // 2)))[:max(1, examples // 2)]:
        order = np.argsort(-scores[:, i], kind="stable")[:top_k]
        page.append({"query": paths[i], "kind": "image→text",
                     "hits": [{"text": captions[t], "score": float(scores[t, i]), "hit": text_image[t] == i}
                              for t in order]})
    return page


def run(scorer: Scorer, data: Path, images: Path | None = None, examples: int = 8, top_k: int = 5,
        **_: Any) -> dict[str, Any]:
    """Score a Karpathy-style split; ``details["examples"]`` holds a few queries with their top-k for the page."""
    log = RunLog()
    image_root = images or data.parent
    entries = read_karpathy(data, image_root, log)
    refs = [ImageRef(p) for p, _ in entries]
    image_emb, ok = scorer.embed_images(refs, log)
    kept = [i for i in range(len(entries)) if ok[i]]
    captions = [c for i in kept for c in entries[i][1]]
    text_image = [row for row, i in enumerate(kept) for _ in entries[i][1]]
    if not kept:
        raise EvalDataError(f"{data}: no image could be used (first: {log.missing_examples[:1]})")
    text_emb = scorer.embed_texts(captions)
    log.scored = len(kept)
    metrics = retrieval_metrics(text_emb, image_emb[kept], text_image)
    scores = text_emb @ image_emb[kept].T  # (T, I)
    paths = [entries[i][0] for i in kept]
    page = examples_page(scores, captions, paths, text_image, examples, top_k)
    return {"metrics": metrics, "counts": {**log.counts(), "images": len(kept), "captions": len(captions)},
            "details": {"examples": page}}
