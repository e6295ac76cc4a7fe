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

    python retrieval/fusion.py fit --qrels dev.jsonl --runs text.trec image.trec --metric mrr@10 --out w.json
    python retrieval/fusion.py apply --runs text.trec image.trec --weights w.json --out fused.trec [--k 100]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.formats import Qrels, Run, exit_on_user_error, load_qrels, read_trec_run, write_trec_run
from retrieval.metrics import canonical_metric, evaluate_run

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
        raise ValueError(f"fusion needs at least 2 runs, got {len(runs)}")
    base = default_minimum(runs) if defmin else [dict(r) for r in runs]
    return [global_zscore(r) for r in base]


def weighted_sum(prepared: Sequence[Run], weights: Sequence[float]) -> Run:
    """Σ_i w_i · s_i(d); a document a run does not score contributes 0 for that run (as ranx's ``wsum``)."""
    if len(weights) != len(prepared):
        raise ValueError(f"{len(weights)} weights for {len(prepared)} runs")
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
                 step: float = 0.1, defmin: bool = True) -> dict[str, Any]:
    """Search weights on a dev split with ``ranx.optimize_fusion`` over our normalised runs."""
    from ranx import Qrels as RanxQrels, Run as RanxRun, optimize_fusion

    metric = canonical_metric(metric)
    prepared = prepare(runs, defmin=defmin)
    judged = {q: d for q, d in qrels.items() if d}
    queries = sorted(set(judged) & set().union(*(set(r) for r in prepared)))
    if not queries:
        raise ValueError("no judged query appears in the runs: nothing to tune on")
    if len(queries) < len(judged):
        logger.warning("%d judged queries have no results in any run; tuning on the other %d",
                       len(judged) - len(queries), len(queries))
    ranx_runs = []
    for i, run in enumerate(prepared):
        padded = {}
        for q in queries:  # ranx needs every query in every run: a run without results adds 0 (as weighted_sum)
            others = set().union(*(set(r.get(q, {})) for r in prepared))
            padded[q] = run.get(q) or {d: 0.0 for d in sorted(others)}
        ranx_runs.append(RanxRun(padded, name=f"run_{i}"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        best, report = optimize_fusion(qrels=RanxQrels({q: judged[q] for q in queries}), runs=ranx_runs, norm=None,
                                       method="wsum", metric=metric, step=step, show_progress=False,
                                       return_optimization_report=True)
    weights = [float(w) for w in best["weights"]]
    return {"weights": weights, "metric": metric, "dev_score": float(max(report.results)), "step": step,
            "defmin": defmin, "normalisation": "global z-score over all scores of each run (ViQuAE gzmuv)",
            "trials": len(report.results), "dev_queries": len(queries)}


# -- CLI -------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="tune fusion weights on a dev split")
    fit.add_argument("--qrels", type=Path, required=True, help="dev queries .jsonl or TREC qrels")
    fit.add_argument("--metric", default="mrr@10")
    fit.add_argument("--step", type=float, default=0.1, help="weight grid step (weights sum to 1)")
    app = sub.add_parser("apply", help="fuse runs with given or tuned weights")
    app.add_argument("--weights", help="weights.json from 'fit', or comma-separated numbers")
    app.add_argument("--out", type=Path, required=True, help="fused TREC run")
    app.add_argument("--k", type=int, default=100, help="results kept per query")
    app.add_argument("--tag", default="fusion")
    for sp in (fit, app):
        sp.add_argument("--runs", type=Path, nargs="+", required=True)
        sp.add_argument("--no-defmin", action="store_true", help="do not give missing documents the run minimum")
    fit.add_argument("--out", type=Path, help="write the tuned weights (JSON)")
    return p.parse_args(argv)


def _weights(spec: str | None, runs: Sequence[Path]) -> list[float]:
    if spec is None:
        raise ValueError("--weights is required: a weights.json from 'fit' or numbers like 0.3,0.7")
    path = Path(spec)
    if path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or "weights" not in data:
            raise ValueError(f"{path}: expected a JSON object with 'weights' (written by 'fusion.py fit')")
        if data.get("runs") and [Path(r).name for r in data["runs"]] != [r.name for r in runs]:
            logger.warning("%s was tuned for runs %s; applying to %s", path, data["runs"], [str(r) for r in runs])
        return [float(w) for w in data["weights"]]
    try:
        return [float(w) for w in spec.split(",")]
    except ValueError:
        raise ValueError(f"--weights {spec!r}: not a file and not comma-separated numbers") from None


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    runs = [read_trec_run(p) for p in args.runs]
    if args.command == "fit":
        qrels = load_qrels(args.qrels)
        result = tune_weights(runs, qrels, metric=args.metric, step=args.step, defmin=not args.no_defmin)
        metric = result["metric"]
        singles = {p.name: evaluate_run(r, qrels, [metric])[metric] for p, r in zip(args.runs, runs)}
        result = {**result, "runs": [str(p) for p in args.runs], "single_run_scores": singles}
        for name, score in singles.items():
            print(f"{name:<32} {result['metric']} {score:.4f}")
        print(f"{'fusion ' + str(result['weights']):<32} {result['metric']} {result['dev_score']:.4f}")
        if args.out:
            args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        return 0
    weights = _weights(args.weights, args.runs)
    fused = fuse(runs, weights, defmin=not args.no_defmin, k=args.k)
    write_trec_run(args.out, fused, tag=args.tag)
    print(f"wrote {args.out}: {len(fused)} queries fused with weights {weights}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
