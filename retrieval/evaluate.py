"""Evaluate TREC runs against qrels with ranx, several runs side by side with significance tests.

    python retrieval/evaluate.py --qrels queries.jsonl --runs clip.trec joint.trec \
        --metrics mrr@10 recall@1 recall@10 hit@10 ndcg@10 [--test student|fisher|tukey] [--json out.json]

``--qrels`` is a queries JSONL (relevance from its ``positives``) or a TREC qrels file (``qid 0 docid rel``).
Metric names: mrr, p/precision, r/recall, hit/hit_rate, ndcg, map, each with an optional ``@k``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from retrieval.formats import exit_on_user_error, load_qrels, read_trec_run
from retrieval.metrics import STAT_TESTS, canonical_metrics, compare_runs, evaluate_run, format_means

DEFAULT_METRICS = ["mrr@10", "recall@1", "recall@10", "hit_rate@10", "ndcg@10"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--qrels", type=Path, required=True, help="queries .jsonl (positives) or TREC qrels file")
    p.add_argument("--runs", type=Path, nargs="+", required=True, help="TREC run files")
    p.add_argument("--names", nargs="+", help="display names for the runs (default: file stems)")
    p.add_argument("--metrics", nargs="+", default=DEFAULT_METRICS)
    p.add_argument("--test", choices=STAT_TESTS, default="student",
                   help="significance test between runs: paired t-test, Fisher randomisation, Tukey HSD")
    p.add_argument("--max-p", type=float, default=0.05, help="p-value threshold for the significance marks")
    p.add_argument("--json", type=Path, help="write the results as JSON")
    return p.parse_args(argv)


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    metrics = canonical_metrics(args.metrics)
    names = args.names or [r.stem for r in args.runs]
    if len(names) != len(args.runs) or len(set(names)) != len(names):
        raise ValueError(f"--names must give {len(args.runs)} distinct names (got {names}); runs with the same "
                         "file stem need --names")
    qrels = load_qrels(args.qrels)
    runs = {name: read_trec_run(path) for name, path in zip(names, args.runs)}
    if len(runs) == 1:
        name, run = next(iter(runs.items()))
        means = {name: evaluate_run(run, qrels, metrics, name=name)}
        result = {"metrics": metrics, "queries": len(qrels), "means": means}
        print(format_means(means, metrics))
    else:
        result = compare_runs(runs, qrels, metrics, stat_test=args.test, max_p=args.max_p)
        print(result["table"])
        print(f"\n{result['queries']} queries; superscripts: significantly better than that run "
              f"({args.test}, p < {args.max_p})")
    if args.json:
        result = {**result, "qrels": str(args.qrels), "runs": {n: str(p) for n, p in zip(names, args.runs)}}
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
