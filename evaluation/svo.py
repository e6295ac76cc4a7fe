"""SVO-Probes (Hendricks & Nematzadeh, "Probing image-language transformers for verb understanding", 2021;
deepmind/svo_probes): a sentence, a positive image and a negative image that differs in the subject, the verb
or the object.

Data: ``svo_probes.csv`` with columns ``sentence``, ``pos_image_id``, ``neg_image_id``, ``subj_neg``,
``verb_neg``, ``obj_neg`` (``True``/``False``). The images are published as URLs: download them yourself into
``--images`` named ``<image id>.<any image suffix>`` (a missing one is reported and its rows are skipped). An item
is right when the sentence scores strictly higher with the positive image (pairwise accuracy), reported overall
and per negative type.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.common import ImageRef, Item, RunLog, mean, read_csv_rows, run_items
from evaluation.scorer import Scorer

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
NEG_TYPES = {"subject": "subj_neg", "verb": "verb_neg", "object": "obj_neg"}


def image_index(images: Path) -> dict[str, Path]:
    found = {p.stem: p for p in sorted(images.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES} \
        if images.is_dir() else {}
    return found


def read(data: Path, images: Path, log: RunLog) -> list[Item]:
    index = image_index(images)
    items: list[Item] = []
    required = ["sentence", "pos_image_id", "neg_image_id", *NEG_TYPES.values()]
    for where, row in read_csv_rows(data, required, "SVO-Probes' svo_probes.csv"):
        log.rows += 1
        flags = {k: (row.get(c) or "").strip().lower() for k, c in NEG_TYPES.items()}
        if not row["sentence"].strip() or not row["pos_image_id"] or not row["neg_image_id"] \
                or any(v not in ("true", "false") for v in flags.values()):
            log.bad_row(where, "expected a sentence, two image ids and True/False negative flags")
            continue
        paths = [index.get(i, images / f"{i}.jpg") for i in (row["pos_image_id"].strip(), row["neg_image_id"].strip())]
        items.append(Item(where, [ImageRef(str(p)) for p in paths], [row["sentence"]],
                          {"neg": [k for k, v in flags.items() if v == "true"]}))
    return items


def report(items: Sequence[Item], sims: Sequence[np.ndarray]) -> tuple[dict[str, float], dict[str, Any]]:
    correct = [bool(s[0, 0] > s[1, 0]) for s in sims]
    metrics = {"accuracy": float(np.mean(correct))}
    counts = {}
    for kind in NEG_TYPES:
        values = [c for c, item in zip(correct, items) if kind in item.meta["neg"]]
        metrics[kind] = mean(values)
        counts[kind] = len(values)
    return metrics, {"items_per_negative": counts}


def run(scorer: Scorer, data: Path, images: Path | None = None, **_: Any) -> dict[str, Any]:
    log = RunLog()
    items = read(data, images or data.parent / "images", log)
    return run_items(items, log, scorer, report, data)
