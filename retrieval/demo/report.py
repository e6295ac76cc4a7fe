"""Small printing helpers of the demo (``vlt5r demo report`` / ``vlt5r demo example``): the test-split comparison
table and the example query."""

from __future__ import annotations

from pathlib import Path

from foundations.errors import UserError
from foundations.jsonl import iter_jsonl

ROWS = {"clip_image": "CLIP image-only (query image fc vs KB)", "clip_text": "CLIP text-only (question vs KB)",
        "joint_untrained": "joint encoder, before training", "joint": "joint encoder, trained",
        "joint_shuffled_questions": "  ... with questions shuffled", "joint_shuffled_images": "  ... with images shuffled",
        "generic_reference": "generic reference (same inputs, budget)"}
GOAL_MRR, GOAL_RATIO = 0.95, 2.0


def comparison_table(comparison: dict[str, dict[str, float]]) -> str:
    metrics = list(next(iter(comparison.values())))
    lines = [f"{'run':<42}" + "".join(f"{m:>12}" for m in metrics)]
    lines += [f"{ROWS.get(name, name):<42}" + "".join(f"{row[m]:>12.4f}" for m in metrics)
              for name, row in comparison.items()]
    return "\n".join(lines)


def verdict(comparison: dict[str, dict[str, float]]) -> str:
    """The demo's goal line, then the diagnostics' sentences (:func:`retrieval.training.diagnostics.verdict`)."""
    from retrieval.training.diagnostics import verdict as diagnostics_verdict

    return "\n".join([goal(comparison), *diagnostics_verdict(comparison)])


def goal(comparison: dict[str, dict[str, float]]) -> str:
    """One line: does the trained joint encoder reach the demo's goals (MRR@10 >= 0.8, >= 2x the best baseline)?"""
    joint = comparison["joint"]["mrr@10"]
    best = max(comparison["clip_image"]["mrr@10"], comparison["clip_text"]["mrr@10"])
    ok = joint >= GOAL_MRR and joint >= GOAL_RATIO * best
    return (f"joint MRR@10 {joint:.3f} = {joint / max(best, 1e-9):.1f}x the best CLIP baseline ({best:.3f}): "
            f"{'goal met' if ok else 'GOAL MISSED'} (>= {GOAL_MRR} and >= {GOAL_RATIO}x)")


def example(queries: Path) -> str:
    """The first test query asked by colour (it needs the image to tell the shape): question, image, answer."""
    records = [obj for _, obj in iter_jsonl(queries) if isinstance(obj, dict)]  # a bad line: one error naming it
    record = next((r for r in records if r.get("kind") == "color"), records[0] if records else None)
    try:
        return f"{record['question']}\timages/scenes/{record['image']}.png\t{record['positives'][0]}"  # type: ignore
    except (TypeError, KeyError, IndexError):
        raise UserError(f"{queries}: expected demo queries {{question, image, positives, kind}}") from None
