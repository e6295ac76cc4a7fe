"""vlt5r demo — the steps of the demo pipeline (`make demo` runs them all through scripts/demo.sh).

examples:
  vlt5r demo prepare --out runs/demo              # task data, tiny OpenAI-format CLIP, CLIP feature files
  vlt5r demo report --comparison runs/demo/comparison.json        # the test-split table and the verdict
  vlt5r demo example runs/demo/data/queries.test.jsonl            # question<TAB>image<TAB>answer of one query

Each prepare step is skipped when its output is already complete, so a rerun resumes. The task: docs/demo.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from foundations.cli import CLIParser, command, setup_logging


def build_parser() -> CLIParser:
    from retrieval.demo.prepare import DemoClipConfig
    from retrieval.demo.task import DemoTaskConfig

    p = CLIParser(prog="vlt5r demo", description=__doc__)
    sub = p.add_subparsers(dest="step", required=True, parser_class=CLIParser)
    prep = sub.add_parser("prepare", help="task data, tiny CLIP and CLIP features", description=__doc__)
    prep.add_argument("--out", type=Path, default=Path("runs/demo"))
    prep.add_argument("--seed", type=int, default=0)
    prep.add_argument("--train-scenes", type=int, default=DemoTaskConfig.train_scenes)
    prep.add_argument("--clip-steps", type=int, default=DemoClipConfig.steps,
                      help="optimizer steps of the tiny CLIP's pre-training (clip_family's trainer)")
    prep.add_argument("--num-workers", type=int, default=1)
    report = sub.add_parser("report", help="print the test-split comparison table", description=__doc__)
    report.add_argument("--comparison", type=Path, required=True, help="comparison.json of a training run")
    example = sub.add_parser("example", help="print one test query: question, image, answer", description=__doc__)
    example.add_argument("queries", type=Path, help="queries JSONL of the demo")
    return p


@command
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.step == "prepare":
        from dataclasses import replace

        from retrieval.demo.prepare import DemoClipConfig, prepare
        from retrieval.demo.task import DemoTaskConfig

        setup_logging()
        task = replace(DemoTaskConfig(), seed=args.seed, train_scenes=args.train_scenes)
        clip = replace(DemoClipConfig(), seed=args.seed, steps=args.clip_steps)
        paths = prepare(args.out, task, clip, args.num_workers)
        print(f"demo data: {paths.data}\ndemo CLIP: {paths.clip}\nfeatures:  {paths.root / 'features'}")
    elif args.step == "report":
        from foundations.config import load_json
        from retrieval.demo.report import comparison_table, verdict

        comparison = load_json(args.comparison)
        print(comparison_table(comparison))
        print(verdict(comparison))
    else:
        from retrieval.demo.report import example

        print(example(args.queries))
    return 0
