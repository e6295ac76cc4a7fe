"""ARO (Yuksekgonul et al., "When and why vision-language models behave like bags-of-words", ICLR 2023;
mertyg/vision-language-models-are-bows): VG-Relation, VG-Attribution, COCO-Order, Flickr30k-Order.

* VG-Relation / VG-Attribution (``visual_genome_relation.json`` / ``visual_genome_attribution.json``: a list of
  ``{"image_path", "bbox_x", "bbox_y", "bbox_w", "bbox_h", "true_caption", "false_caption", "relation_name"}``
  or ``"attributes": [a, b]``; images under ``--images``, default ``DATA/../images``): the image is cropped to
  the box, the options are ``[false, true]``, and an item is right when the argmax is the true caption (a tie
  picks the first option, the false one, as ``np.argmax`` does in the reference). VG-Relation's headline is the
  macro accuracy over relations **excluding** the published list of symmetric relations
  (``evaluation/data/aro_symmetric_relations.json``, from the authors' replication notebook); VG-Attribution's is
  the macro accuracy over attribute pairs with **≥ 25** items.
* COCO-Order / Flickr30k-Order: each caption of a Karpathy test split (BLIP's ``coco_karpathy_test.json`` /
  ``flickr30k_test.json``) against its 4 perturbations (:mod:`evaluation.perturb`), all normalised like the
  reference's ``pre_caption`` (lower case, punctuation removed, at most 30 words); P@1 = the original wins
  (argmax at index 0). A JSON list of ``{"image", "caption_options": [original, ...]}`` is accepted as is.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.common import ImageRef, Item, RunLog, mean, read_json_file, run_items
from evaluation.scorer import Scorer

DATA_DIR = Path(__file__).parent / "data"
MIN_ATTRIBUTE_PAIR = 25


def symmetric_relations() -> set[str]:
    return set(read_json_file(DATA_DIR / "aro_symmetric_relations.json", "the shipped relation list"))


def _box(row: dict[str, Any]) -> tuple[float, float, float, float]:
    return tuple(float(row[k]) for k in ("bbox_x", "bbox_y", "bbox_w", "bbox_h"))  # type: ignore[return-value]


def read_vg(data: Path, images: Path, log: RunLog, kind: str) -> list[Item]:
    rows = read_json_file(data, f"ARO's visual_genome_{kind}.json (a list of test cases)")
    items: list[Item] = []
    for n, row in enumerate(rows if isinstance(rows, list) else []):
        log.rows += 1
        try:
            group = row["relation_name"] if kind == "relation" else "_".join(row["attributes"][:2])
            if len(row.get("attributes", [0, 0])) < 2:
                raise KeyError("attributes (two of them)")
            items.append(Item(str(n), [ImageRef(str(images / row["image_path"]), _box(row))],
                              [str(row["false_caption"]), str(row["true_caption"])], {"group": str(group)}))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            log.bad_row(f"{data}[{n}]", f"missing or bad field {exc}")
    if not isinstance(rows, list):
        log.bad_row(str(data), "expected a JSON list")
    return items


def binary_correct(sims: Sequence[np.ndarray]) -> np.ndarray:
    """Per item with options [false, true]: argmax == 1 (ties go to the false option, index 0)."""
    return np.array([int(np.argmax(s[0])) == 1 for s in sims])


def per_group(items: Sequence[Item], correct: np.ndarray) -> dict[str, tuple[float, int]]:
    groups: dict[str, list[bool]] = defaultdict(list)
    for item, c in zip(items, correct):
        groups[item.meta["group"]].append(bool(c))
    return {g: (float(np.mean(v)), len(v)) for g, v in sorted(groups.items())}


def report_relation(items: Sequence[Item], sims: Sequence[np.ndarray],
                    exclude: set[str] | None = None) -> tuple[dict[str, float], dict[str, Any]]:
    exclude = symmetric_relations() if exclude is None else exclude
    correct = binary_correct(sims)
    groups = per_group(items, correct)
    kept = {g: v for g, v in groups.items() if g not in exclude}
    return ({"macro_accuracy": mean([a for a, _ in kept.values()]), "accuracy": float(correct.mean()),
             "relations": float(len(kept))},
            {"per_relation": {g: {"accuracy": a, "count": n, "excluded": g in exclude}
                              for g, (a, n) in groups.items()}})


def report_attribution(items: Sequence[Item], sims: Sequence[np.ndarray],
                       min_items: int = MIN_ATTRIBUTE_PAIR) -> tuple[dict[str, float], dict[str, Any]]:
    correct = binary_correct(sims)
    groups = per_group(items, correct)
    kept = {g: v for g, v in groups.items() if v[1] >= min_items}
    return ({"macro_accuracy": mean([a for a, _ in kept.values()]), "accuracy": float(correct.mean()),
             "attribute_pairs": float(len(kept))},
            {"per_pair": {g: {"accuracy": a, "count": n, "kept": n >= min_items} for g, (a, n) in groups.items()}})


def pre_caption(caption: str, max_words: int = 30) -> str:
    """Lower case, punctuation to spaces (apostrophes dropped), whitespace collapsed, at most ``max_words``."""
    caption = re.sub(r"([.!\"()*#:;~])", " ", caption.lower())
    caption = re.sub(r"\s{2,}", " ", caption).rstrip("\n").strip(" ")
    return " ".join(caption.split(" ")[:max_words])


def read_order(data: Path, images: Path, log: RunLog, seed: int = 0, tagger: Any = None) -> list[Item]:
    from evaluation.perturb import ORDER_PERTURBATIONS, Perturber

    rows = read_json_file(data, "a Karpathy test split (list of {image, caption}) or {image, caption_options}")
    perturber = Perturber(tagger=tagger, seed=seed)
    items: list[Item] = []
    for n, row in enumerate(rows if isinstance(rows, list) else []):
        if not isinstance(row, dict) or not isinstance(row.get("image"), str):
            log.rows += 1
            log.bad_row(f"{data}[{n}]", 'expected {"image": str, "caption": [...]}')
            continue
        if isinstance(row.get("caption_options"), list) and len(row["caption_options"]) >= 2:
            log.rows += 1
            items.append(Item(str(n), [ImageRef(str(images / row["image"]))], [str(c) for c in row["caption_options"]]))
            continue
        captions = row.get("caption")
        captions = [captions] if isinstance(captions, str) else captions
        if not isinstance(captions, list) or not captions:
            log.rows += 1
            log.bad_row(f"{data}[{n}]", "no caption list")
            continue
        for k, caption in enumerate(captions):
            log.rows += 1
            options = [pre_caption(caption)] + [pre_caption(perturber.apply(name, caption))
                                                for name in ORDER_PERTURBATIONS]
            items.append(Item(f"{n}.{k}", [ImageRef(str(images / row["image"]))], options))
    return items


def report_order(items: Sequence[Item], sims: Sequence[np.ndarray]) -> tuple[dict[str, float], dict[str, Any]]:
    correct = [int(np.argmax(s[0])) == 0 for s in sims]
    return {"precision@1": float(np.mean(correct))}, {}


def run_relation(scorer: Scorer, data: Path, images: Path | None = None, **_: Any) -> dict[str, Any]:
    log = RunLog()
    items = read_vg(data, images or data.parent / "images", log, "relation")
    return run_items(items, log, scorer, report_relation, data)


def run_attribution(scorer: Scorer, data: Path, images: Path | None = None, **_: Any) -> dict[str, Any]:
    log = RunLog()
    items = read_vg(data, images or data.parent / "images", log, "attribution")
    return run_items(items, log, scorer, report_attribution, data)


def run_order(scorer: Scorer, data: Path, images: Path | None = None, seed: int = 0, tagger: Any = None,
              **_: Any) -> dict[str, Any]:
    log = RunLog()
    items = read_order(data, images or data.parent, log, seed=seed, tagger=tagger)
    return run_items(items, log, scorer, report_order, data)
