"""Retrieval metrics through ranx (Bassani, ECIR 2022), under ranx's own names (docs/metrics.md lists them all).

Runs and qrels are ranx-compatible dicts (``{qid: {docid: score}}`` / ``{qid: {docid: rel}}``). Every query of the
qrels counts: a query the run does not answer scores 0 (``make_comparable=True``), queries the qrels do not know are
left out. Names are ranx's, unchanged: ``hits@k`` is ranx's *number* of relevant documents in the top k and
``hit_rate@k`` the fraction of queries with at least one (success@k); ``p``/``r``/``rr``/``success`` are the only
aliases (``hit`` is refused as ambiguous). nDCG is ranx's ``ndcg`` (Järvelin & Kekäläinen: gain = rel, discount
log2(rank + 1)). A metric without ``@k`` (``mrr``, ``ndcg``, ``map``, ...) reads the whole run: search to
:func:`metric_depth`. Several runs are compared with ranx's paired significance tests (``student`` two-sided
paired t-test, ``fisher`` randomisation, ``tukey`` HSD).
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


from retrieval.formats import Qrels, Run
from foundations.errors import UserError

logger = logging.getLogger(__name__)

# ranx.metrics.metric_switch, less rbp (takes a persistence, not a cutoff) and bpref (needs judged non-relevant
# documents, which our qrels leave out: ranx would divide by zero)
RANX_METRICS = ("hits", "hit_rate", "precision", "recall", "f1", "r-precision", "mrr", "map", "dcg", "dcg_burges",
                "ndcg", "ndcg_burges")
ALIASES = {**{m: m for m in RANX_METRICS}, "p": "precision", "r": "recall", "rr": "mrr", "success": "hit_rate"}
AMBIGUOUS = {"hit": "hit_rate@k (fraction of queries with a relevant document in the top k, i.e. success@k) or "
                    "hits@k (number of relevant documents in the top k)"}
NO_CUTOFF = ("r-precision",)  # ranx reads these over the whole run; an @k would be ignored
STAT_TESTS = ("student", "fisher", "tukey")


def canonical_metric(name: str) -> str:
    """``'R@10'`` → ``'recall@10'``, ``'success@1'`` → ``'hit_rate@1'``, ``'hits@5'`` stays ``'hits@5'`` (ranx's
    count of relevant hits); unknown or ambiguous names raise a one-line UserError."""
    match = re.fullmatch(r"([A-Za-z][A-Za-z0-9_-]*)(?:@(\d+))?", name.strip())
    word = match.group(1).lower() if match else ""
    if word in AMBIGUOUS:
        raise UserError(f"metric {name!r} is ambiguous: write {AMBIGUOUS[word]} (docs/metrics.md)")
    base = ALIASES.get(word)
    if base is None:
        raise UserError(f"unknown metric {name!r}; expected a ranx metric {list(RANX_METRICS)} (or alias "
                         "p, r, rr, success) with an optional @k, e.g. mrr@10 recall@1 ndcg@10 (docs/metrics.md)")
    if match.group(2) is not None and int(match.group(2)) < 1:
        raise UserError(f"metric {name!r}: k must be ≥ 1")
    if match.group(2) is not None and base in NO_CUTOFF:
        raise UserError(f"metric {name!r}: {base} takes no @k (it is computed at each query's number of relevant "
                         "documents)")
    return base + (f"@{match.group(2)}" if match.group(2) else "")


def metric_cutoff(metric: str) -> int | None:
    """The ``k`` of ``metric@k``, or None when the metric reads the whole ranking (``mrr``, ``ndcg``, ``map``)."""
    name = canonical_metric(metric)
    return int(name.split("@")[1]) if "@" in name else None


def metric_depth(metrics: Iterable[str], full_depth: int) -> int:
    """How many results per query a run needs for ``metrics``: ``full_depth`` (e.g. the index size) as soon as one
    metric has no ``@k``, else the deepest ``@k`` (never more than ``full_depth``).

    ``['mrr', 'recall@1']`` needs the full depth: MRR computed on a top-1 run would be P@1."""
    if full_depth < 1:
        raise ValueError(f"full_depth must be ≥ 1, got {full_depth}")
    cutoffs = [metric_cutoff(m) for m in metrics]
    if not cutoffs:
        raise UserError("no metrics requested")
    if any(k is None for k in cutoffs):
        return full_depth
    return min(full_depth, max(k for k in cutoffs if k is not None))


def canonical_metrics(names: Iterable[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        metric = canonical_metric(name)
        if metric not in out:
            out.append(metric)
    if not out:
        raise UserError("no metrics requested")
    return out


def _ranx_inputs(run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]],
                 name: str) -> tuple[Any, Any]:
    from ranx import Qrels as RanxQrels, Run as RanxRun  # numba-compiled; imported on first use (~2 s)

    scored = {q: {d: int(r) for d, r in docs.items() if int(r) > 0} for q, docs in qrels.items()}
    scored = {q: docs for q, docs in scored.items() if docs}
    if not scored:
        raise UserError("the qrels hold no relevant documents: nothing to evaluate")
    if not any(run.values()):
        raise UserError(f"run {name!r} holds no results: nothing to evaluate (an empty run file?)")
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
        raise UserError(f"unknown significance test {stat_test!r}; expected one of {STAT_TESTS}")
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
