"""Late fusion of runs, ViQuAE-style (Lerner et al., SIGIR 2022; PaulLerner/ViQuAE ``meerqat/ir/fuse.py``).

Facts followed (read from meerqat's ``fuse.py`` and its experiment configs, which use ``norm: gzmuv`` +
``defmin: true`` + ranx ``wsum``):

1. *default minimum*: per query, the candidate set is the union of every run's documents; a run that did not
   retrieve a document gives it that run's minimum **raw** score for that query. (A run with no results for a query
   adds nothing there.)
2. *global z-score* (``gzmuv``): each run's scores become ``(s - mean) / max(std, 1e-9)`` with mean and population
   std over **all** scores of the run, all queries together — after step 1, so the filled scores count.
3. weighted sum of the normalised scores; weights are searched on a dev split with ``ranx.optimize_fusion``
   (``method="wsum"``, ``norm=None``: steps 1–2 are done here). ranx's own ``zmuv`` norm is per query and its
   ``wsum`` treats a missing document as 0, so ranx alone does not reproduce ViQuAE; we only use its weight search
   (a grid of weights in [0, 1] by ``step`` whose sum is exactly 1.0 in floating point).

    vlt5r fuse fit --qrels dev.jsonl --runs text.trec image.trec --metric mrr@10 --out w.json
    vlt5r fuse apply --runs text.trec image.trec --weights w.json --out fused.trec [--k 100]
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from retrieval.formats import Qrels, Run
from retrieval.metrics import canonical_metric, evaluate_run
from foundations.errors import UserError

logger = logging.getLogger(__name__)


def default_minimum(runs: Sequence[Mapping[str, Mapping[str, float]]]) -> list[Run]:
    """Copies of ``runs`` where each run scores every document of the per-query union (missing → its minimum)."""
    union: dict[str, set[str]] = {}
    for run in runs:
        for qid, docs in run.items():
            union.setdefault(qid, set()).update(docs)
    filled: list[Run] = []
    for run in runs:
        out: Run = {}
        for qid, docs in run.items():
            if not docs:
                continue
            low = min(docs.values())
            out[qid] = {d: float(docs.get(d, low)) for d in sorted(union[qid])}
        filled.append(out)
    return filled


def global_zscore(run: Mapping[str, Mapping[str, float]]) -> Run:
    """``(s - mean) / max(std, 1e-9)`` with mean/std over all scores of the run (ViQuAE ``gzmuv``)."""
    values = np.fromiter((s for docs in run.values() for s in docs.values()), dtype=np.float64)
    if values.size == 0:
        return {}
    mean, std = float(values.mean()), max(float(values.std()), 1e-9)
    return {qid: {d: (s - mean) / std for d, s in docs.items()} for qid, docs in run.items()}


def prepare(runs: Sequence[Mapping[str, Mapping[str, float]]], *, defmin: bool = True) -> list[Run]:
    """Steps 1–2: default minimum (optional), then global z-score of each run."""
    if len(runs) < 2:
        raise UserError(f"fusion needs at least 2 runs, got {len(runs)}")
    empty = [i for i, run in enumerate(runs) if not any(run.values())]
    if empty:
        raise UserError(f"run #{empty[0]} holds no results: fusing it would only rescale the others")
    base = default_minimum(runs) if defmin else [dict(r) for r in runs]
    return [global_zscore(r) for r in base]


def weighted_sum(prepared: Sequence[Run], weights: Sequence[float]) -> Run:
    """Σ_i w_i · s_i(d); a document a run does not score contributes 0 for that run (as ranx's ``wsum``)."""
    if len(weights) != len(prepared):
        raise UserError(f"{len(weights)} weights for {len(prepared)} runs")
    fused: Run = {}
    for run, w in zip(prepared, weights):
        for qid, docs in run.items():
            target = fused.setdefault(qid, {})
            for d, s in docs.items():
                target[d] = target.get(d, 0.0) + float(w) * s
    return fused


def fuse(runs: Sequence[Mapping[str, Mapping[str, float]]], weights: Sequence[float], *, defmin: bool = True,
         k: int | None = None) -> Run:
    """ViQuAE late fusion of ``runs`` with ``weights``; ``k`` keeps each query's top-k."""
    fused = weighted_sum(prepare(runs, defmin=defmin), weights)
    if k is not None:
        fused = {q: dict(sorted(docs.items(), key=lambda kv: (-kv[1], kv[0]))[:k]) for q, docs in fused.items()}
    return fused


def tune_weights(runs: Sequence[Mapping[str, Mapping[str, float]]], qrels: Qrels, *, metric: str = "mrr@10",
                 step: float = 0.1, defmin: bool = True, names: Sequence[str] | None = None) -> dict[str, Any]:
    """Search weights on a dev split with ``ranx.optimize_fusion`` over our normalised runs.

    The result carries ``single_run_scores`` (``{name: score}``, ``names`` default ``run_0``, ``run_1``, ...) and the
    fused ``dev_score``, **both on the same queries** (``dev_queries``: the judged queries some run answers), so a
    table of them compares like with like. ``dev_score`` is recomputed with :func:`weighted_sum` and
    :func:`retrieval.metrics.evaluate_run` and checked against ranx's best trial."""
    from ranx import Qrels as RanxQrels, Run as RanxRun, optimize_fusion

    metric = canonical_metric(metric)
    names = [f"run_{i}" for i in range(len(runs))] if names is None else [str(n) for n in names]
    if len(names) != len(runs) or len(set(names)) != len(names):
        raise UserError(f"need {len(runs)} distinct run names, got {names}")
    prepared = prepare(runs, defmin=defmin)
    judged = {q: d for q, d in qrels.items() if d}
    queries = sorted(set(judged) & set().union(*(set(r) for r in prepared)))
    if not queries:
        raise UserError("no judged query appears in the runs: nothing to tune on")
    if len(queries) < len(judged):
        logger.warning("%d judged queries have no results in any run; tuning and scoring on the other %d",
                       len(judged) - len(queries), len(queries))
    dev_qrels = {q: judged[q] for q in queries}
    ranx_runs = []
    for i, run in enumerate(prepared):
        padded = {}
        for q in queries:  # ranx needs every query in every run: a run without results adds 0 (as weighted_sum)
            others = set().union(*(set(r.get(q, {})) for r in prepared))
            padded[q] = run.get(q) or {d: 0.0 for d in sorted(others)}
        ranx_runs.append(RanxRun(padded, name=f"run_{i}"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        best, report = optimize_fusion(qrels=RanxQrels(dev_qrels), runs=ranx_runs, norm=None,
                                       method="wsum", metric=metric, step=step, show_progress=False,
                                       return_optimization_report=True)
    weights = [float(w) for w in best["weights"]]
    fused = weighted_sum(prepared, weights)
    dev_score = float(evaluate_run({q: fused[q] for q in queries if q in fused}, dev_qrels, [metric])[metric])
    if abs(dev_score - float(max(report.results))) > 1e-9:
        logger.warning("fused %s %.6f differs from ranx's best trial %.6f (ties ordered differently)", metric,
                       dev_score, float(max(report.results)))
    singles = {name: float(evaluate_run({q: dict(run[q]) for q in queries if q in run}, dev_qrels, [metric],
                                        name=name)[metric])
               for name, run in zip(names, runs)}
    return {"weights": weights, "metric": metric, "dev_score": dev_score, "single_run_scores": singles,
            "runs": names, "step": step, "defmin": defmin,
            "normalisation": "global z-score over all scores of each run (ViQuAE gzmuv)",
            "trials": len(report.results), "dev_queries": len(queries), "judged_queries": len(judged)}


# -- CLI -------------------------------------------------------------------------------------------------------


if __name__ == "__main__":  # the old entry point: the same as `vlt5r fuse`
    from vlt5r.drivers.fuse import main

    sys.exit(main())
