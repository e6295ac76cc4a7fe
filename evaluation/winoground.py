"""Winoground (Thrush et al., CVPR 2022; facebook/winoground): two images, two captions with the same words in
a different order.

Data: the release's ``examples.jsonl`` (``{"id", "image_0", "image_1", "caption_0", "caption_1", "tag", ...}``)
with images under ``--images`` (default ``DATA/../images``) as ``<image_x>.png`` (another suffix is found too).
With s(c, i) the similarity of caption c and image i:

* text score: s(c0, i0) > s(c1, i0) and s(c1, i1) > s(c0, i1)
* image score: s(c0, i0) > s(c0, i1) and s(c1, i1) > s(c1, i0)
* group score: both.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.common import ImageRef, Item, RunLog, require_file, run_items
from evaluation.scorer import Scorer
from evaluation.svo import image_index
from foundations.jsonl import JSONLError, scan_jsonl


def read(data: Path, images: Path, log: RunLog) -> list[Item]:
    require_file(data, "Winoground's examples.jsonl")
    index = image_index(images)
    items: list[Item] = []
    for where, row in scan_jsonl(data):
        log.rows += 1
        keys = ("image_0", "image_1", "caption_0", "caption_1")
        if isinstance(row, JSONLError) or not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in keys):
            log.bad_row(where, "expected {id, image_0, image_1, caption_0, caption_1}")
            continue
        refs = [ImageRef(str(index.get(row[k], images / f"{row[k]}.png"))) for k in ("image_0", "image_1")]
        items.append(Item(str(row.get("id", where)), refs, [row["caption_0"], row["caption_1"]],
                          {"tag": row.get("tag")}))
    return items


def scores(s: np.ndarray) -> tuple[bool, bool]:
    """(text correct, image correct) from s[i, c] = similarity of image i and caption c."""
    text = s[0, 0] > s[0, 1] and s[1, 1] > s[1, 0]
    image = s[0, 0] > s[1, 0] and s[1, 1] > s[0, 1]
    return bool(text), bool(image)


def report(items: Sequence[Item], sims: Sequence[np.ndarray]) -> tuple[dict[str, float], dict[str, Any]]:
    pairs = np.array([scores(s) for s in sims])  # (N, 2)
    return ({"text": float(pairs[:, 0].mean()), "image": float(pairs[:, 1].mean()),
             "group": float((pairs[:, 0] & pairs[:, 1]).mean())}, {})


def run(scorer: Scorer, data: Path, images: Path | None = None, **_: Any) -> dict[str, Any]:
    log = RunLog()
    items = read(data, images or data.parent / "images", log)
    return run_items(items, log, scorer, report, data)
