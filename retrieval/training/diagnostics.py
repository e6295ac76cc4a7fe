"""Does the trained encoder use the question? Shuffled-modality diagnostics for every comparison table (issue 10).

The trained encoder is evaluated again on the same test queries with

* ``shuffled_questions`` — each query's question replaced by the question of another query of the split (a fixed
  seeded permutation), the image and the positives kept;
* ``shuffled_images`` — each query's image replaced by another query's image, the question kept.

A model that uses the question loses most of its gain over the image-only baseline when the questions are
shuffled; one that ignores the question shows no drop (it is an image-only retriever with extra steps). The same
holds for images against the text-only baseline. :func:`verdict` says it in words under the table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from retrieval.formats import Query

SHUFFLED = {"question": "shuffled_questions", "image": "shuffled_images"}


def shuffle_field(queries: Sequence[Query], field: str, seed: int = 0) -> list[Query]:
    """Copies of ``queries`` whose ``field`` ("question" or "image") comes from another query (a seeded
    permutation without fixed points when there are two or more queries)."""
    n = len(queries)
    order = np.random.default_rng(seed).permutation(n)
    if n > 1:
        order = np.roll(order, 1)[np.argsort(order)]  # i -> the next element of a random cycle: no i maps to i
    return [dataclasses.replace(q, **{field: getattr(queries[int(j)], field)}) for q, j in zip(queries, order)]


def gain_kept(table: Mapping[str, Mapping[str, float]], name: str, shuffled: str, baseline: str,
              metric: str) -> float | None:
    """Share of ``name``'s gain over ``baseline`` that survives shuffling (1 = ignores that modality, 0 = all
    of the gain needs it); None when the rows are missing or there is no gain."""
    try:
        model, broken, base = table[name][metric], table[shuffled][metric], table[baseline][metric]
    except KeyError:
        return None
    gain = model - base
    return None if gain <= 1e-9 else (broken - base) / gain


def verdict(table: Mapping[str, Mapping[str, float]], metric: str = "mrr@10", name: str = "joint") -> list[str]:
    """Sentences under the comparison table: how much of the encoder's gain needs the question / the image, and
    how it compares with the generic reference."""
    lines = []
    for field, baseline, other in (("question", "clip_image", "image-only"), ("image", "clip_text", "text-only")):
        shuffled = f"{name}_{SHUFFLED[field]}"
        kept = gain_kept(table, name, shuffled, baseline, metric)
        if kept is None:
            continue
        use = "uses the" if kept <= 0.5 else "barely uses the" if kept <= 0.8 else "IGNORES the"
        lines.append(f"{name} {use} {field}: with {field}s shuffled its {metric} falls from {table[name][metric]:.4f} "
                     f"to {table[shuffled][metric]:.4f}, keeping {max(kept, 0.0):.0%} of its gain over the "
                     f"{other} baseline ({table[baseline][metric]:.4f})")
    if "generic_reference" in table and name in table:
        ratio = table[name][metric] / max(table["generic_reference"][metric], 1e-9)
        lines.append(f"{name} reaches {ratio:.2f}x the generic reference's {metric} "
                     f"({table['generic_reference'][metric]:.4f}), trained on the same inputs and budget")
    return lines


def diagnostic_queries(queries: Sequence[Query], seed: int = 0) -> dict[str, list[Query]]:
    """``{suffix: shuffled copies}`` for the two diagnostics."""
    return {suffix: shuffle_field(queries, field, seed) for field, suffix in SHUFFLED.items()}
