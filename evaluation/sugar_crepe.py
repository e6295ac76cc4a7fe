"""SugarCREPE (Hsieh et al., NeurIPS 2023 Datasets & Benchmarks; RAIVNLab/sugar-crepe): 7 hard-negative
categories over COCO val2017 — replace_obj, replace_att, replace_rel, swap_obj, swap_att, add_obj, add_att.

Data: the folder of the release's ``data/`` (``replace_obj.json`` ... ``add_att.json``; any subset) or one such
file; each is ``{id: {"filename", "caption", "negative_caption"}}`` with **non-contiguous** string ids (never
index it as a list). Images: ``--images`` (COCO ``val2017/``). An item is right when the positive caption scores
strictly higher than the negative one. Reported: accuracy per category and the **micro** average over every
scored item of every category given (plus the macro average over categories, labelled as such).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.common import (
    EvalDataError,
    ImageRef,
    Item,
    RunLog,
    mean,
    read_json_file,
    run_items,
)
from evaluation.scorer import Scorer

CATEGORIES = ("replace_obj", "replace_att", "replace_rel", "swap_obj", "swap_att", "add_obj", "add_att")


def category_files(data: Path) -> list[tuple[str, Path]]:
    if data.is_file():
        return [(data.stem, data)]
    found = [(c, data / f"{c}.json") for c in CATEGORIES if (data / f"{c}.json").is_file()]
    if not found:
        raise EvalDataError(f"{data}: expected SugarCREPE's category files ({', '.join(c + '.json' for c in CATEGORIES)})")
    return found


def read(data: Path, images: Path, log: RunLog) -> list[Item]:
    items: list[Item] = []
    for category, path in category_files(data):
        ann = read_json_file(path, "{id: {filename, caption, negative_caption}}")
        if not isinstance(ann, dict):
            raise EvalDataError(f"{path}: expected a JSON object keyed by id")
        for key, row in ann.items():
            log.rows += 1
            try:
                items.append(Item(f"{category}/{key}", [ImageRef(str(images / row["filename"]))],
                                  [str(row["caption"]), str(row["negative_caption"])], {"category": category}))
            except (KeyError, TypeError) as exc:
                log.bad_row(f"{path}[{key!r}]", f"missing field {exc}")
    return items


def report(items: Sequence[Item], sims: Sequence[np.ndarray]) -> tuple[dict[str, float], dict[str, Any]]:
    by_cat: dict[str, list[bool]] = defaultdict(list)
    for item, s in zip(items, sims):
        by_cat[item.meta["category"]].append(bool(s[0, 0] > s[0, 1]))
    metrics = {c: float(np.mean(by_cat[c])) for c in CATEGORIES if c in by_cat}
    every = [v for c in by_cat.values() for v in c]
    metrics["micro_average"] = float(np.mean(every))
    metrics["macro_average"] = mean([metrics[c] for c in by_cat])
    return metrics, {"items_per_category": {c: len(v) for c, v in by_cat.items()}}


def run(scorer: Scorer, data: Path, images: Path | None = None, **_: Any) -> dict[str, Any]:
    log = RunLog()
    items = read(data, images or (data if data.is_dir() else data.parent), log)
    return run_items(items, log, scorer, report, data)
