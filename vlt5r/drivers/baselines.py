"""vlt5r baselines — CLIP image-only, CLIP text-only and saved query encoders on one queries file, in one table.

examples:
  vlt5r baselines --kb kb.jsonl --kb-features kb.h5 --queries queries.test.jsonl --query-features scenes.h5 \
      --question-features questions.h5 --encoder joint_untrained=runs/x/init --encoder joint=runs/x/best \
      --json comparison.json

clip_image: the query image's CLIP embedding (fc of --query-features) against the KB; clip_text: the CLIP text
embedding of the question (--question-features keyed by query id, e.g. `vlt5r extract --texts questions.jsonl`);
any saved query encoders (--encoder NAME=DIR). All on the same exact KB index.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from foundations.cli import CLIParser, command, setup_logging
from foundations.errors import UsageError
from vlt5r.drivers.common import add_kb_args, kb_from_args

DEFAULT_METRICS = ("mrr@10", "recall@1", "recall@5", "recall@10")


def build_parser() -> CLIParser:
    p = CLIParser(prog="vlt5r baselines", description=__doc__)
    add_kb_args(p)
    p.add_argument("--queries", required=True, help="queries JSONL to evaluate (with positives)")
    p.add_argument("--query-features", help="CLIP features of the query images (clip_image and encoders)")
    p.add_argument("--question-features", help="CLIP text features of the questions, keyed by query id")
    p.add_argument("--encoder", action="append", default=[], metavar="NAME=DIR", help="a saved query encoder")
    p.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--json", type=Path, help="write {name: {metric: value}} here")
    p.add_argument("--overwrite", action="store_true", help="replace --json if it exists")
    return p


@command
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(quiet=True)
    if args.json is not None:
        from foundations.io import refuse_overwrite

        inputs = [p for p in (args.kb, args.kb_features, args.kb_text_features, args.queries, args.query_features,
                              args.question_features) if p]
        refuse_overwrite(args.json, args.overwrite, "--json", inputs=inputs)
    specs = []
    for spec in args.encoder:
        name, sep, directory = spec.partition("=")
        if not sep or not name or not directory:
            raise UsageError(f"--encoder expects NAME=DIR, got {spec!r}")
        specs.append((name, directory))
    from feature_extraction.readers import open_features as open_feature_file
    from foundations.config import save_json
    from retrieval.training.baselines import baseline_table, format_table
    from retrieval.training.data import load_queries, open_features
    from vlt5 import QueryEncoder

    kb = kb_from_args(args)
    query_store = open_features(args.query_features) if args.query_features else None
    question_store = open_feature_file(args.question_features) if args.question_features else None
    queries = load_queries(args.queries, set(kb.ids), query_store, "eval")
    encoders = {name: QueryEncoder.from_pretrained(directory) for name, directory in specs}
    table = baseline_table(queries, kb, query_store, question_store, encoders, args.metrics, args.batch_size)
    print(f"{args.queries}: {len(queries)} queries, KB {len(kb.ids)} entries ({args.kb_side})")
    print(format_table(table))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        save_json(args.json, table)
        print(f"wrote {args.json}")
    return 0
