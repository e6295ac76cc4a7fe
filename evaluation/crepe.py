"""CREPE (Ma et al., CVPR 2023; RAIVNLab/CREPE): image-to-text retrieval of the true caption among its hard
negatives, R@1/3/5/10.

Data: a CREPE hard-negative CSV (e.g. ``prod_vg_hard_negs_swap_complexity_4.csv``) with columns ``image_id``
(or ``image_path``), ``x, y, width, height`` (the crop, when present), ``caption`` and ``hard_negs`` (a
JSON/Python list literal). The options are ``[caption] + hard_negs``: **the true caption is always index 0**.
Its rank is the number of options scoring strictly higher (a tie keeps the true caption first, as a stable
sort of index-0-first options does); R@k = share of items with rank < k. The crop is on when the four box
columns are filled, as the reference's default ``--crop``. Images: ``--images/<image_id>.jpg`` or Visual Genome's
``--images/VG_100K{,_2}/<image_id>.jpg``.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.common import ImageRef, Item, RunLog, read_csv_rows, run_items
from evaluation.scorer import Scorer

KS = (1, 3, 5, 10)


def _box(row: dict[str, str]) -> tuple[float, float, float, float] | None:
    if all((row.get(k) or "").strip() for k in ("x", "y", "width", "height")):
        return tuple(float(row[k]) for k in ("x", "y", "width", "height"))  # type: ignore[return-value]
    return None


def vg_image(images: Path, name: str) -> Path:
    """``images/name``, else Visual Genome's two release folders ``VG_100K/`` and ``VG_100K_2/`` below it."""
    for candidate in (images / name, images / "VG_100K" / name, images / "VG_100K_2" / name):
        if candidate.is_file():
            return candidate
    return images / name


def read(data: Path, images: Path, log: RunLog) -> list[Item]:
    items: list[Item] = []
    for where, row in read_csv_rows(data, ["caption", "hard_negs"], "a CREPE hard-negative CSV"):
        log.rows += 1
        try:
            negs = ast.literal_eval(row["hard_negs"])
            if not isinstance(negs, (list, tuple)) or not negs or not row["caption"].strip():
                raise ValueError("hard_negs must be a non-empty list and caption non-empty")
            image = row.get("image_path") or (f"{row['image_id']}.jpg" if row.get("image_id") else None)
            if not image:
                raise ValueError("no image_id or image_path")
            items.append(Item(where, [ImageRef(str(vg_image(images, image)), _box(row))],
                              [row["caption"]] + [str(n) for n in negs]))
        except (ValueError, SyntaxError, TypeError, KeyError) as exc:
            log.bad_row(where, str(exc))
    return items


def report(items: Sequence[Item], sims: Sequence[np.ndarray]) -> tuple[dict[str, float], dict[str, Any]]:
    ranks = np.array([int((s[0, 1:] > s[0, 0]).sum()) for s in sims])
    return {f"recall@{k}": float((ranks < k).mean()) for k in KS}, {"mean_options": float(np.mean(
        [len(i.texts) for i in items]))}


def run(scorer: Scorer, data: Path, images: Path | None = None, **_: Any) -> dict[str, Any]:
    log = RunLog()
    items = read(data, images or data.parent, log)
    return run_items(items, log, scorer, report, data)
