"""VL-CheckList (Zhao et al., 2022; om-ai-lab/VL-CheckList): object, attribute and relation understanding, each
with sub-types (Object: location, size; Attribute: action, color, material, size, state; Relation: action,
spatial), from several source corpora.

Data: the release's ``data/`` folder: ``DATA/<Object|Attribute|Relation>/<...>/<subtype>.json``, each a list of
``[image path, {"POS": [captions], "NEG": [captions]}]``; image paths are relative to ``--images``. Each
(POS[k], NEG[k]) pair is one test: right when the positive scores strictly higher. Reported: accuracy per
sub-type (``Category/sub/path``), per category (mean over its sub-types) and overall (mean of the categories).
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

CATEGORIES = ("Object", "Attribute", "Relation")


def read(data: Path, images: Path, log: RunLog) -> list[Item]:
    files = [(c, p) for c in CATEGORIES for p in sorted((data / c).rglob("*.json"))] if data.is_dir() else []
    if not files:
        raise EvalDataError(f"{data}: expected VL-CheckList's data folder (Object/, Attribute/, Relation/ with "
                            "<subtype>.json files)")
    items: list[Item] = []
    for category, path in files:
        subtype = path.relative_to(data).with_suffix("").as_posix()
        rows = read_json_file(path, "a list of [image, {POS, NEG}]")
        for n, row in enumerate(rows if isinstance(rows, list) else []):
            log.rows += 1
            try:
                image, caps = row
                pairs = list(zip(caps["POS"], caps["NEG"]))
                if not isinstance(image, str) or not pairs:
                    raise ValueError("no image path or no POS/NEG pair")
            except (ValueError, TypeError, KeyError) as exc:
                log.bad_row(f"{path}[{n}]", f"expected [image, {{POS, NEG}}] ({exc})")
                continue
            for k, (pos, neg) in enumerate(pairs):
                items.append(Item(f"{subtype}/{n}.{k}", [ImageRef(str(images / image))], [str(pos), str(neg)],
                                  {"category": category, "subtype": subtype}))
    return items


def report(items: Sequence[Item], sims: Sequence[np.ndarray]) -> tuple[dict[str, float], dict[str, Any]]:
    by_sub: dict[str, list[bool]] = defaultdict(list)
    cat_of: dict[str, str] = {}
    for item, s in zip(items, sims):
        by_sub[item.meta["subtype"]].append(bool(s[0, 0] > s[0, 1]))
        cat_of[item.meta["subtype"]] = item.meta["category"]
    sub_acc = {k: float(np.mean(v)) for k, v in sorted(by_sub.items())}
    metrics = {c: mean([a for k, a in sub_acc.items() if cat_of[k] == c]) for c in CATEGORIES
               if c in cat_of.values()}
    metrics["overall"] = mean(list(metrics.values()))
    return metrics, {"per_subtype": sub_acc}


def run(scorer: Scorer, data: Path, images: Path | None = None, **_: Any) -> dict[str, Any]:
    log = RunLog()
    items = read(data, images or data, log)
    return run_items(items, log, scorer, report, data)
