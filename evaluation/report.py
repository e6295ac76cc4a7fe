"""Evaluate one model on several tasks (:func:`evaluate`, writing the results JSON after each task) and render
what people look at (:func:`render`: a Markdown table, a bar chart per task, the retrieval HTML pages). The
``vlt5r eval`` / ``vlt5r report`` drivers are thin over these two.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evaluation.results import display_name, markdown_table, results_file
from foundations.config import save_json

logger = logging.getLogger(__name__)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def render(records: Sequence[dict[str, Any]], out: Path | None) -> str:
    """The Markdown table; with ``out``, also table.md, ``<task>.png`` per task and retrieval pages."""
    table = markdown_table(records)
    if out is not None:
        from evaluation.plots import bar_chart, retrieval_page
        from foundations.io import atomic_write_text

        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "table.md", table + "\n")
        for task in dict.fromkeys(r["task"] for r in records):
            bar_chart([r for r in records if r["task"] == task], out / f"{_slug(task)}.png")
        for r in records:
            if r.get("details", {}).get("examples"):
                retrieval_page(r, out / f"{_slug(r['task'])}_{_slug(display_name(r['model']))}.html")
    return table


def evaluate(model: str, runs: Sequence[tuple[str, Path, Path | None]], out: Path | None = None,
             precision: str = "fp32", device: str = "cpu", batch_size: int = 64, image_features: Path | None = None,
             image_root: Path | None = None, options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Run ``(task, data, images)`` triples with one model; with ``out``, the results file after each task."""
    from evaluation.scorer import FeatureScorer, Scorer, load_scorer
    from evaluation.tasks import run_task

    scorer: Scorer = load_scorer(model, device, precision, batch_size)
    records = []
    for task, data, images in runs:
        task_scorer = scorer
        if image_features is not None:
            task_scorer = FeatureScorer(image_features, image_root or images or data.parent, scorer)
        record = run_task(task, task_scorer, data, images, **(options or {}))
        c = record["counts"]
        logger.info("%s: %d scored of %d rows (%d malformed rows, %d missing images)", task, c["scored"], c["rows"],
                    c["malformed_rows"], c["missing_images"])
        records.append(record)
        if out is not None:  # after each task, so a long run keeps what it has
            save_json(out, results_file(records))
    return records
