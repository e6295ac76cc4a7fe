"""vlt5r report — tables and pictures of `vlt5r eval` results files and retrieval-trainer comparison.json files.

examples:
  vlt5r report vitb32.json negclip.json --out report/        # one bar chart per task, models side by side
  vlt5r report runs/x/comparison.json --out report/

Writes REPORT/table.md, REPORT/<task>.png and, for retrieval results, REPORT/<task>_<model>.html; prints the table.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from foundations.cli import CLIParser, command, setup_logging


def build_parser() -> CLIParser:
    p = CLIParser(prog="vlt5r report", description=__doc__)
    p.add_argument("files", type=Path, nargs="+", help="results JSON files or comparison.json files")
    p.add_argument("--out", type=Path, help="folder for table.md, the bar charts and the retrieval pages")
    return p


@command
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(quiet=True)
    from evaluation.report import render
    from evaluation.results import load_records

    records = [r for path in args.files for r in load_records(path)]
    print(render(records, args.out))
    return 0
