"""vlt5r eval — zero-shot retrieval / classification and compositional benchmarks for any CLIP-space model.

examples:
  vlt5r eval --model ViT-B/32 --task sugar_crepe --data sugar-crepe/data --images coco/val2017 --out sc.json
  vlt5r eval --model hf:runs/clip/best --task winoground aro_vg_relation \
      --data winoground/data/examples.jsonl aro/visual_genome_relation.json --out comp.json --plots comp/
  vlt5r eval --model ViT-B/32 --task retrieval --data coco_karpathy_test.json --images coco \
      --image-features coco_feats.h5 --out coco.json --plots coco/
  vlt5r eval --model runs/digits/best --task classification --data digits_by_class/ \
      --templates "a handwritten {}"                      # a `vlt5r clip-train` model directory

--task and --data pair up (one --data per task); --images is one folder for every task or one per task ("-" for
a task's default). Tasks: see `vlt5r eval --list`. The results file follows the schema in docs/evaluation.md; a
missing image or a malformed row is reported (with its path / line) and counted, and the run goes on.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from foundations.cli import CLIParser, command, setup_logging
from foundations.errors import UsageError


def build_parser() -> CLIParser:
    p = CLIParser(prog="vlt5r eval", description=__doc__)
    p.add_argument("--model", help="OpenAI CLIP name or .pt, or hf:<dir> (CLIP, SigLIP)")
    p.add_argument("--task", nargs="+", help="task name(s)")
    p.add_argument("--data", type=Path, nargs="+", help="annotation file or folder, one per task")
    p.add_argument("--images", nargs="+", help="image folder: one for all tasks or one per task ('-' = default)")
    p.add_argument("--image-features", type=Path, help="HDF5 feature file from `vlt5r extract` for the images")
    p.add_argument("--image-root", type=Path, help="folder the feature ids are relative to (default: --images)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--templates", default="default", help="classification prompt templates: shipped name or file")
    p.add_argument("--classnames", nargs="+",
                   help="classification class names: a shipped list, a file (one per line) or the names themselves "
                        "(in the sorted order of the class folders / for CSV label indices)")
    p.add_argument("--seed", type=int, default=0, help="seed of the Order-set caption perturbations")
    p.add_argument("--out", type=Path, help="results JSON")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--plots", type=Path, help="folder for a bar chart per task and the retrieval HTML page")
    p.add_argument("--list", action="store_true", help="list the tasks and exit")
    p.add_argument("--quiet", action="store_true")
    return p


@command
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(quiet=args.quiet)
    from evaluation.tasks import TASKS

    if args.list:
        print("\n".join(f"{name:<22} {help_}" for name, (_, _, help_) in TASKS.items()))
        return 0
    if not args.model or not args.task or not args.data:
        raise UsageError("--model, --task and --data are required (or --list)")
    if len(args.task) != len(args.data):
        raise UsageError(f"--task and --data pair up: {len(args.task)} task(s) but {len(args.data)} --data")
    images = args.images or [None]
    if len(images) not in (1, len(args.task)):
        raise UsageError(f"--images: one folder, or one per task ({len(args.task)})")
    images = [None if i in (None, "-") else Path(i) for i in (images * len(args.task) if len(images) == 1 else images)]
    for name in args.task:
        if name not in TASKS:
            raise UsageError(f"unknown task {name!r}; one of: {', '.join(TASKS)}")
    if args.out:
        from foundations.io import refuse_overwrite

        refuse_overwrite(args.out, args.overwrite)
    from evaluation.report import evaluate, render
    from foundations.device import resolve_device

    records = evaluate(args.model, list(zip(args.task, args.data, images)), out=args.out,
                       precision=args.precision, device=resolve_device(args.device), batch_size=args.batch_size,
                       image_features=args.image_features, image_root=args.image_root,
                       options={"templates_name": args.templates, "classnames_name": args.classnames,
                                "seed": args.seed})
    print(render(records, args.plots))
    return 0
