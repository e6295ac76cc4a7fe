"""vlt5r evaluate — score TREC runs against qrels with ranx, several runs side by side with significance tests.

examples:
  vlt5r evaluate --qrels queries.test.jsonl --runs clip_image.trec joint.trec
  vlt5r evaluate --qrels qrels.txt --runs a.trec b.trec --metrics mrr@10 recall@1 recall@10 hit_rate@10 ndcg@10 \
      --test fisher --json eval.json

--qrels is a queries JSONL (relevance from its "positives") or a TREC qrels file ("qid 0 docid rel"). Metric names
follow ranx exactly (mrr, precision, recall, hit_rate, hits, ndcg, map, each with an optional @k); every name is
listed in docs/metrics.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from foundations.cli import CLIParser, command, setup_logging
from foundations.errors import UsageError

DEFAULT_METRICS = ["mrr@10", "recall@1", "recall@10", "hit_rate@10", "ndcg@10"]
STAT_TESTS = ("student", "fisher", "tukey")


def build_parser() -> CLIParser:
    p = CLIParser(prog="vlt5r evaluate", description=__doc__)
    p.add_argument("--qrels", type=Path, required=True, help="queries .jsonl (positives) or TREC qrels file")
    p.add_argument("--runs", type=Path, nargs="+", required=True, help="TREC run files")
    p.add_argument("--names", nargs="+", help="display names for the runs (default: file stems)")
    p.add_argument("--metrics", nargs="+", default=DEFAULT_METRICS)
    p.add_argument("--test", choices=STAT_TESTS, default="student",
                   help="significance test between runs: paired t-test, Fisher randomisation, Tukey HSD")
    p.add_argument("--max-p", type=float, default=0.05, help="p-value threshold for the significance marks")
    p.add_argument("--json", type=Path, help="write the results as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace --json if it exists")
    return p


@command
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(quiet=True)
    names = args.names or [r.stem for r in args.runs]
    if len(names) != len(args.runs) or len(set(names)) != len(names):
        raise UsageError(f"--names must give {len(args.runs)} distinct names (got {names}); runs with the same "
                         "file stem need --names")
    if args.json is not None:
        from foundations.io import refuse_overwrite

        refuse_overwrite(args.json, args.overwrite, "--json", inputs=[args.qrels, *args.runs])
    from retrieval.formats import load_qrels, read_trec_run
    from retrieval.metrics import canonical_metrics, compare_runs, evaluate_run, format_means

    metrics = canonical_metrics(args.metrics)
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
        from foundations.config import save_json

        save_json(args.json, {**result, "qrels": str(args.qrels),
                              "runs": {n: str(p) for n, p in zip(names, args.runs)}})
    return 0
