"""faiss index over KB vectors: build (streamed), save/load (DESIGN.md §3 index dir), search, sizing.

Public API::

    from retrieval.indexing import IndexConfig, build_index, build_index_from_features, Index
    index = build_index_from_features("kb.h5", IndexConfig(factory="IVF1024,Flat"))
    index.save("runs/kb_index"); index = Index.load("runs/kb_index")
    scores, ids = index.search(queries, k=10)          # (Q, k) float32, (Q, k) str
"""

from retrieval.indexing.builder import build_index, build_index_from_features, check_unique_ids
from retrieval.indexing.config import IndexConfig, IndexConfigError, fp16_factory
from retrieval.indexing.index import Index, IndexFileError, IndexMeta

__all__ = ["Index", "IndexConfig", "IndexConfigError", "IndexFileError", "IndexMeta", "build_index",
           "build_index_from_features", "check_unique_ids", "fp16_factory"]
