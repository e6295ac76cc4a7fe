"""Pieces the benchmarks share. Benchmarks import library modules and this file, never ``tests/``."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from retrieval.querying.server_process import ServerProcess, free_port  # noqa: E402,F401  (re-exported)
