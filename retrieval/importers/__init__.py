"""Importers from public retrieval datasets to our KB / queries JSONL (DESIGN.md §3).

``python -m retrieval.importers {dpr,dpr-passages,viquae,kilt} --input SRC --out OUT.jsonl ...``; malformed records
are skipped with a reason and counted (``--strict`` stops at the first one); a missing or unreadable file is a
one-line error with exit code 2. Library use: :func:`dpr_queries`, :func:`dpr_passages`, :func:`viquae_queries`,
:func:`kilt_entries` yield :class:`retrieval.formats.Query` / :class:`~retrieval.formats.KBEntry`.
"""

from retrieval.importers.common import ImportFormatError, ImportStats, RecordError, iter_records
from retrieval.importers.dpr import dpr_passages, dpr_queries
from retrieval.importers.kilt import ArticleRow, article_table, kilt_entries
from retrieval.importers.viquae import viquae_queries

__all__ = ["ArticleRow", "ImportFormatError", "ImportStats", "RecordError", "article_table", "dpr_passages",
           "dpr_queries", "iter_records", "kilt_entries", "viquae_queries"]
