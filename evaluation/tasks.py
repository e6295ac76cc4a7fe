"""The task registry: a dict literal of lazy builders (name -> the task's ``run``), as DPR's
``BIENCODER_INITIALIZERS``; a task module is imported only when it is asked for.

Every ``run(scorer, data, images=None, **options) -> {"metrics", "counts", "details"}``; :func:`run_task` adds the
CLIP_benchmark-like header (task, model, precision, dataset path) — see :mod:`evaluation.results`.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from evaluation.scorer import Scorer
from foundations.errors import UsageError

# name -> (module, function, one line for --help)
TASKS: dict[str, tuple[str, str, str]] = {
    "retrieval": ("evaluation.retrieval", "run", "zero-shot image<->text retrieval, Karpathy JSON (R@1/5/10)"),
    "classification": ("evaluation.classification", "run", "zero-shot classification (acc1/acc5/mean recall)"),
    "aro_vg_relation": ("evaluation.aro", "run_relation", "ARO VG-Relation (macro acc., symmetric excluded)"),
    "aro_vg_attribution": ("evaluation.aro", "run_attribution", "ARO VG-Attribution (macro acc., pairs >= 25)"),
    "aro_coco_order": ("evaluation.aro", "run_order", "ARO COCO-Order (P@1 vs 4 perturbations)"),
    "aro_flickr30k_order": ("evaluation.aro", "run_order", "ARO Flickr30k-Order (P@1 vs 4 perturbations)"),
    "sugar_crepe": ("evaluation.sugar_crepe", "run", "SugarCREPE, 7 categories + micro average"),
    "crepe": ("evaluation.crepe", "run", "CREPE hard negatives, R@1/3/5/10 (true caption at index 0)"),
    "svo_probes": ("evaluation.svo", "run", "SVO-Probes pairwise accuracy per subject/verb/object"),
    "winoground": ("evaluation.winoground", "run", "Winoground text / image / group scores"),
    "vl_checklist": ("evaluation.vl_checklist", "run", "VL-CheckList object / attribute / relation"),
}


def task_runner(name: str) -> Callable[..., dict[str, Any]]:
    if name not in TASKS:
        raise UsageError(f"unknown task {name!r}; one of: {', '.join(TASKS)}")
    module, fn, _ = TASKS[name]
    return getattr(importlib.import_module(module), fn)


def run_task(name: str, scorer: Scorer, data: Path, images: Path | None = None, **options: Any) -> dict[str, Any]:
    """One results record (see :data:`evaluation.results.RESULT_SCHEMA`)."""
    start = time.perf_counter()
    out = task_runner(name)(scorer, Path(data), images=Path(images) if images else None, **options)
    described = scorer.describe()
    return {"format_version": 1, "task": name, "dataset": str(data), "images": str(images) if images else None,
            "model": described["model"], "precision": described["precision"], "scorer": described,
            "metrics": out["metrics"], "counts": out["counts"], "details": out.get("details", {}),
            "seconds": round(time.perf_counter() - start, 3)}
