"""Querying an index: query encoders (joint / CLIP image / CLIP text), query images, the in-process searcher.

    from retrieval.querying import open_searcher
    searcher = open_searcher("runs/kb_index", "kb.jsonl", "runs/train/best")
    hits = searcher.search("Who is the red one?", image_from_path("scene.png"), k=10)

CLI: ``retrieval/search.py``; HTTP: ``retrieval/serve.py`` (:mod:`retrieval.querying.app`).

Import order matters: torch is imported before faiss. Both wheels ship their own libgomp; with faiss's loaded first,
torch's CPU ops ran ~3x slower here (tiny encoder: 36 ms vs 13 ms per query, measured in docs/serving.md).
"""

import torch  # noqa: F401  (before faiss, see above)

from retrieval.querying.backbone_ref import BackboneMismatch, BackboneRef, write_backbone_record
from retrieval.querying.encoders import ENCODERS, QueryEncoderLike, load_encoder
from retrieval.querying.images import ImageError, image_from_bytes, image_from_path
from retrieval.querying.searcher import Hit, PassageMap, Searcher, open_searcher

__all__ = ["ENCODERS", "BackboneMismatch", "BackboneRef", "Hit", "ImageError", "PassageMap", "QueryEncoderLike",
           "Searcher", "image_from_bytes", "image_from_path", "load_encoder", "open_searcher",
           "write_backbone_record"]
