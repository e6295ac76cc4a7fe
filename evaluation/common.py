"""What every task shares: image references, the run log, and scoring items of (images, texts).

An :class:`Item` is one test case: a few images (each a path plus an optional crop box) and a few texts. Tasks read
their published annotation format into items; :func:`score_items` embeds every distinct image and text once and
returns, per item, the (n_images, n_texts) cosine-similarity matrix — or ``None`` when one of its images is
missing or undecodable (reported with its path in the :class:`RunLog`; the run goes on). Tasks turn those matrices
into their metrics with a pure reporter function, tested against hand-worked examples.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from foundations.errors import UserError

logger = logging.getLogger(__name__)
KEEP = 20  # how many example paths / reasons a log keeps


class EvalDataError(UserError):
    """A task's data cannot be used at all (missing annotation file, wrong format); names the file."""


@dataclass(frozen=True)
class ImageRef:
    """An image file, optionally cropped to ``box`` = (x, y, width, height) in pixels (ARO, CREPE)."""

    path: str
    box: tuple[float, float, float, float] | None = None


@dataclass
class Item:
    """One test case: its images and texts, and task-specific fields (relation name, category, ...)."""

    id: str
    images: list[ImageRef]
    texts: list[str]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunLog:
    """Counts of one task run: rows read, malformed rows skipped, missing images, items scored."""

    rows: int = 0
    malformed: int = 0
    missing_images: int = 0
    scored: int = 0
    malformed_examples: list[str] = field(default_factory=list)
    missing_examples: list[str] = field(default_factory=list)

    def bad_row(self, where: str, why: str) -> None:
        self.malformed += 1
        if len(self.malformed_examples) < KEEP:
            self.malformed_examples.append(f"{where}: {why}")
        logger.warning("skipped malformed row %s: %s", where, why)

    def missing(self, path: str, why: str) -> None:
        self.missing_images += 1
        if len(self.missing_examples) < KEEP:
            self.missing_examples.append(f"{path}: {why}")
        logger.warning("image %s cannot be used (%s); its items are not scored", path, why)

    def counts(self) -> dict[str, Any]:
        return {"rows": self.rows, "scored": self.scored, "malformed_rows": self.malformed,
                "missing_images": self.missing_images, "malformed_examples": self.malformed_examples,
                "missing_examples": self.missing_examples}


class Scorer(Protocol):
    """What tasks need from :class:`evaluation.scorer.Scorer` (a protocol here, so this module imports no scorer)."""

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray: ...

    def embed_images(self, refs: Sequence[ImageRef], log: RunLog) -> tuple[np.ndarray, np.ndarray]: ...


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise EvalDataError(f"{path}: no such file (expected {what})")
    return path


def score_items(scorer: Scorer, items: Sequence[Item], log: RunLog) -> list[np.ndarray | None]:
    """Per item, the (n_images, n_texts) cosine similarities; ``None`` for items with an unusable image."""
    refs = sorted({ref for item in items for ref in item.images}, key=lambda r: (r.path, r.box or ()))
    texts = sorted({t for item in items for t in item.texts})
    image_emb, ok = scorer.embed_images(refs, log)  # (R, D), (R,)
    text_emb = scorer.embed_texts(texts)  # (T, D)
    ref_row = {ref: i for i, ref in enumerate(refs)}
    text_row = {t: i for i, t in enumerate(texts)}
    out: list[np.ndarray | None] = []
    for item in items:
        rows = [ref_row[r] for r in item.images]
        if not all(ok[r] for r in rows):
            out.append(None)
            continue
        sims = image_emb[rows] @ text_emb[[text_row[t] for t in item.texts]].T  # (n_images, n_texts)
        out.append(sims.astype(np.float64))
        log.scored += 1
    return out


def mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def run_items(items: list[Item], log: RunLog, scorer: Scorer, report: Any, where: Path) -> dict[str, Any]:
    """Score ``items`` and hand the scored ones to the task's pure ``report(items, sims) -> (metrics, details)``."""
    sims = score_items(scorer, items, log)
    kept = [(item, s) for item, s in zip(items, sims) if s is not None]
    if not kept:
        raise EvalDataError(f"{where}: no item could be scored ({log.rows} rows, {log.malformed} malformed, "
                            f"{log.missing_images} missing images; first: "
                            f"{(log.missing_examples or log.malformed_examples or ['-'])[0]})")
    metrics, details = report([k[0] for k in kept], [k[1] for k in kept])
    return {"metrics": metrics, "counts": log.counts(), "details": details}


def read_json_file(path: Path, what: str) -> Any:
    import json

    require_file(path, what)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EvalDataError(f"{path}: not valid JSON ({exc}); expected {what}") from exc


def read_csv_rows(path: Path, required: Sequence[str], what: str) -> list[tuple[str, dict[str, str]]]:
    """``[(file:line, row)]`` of a CSV with a header naming at least ``required``."""
    import csv

    require_file(path, what)
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise EvalDataError(f"{path}: missing column(s) {', '.join(missing)}; expected {what}")
        return [(f"{path}:{reader.line_num}", row) for row in reader]
