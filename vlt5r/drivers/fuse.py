"""vlt5r fuse — ViQuAE late fusion of runs: tune weights on a dev split (fit), then fuse test runs (apply).

examples:
  vlt5r fuse fit --qrels dev.jsonl --runs text_dev.trec image_dev.trec --metric mrr@10 --out fusion.json
  vlt5r fuse apply --runs text_test.trec image_test.trec --weights fusion.json --out fused.trec [--k 100]
  vlt5r fuse apply --runs a.trec b.trec --weights 0.3,0.7 --out fused.trec

Missing documents get the run's minimum score (--no-defmin to turn off), each run is z-scored over all its scores,
then a weighted sum (retrieval/fusion.py cites meerqat's fuse.py). `fit` prints each run's score and the fused
score on the same queries. An --out that is one of the input runs is refused; an existing --out needs --overwrite.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from foundations.cli import CLIParser, command, setup_logging
from foundations.errors import UsageError, UserError
from foundations.io import refuse_overwrite

logger = logging.getLogger(__name__)


def build_parser() -> CLIParser:
    p = CLIParser(prog="vlt5r fuse", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, parser_class=CLIParser)
    fit = sub.add_parser("fit", help="tune fusion weights on a dev split", description=__doc__)
    fit.add_argument("--qrels", type=Path, required=True, help="dev queries .jsonl or TREC qrels")
    fit.add_argument("--metric", default="mrr@10")
    fit.add_argument("--step", type=float, default=0.1, help="weight grid step (weights sum to 1)")
    app = sub.add_parser("apply", help="fuse runs with given or tuned weights", description=__doc__)
    app.add_argument("--weights", help="weights.json from 'fit', or comma-separated numbers")
    app.add_argument("--out", type=Path, required=True, help="fused TREC run")
    app.add_argument("--k", type=int, default=100, help="results kept per query")
    app.add_argument("--tag", default="fusion")
    for sp in (fit, app):
        sp.add_argument("--runs", type=Path, nargs="+", required=True)
        sp.add_argument("--no-defmin", action="store_true", help="do not give missing documents the run minimum")
        sp.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    fit.add_argument("--out", type=Path, help="write the tuned weights (JSON)")
    return p


def parse_weights(spec: str | None, runs: Sequence[Path]) -> list[float]:
    """``--weights``: a weights.json written by ``fit``, or comma-separated numbers, one per run."""
    if spec is None:
        raise UsageError("--weights is required: a weights.json from 'fit' or numbers like 0.3,0.7")
    path = Path(spec)
    if path.is_file():
        from foundations.config import load_json

        data = load_json(path)
        if not isinstance(data, dict) or "weights" not in data:
            raise UserError(f"{path}: expected a JSON object with 'weights' (written by 'vlt5r fuse fit')")
        if data.get("runs") and [Path(r).name for r in data["runs"]] != [r.name for r in runs]:
            logger.warning("%s was tuned for runs %s; applying to %s", path, data["runs"], [str(r) for r in runs])
        weights = [float(w) for w in data["weights"]]
    else:
        try:
            weights = [float(w) for w in spec.split(",")]
        except ValueError:
            raise UsageError(f"--weights {spec!r}: not a file and not comma-separated numbers") from None
    if len(weights) != len(runs):
        raise UsageError(f"--weights gives {len(weights)} weights for {len(runs)} runs")
    return weights


@command
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(quiet=True)
    if args.out is not None:
        weights = [Path(args.weights)] if getattr(args, "weights", None) else []
        inputs = [*args.runs, *weights, *([args.qrels] if args.command == "fit" else [])]
        refuse_overwrite(args.out, args.overwrite, inputs=inputs)
    from retrieval.formats import load_qrels, read_trec_run, write_trec_run
    from retrieval.fusion import fuse, tune_weights

    runs = [read_trec_run(p) for p in args.runs]
    if args.command == "fit":
        qrels = load_qrels(args.qrels)
        result = tune_weights(runs, qrels, metric=args.metric, step=args.step, defmin=not args.no_defmin,
                              names=[p.name for p in args.runs])
        result = {**result, "runs": [str(p) for p in args.runs]}
        for name, score in result["single_run_scores"].items():
            print(f"{name:<32} {result['metric']} {score:.4f}")
        print(f"{'fusion ' + str(result['weights']):<32} {result['metric']} {result['dev_score']:.4f}")
        print(f"(all on the same {result['dev_queries']} of {result['judged_queries']} judged queries)")
        if args.out:
            from foundations.config import save_json

            save_json(args.out, result)
        return 0
    weights = parse_weights(args.weights, args.runs)
    from retrieval.formats import check_trec_field

    check_trec_field(args.tag, "run tag", "--tag")
    fused = fuse(runs, weights, defmin=not args.no_defmin, k=args.k)
    write_trec_run(args.out, fused, tag=args.tag)
    print(f"wrote {args.out}: {len(fused)} queries fused with weights {weights}")
    return 0
