"""Evaluation-suite tasks inside a CLIP-family training run: at every evaluation the model is also scored on
compositional benchmarks of :mod:`evaluation` (SugarCREPE, ARO, Winoground, ...), so the trade-off between
composition and retrieval shows while it trains (NegCLIP moves one against the other).

* ``--eval-tasks NAME=DATA`` or ``NAME=DATA@IMAGES`` (:func:`parse_eval_tasks`; ``NAME`` from
  :data:`evaluation.tasks.TASKS`) — each evaluation runs :func:`evaluation.tasks.run_task` with the training model
  (:class:`evaluation.scorer.EncoderScorer`: the model's own preprocessing and tokenizer, fp32) and logs its
  metrics as ``NAME/metric`` in the ``dev`` record (``log.jsonl``, TensorBoard, ``curves.png``; any of them can be
  ``--select-metric``);
* :func:`draw_tradeoff` — ``OUT/tradeoff.png``: each task's headline metric (:data:`HEADLINE`) against the
  retrieval metric (mean recall), one point per evaluation, joined in step order and labelled with the step.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foundations.errors import ConfigError, UserError
from foundations.io import atomic_write_bytes

logger = logging.getLogger(__name__)

TRADEOFF_NAME = "tradeoff.png"
HEADLINE = {"sugar_crepe": "micro_average", "aro_vg_relation": "macro_accuracy",
            "aro_vg_attribution": "macro_accuracy", "aro_coco_order": "precision@1",
            "aro_flickr30k_order": "precision@1", "winoground": "group", "vl_checklist": "overall"}


@dataclass(frozen=True)
class EvalTaskSpec:
    name: str
    data: Path
    images: Path | None = None


def parse_eval_tasks(specs: Sequence[str], check_paths: bool = True) -> list[EvalTaskSpec]:
    """``NAME=DATA`` / ``NAME=DATA@IMAGES`` -> specs. A malformed spec or an unknown task is a ConfigError (a flag
    error, before anything runs); with ``check_paths`` a missing path is one error line naming it."""
    from evaluation.tasks import TASKS

    out = []
    for spec in specs:
        name, sep, rest = spec.partition("=")
        if not sep or not rest:
            raise ConfigError(f"--eval-tasks {spec!r}: expected NAME=DATA or NAME=DATA@IMAGES")
        if name not in TASKS:
            raise ConfigError(f"--eval-tasks {spec!r}: unknown task {name!r}; one of {', '.join(TASKS)}")
        data, _, images = rest.partition("@")
        for path in [data] + ([images] if images else []):
            if check_paths and not Path(path).exists():
                raise UserError(f"--eval-tasks {spec!r}: {path}: no such file or folder")
        out.append(EvalTaskSpec(name, Path(data), Path(images) if images else None))
    return out


def run_eval_tasks(model: Any, specs: Sequence[EvalTaskSpec], batch_size: int = 64) -> dict[str, float]:
    """``{"NAME/metric": value}`` of every task, with ``model`` (``encode_image`` of PIL images, ``encode_text`` of
    strings) as it is now."""
    from evaluation.scorer import EncoderScorer
    from evaluation.tasks import run_task

    scorer = EncoderScorer(model, "training model", "fp32", batch_size)
    out: dict[str, float] = {}
    for spec in specs:
        record = run_task(spec.name, scorer, spec.data, spec.images)
        out.update({f"{spec.name}/{k}": float(v) for k, v in record["metrics"].items()})
    return out


def headline_keys(metrics: Sequence[str]) -> list[str]:
    """The ``NAME/metric`` keys to plot against retrieval: each task's headline metric (else its first one)."""
    tasks: dict[str, list[str]] = {}
    for key in metrics:
        if "/" in key:
            task, metric = key.split("/", 1)
            tasks.setdefault(task, []).append(metric)
    return [f"{task}/{HEADLINE[task] if HEADLINE.get(task) in names else names[0]}" for task, names in tasks.items()]


def draw_tradeoff(records: Sequence[dict[str, Any]], path: Path, x: str = "mean_recall") -> Path | None:
    """``path`` (PNG, atomically): composition headline metrics against ``x`` over the ``dev`` records (the last
    record of a step wins); None when there is nothing to draw."""
    from matplotlib.figure import Figure

    dev: dict[int, dict[str, Any]] = {int(r["step"]): r for r in records if r.get("kind") == "dev"}
    steps = sorted(s for s in dev if x in dev[s])
    keys = headline_keys([k for s in steps for k in dev[s]])
    if not steps or not keys:
        return None
    fig = Figure(figsize=(6.5, 5), layout="constrained")
    ax = fig.subplots()
    for key in keys:
        points = [(dev[s][x], dev[s][key], s) for s in steps if key in dev[s]]
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=key)
        for px, py, step in points:
            ax.annotate(str(step), (px, py), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(xlabel=f"retrieval: {x}", ylabel="composition (headline metric)",
           title="composition vs retrieval at each evaluation (labels: step)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    atomic_write_bytes(path, buffer.getvalue())
    return path
