"""Retrieval metrics through ranx (Bassani, ECIR 2022): MRR@k, P@k, R@k, Hit@k, nDCG@k, MAP@k.

Runs and qrels are ranx-compatible dicts (``{qid: {docid: score}}`` / ``{qid: {docid: rel}}``). Every query of the
qrels counts: a query the run does not answer scores 0 (``make_comparable=True``), queries the qrels do not know are
left out. nDCG is ranx's ``ndcg`` (Järvelin & Kekäläinen: gain = rel, discount log2(rank + 1)). Several runs are
compared with ranx's paired significance tests (``student`` two-sided paired t-test, ``fisher`` randomisation,
``tukey`` HSD).
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


from retrieval.formats import Qrels, Run

logger = logging.getLogger(__name__)

ALIASES = {"mrr": "mrr", "rr": "mrr", "p": "precision", "precision": "precision", "r": "recall", "recall": "recall",
           "hit": "hit_rate", "hits": "hit_rate", "hit_rate": "hit_rate", "success": "hit_rate", "ndcg": "ndcg",
           "map": "map"}
STAT_TESTS = ("student", "fisher", "tukey")


def canonical_metric(name: str) -> str:
    """``'R@10'`` → ``'recall@10'``, ``'hit@1'`` → ``'hit_rate@1'``; unknown names raise a one-line ValueError."""
    match = re.fullmatch(r"([A-Za-z_]+)(?:@(\d+))?", name.strip())
    base = ALIASES.get(match.group(1).lower()) if match else None
    if base is None:
        raise ValueError(f"unknown metric {name!r}; expected one of {sorted(set(ALIASES))} with an optional @k, "
                         "e.g. mrr@10 recall@1 ndcg@10")
    if match.group(2) is not None and int(match.group(2)) < 1:
        raise ValueError(f"metric {name!r}: k must be ≥ 1")
    return base + (f"@{match.group(2)}" if match.group(2) else "")


def canonical_metrics(names: Iterable[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        metric = canonical_metric(name)
        if metric not in out:
            out.append(metric)
    if not out:
        raise ValueError("no metrics requested")
    return out


def _ranx_inputs(run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]],
                 name: str) -> tuple[Any, Any]:
    from ranx import Qrels as RanxQrels, Run as RanxRun  # numba-compiled; imported on first use (~2 s)

    scored = {q: {d: int(r) for d, r in docs.items() if int(r) > 0} for q, docs in qrels.items()}
    scored = {q: docs for q, docs in scored.items() if docs}
    if not scored:
        raise ValueError("the qrels hold no relevant documents: nothing to evaluate")
    missing = sum(1 for q in scored if not run.get(q))
    if missing:
        logger.warning("run %s answers %d of %d judged queries; the others score 0", name, len(scored) - missing,
                       len(scored))
    ranx_run = RanxRun({q: {d: float(s) for d, s in docs.items()} for q, docs in run.items() if docs}, name=name)
    return RanxQrels(scored), ranx_run


def evaluate_run(run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]],
                 metrics: Sequence[str], *, per_query: bool = False,
                 name: str = "run") -> dict[str, float] | dict[str, dict[str, float]]:
    """Mean of each metric over the judged queries, or with ``per_query`` ``{metric: {qid: value}}``."""
    from ranx import evaluate

    names = canonical_metrics(metrics)
    ranx_qrels, ranx_run = _ranx_inputs(run, qrels, name)
    ranx_run = ranx_run.make_comparable(ranx_qrels)  # judged queries only; unanswered ones get empty results
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numba's uint64→int64 cast notes inside ranx
        means = evaluate(ranx_qrels, ranx_run, names, save_results_in_run=True)
    if len(names) == 1:
        means = {names[0]: means}
    if per_query:
        return {m: {q: float(v) for q, v in ranx_run.scores[m].items()} for m in names}
    return {m: float(v) for m, v in means.items()}


def compare_runs(runs: Mapping[str, Run], qrels: Qrels, metrics: Sequence[str], *, stat_test: str = "student",
                 max_p: float = 0.05, seed: int = 42) -> dict[str, Any]:
    """Side-by-side means and pairwise significance (ranx.compare). Returns a JSON-ready dict with ``table``."""
    from ranx import compare

    if stat_test not in STAT_TESTS:
        raise ValueError(f"unknown significance test {stat_test!r}; expected one of {STAT_TESTS}")
    names = canonical_metrics(metrics)
    ranx_runs = []
    ranx_qrels = None
    for run_name, run in runs.items():
        ranx_qrels, ranx_run = _ranx_inputs(run, qrels, run_name)
        ranx_runs.append(ranx_run)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = compare(ranx_qrels, ranx_runs, names, stat_test=stat_test, max_p=max_p, random_seed=seed,
                         make_comparable=True, rounding_digits=4)
    raw = report.to_dict()
    return {
        "metrics": names,
        "queries": len(ranx_qrels.keys()),
        "stat_test": stat_test,
        "max_p": max_p,
        "means": {n: {m: float(raw[n]["scores"][m]) for m in names} for n in runs},
        "p_values": {n: {o: {m: float(p) for m, p in ps.items()} for o, ps in raw[n]["comparisons"].items()}
                     for n in runs},
        "win_tie_loss": {n: raw[n]["win_tie_loss"] for n in runs},
        "table": str(report),
    }


def format_means(means: Mapping[str, Mapping[str, float]], metrics: Sequence[str]) -> str:
    """A plain table: one row per run, one column per metric."""
    width = max([len("run"), *(len(n) for n in means)])
    head = f"{'run':<{width}}  " + "  ".join(f"{m:>12}" for m in metrics)
    rows = [head, "-" * len(head)]
    rows += [f"{n:<{width}}  " + "  ".join(f"{v[m]:>12.4f}" for m in metrics) for n, v in means.items()]
    return "\n".join(rows)
