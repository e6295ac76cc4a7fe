"""vlt5r clip-train — train a CLIP-family model (CLIP, SigLIP, LiT, SigLiT) on image–caption data.

examples:
  vlt5r clip-train --model-name RN50 --train-data data_dir/ --batch-size 512 --out runs/rn50     # train-CLIP
  vlt5r clip-train --model-name ViT-B/32 --variant SigLIP --train-data train.parquet --val-data val.parquet
  vlt5r clip-train --model-name ViT-B/32 --train-data train.csv --image-column filepath --caption-column title
  vlt5r clip-train --model-name pretrained.pt --variant LiT --train-data pairs/ --lr-text 1e-4   # locked images
  vlt5r clip-train --model-name tiny --train-data digits/ --val-data held_out/ \
      --classes zero one two three four five six seven eight nine --templates "a handwritten {}"
  vlt5r clip-train ... --freeze-text-epochs 2 --lr-text 1e-5           # projections first, then the text tower
  torchrun --nproc_per_node 4 -m vlt5r clip-train ...same flags...        # DDP, features gathered across ranks

Every field of clip_family.training.ClipTrainConfig is a flag twice: --section.field and the plain --field-name.
A run resumes from OUT/last when it exists. The model to use afterwards: OUT/best or OUT/last
(ClipFamilyModel.from_pretrained(dir)); `--export-openai OUT.pt` also writes an OpenAI-format .pt for
`vlt5r extract --backbone OUT.pt`. See docs/clip_family.md.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from foundations.cli import CLIParser, add_config_flags, command, base_config, config_from_flags, setup_logging


def build_parser() -> CLIParser:
    from clip_family.training import ClipTrainConfig

    p = CLIParser(prog="vlt5r clip-train", description=__doc__)
    p.add_argument("--config", type=Path, help="base config JSON (e.g. a run's config.json); other flags override it")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--export-openai", type=Path, help="after training, export the final model to this OpenAI .pt")
    add_config_flags(p, ClipTrainConfig)
    return p


def parse_config(argv: Sequence[str] | None):  # -> tuple[ClipTrainConfig, argparse.Namespace]
    from clip_family.training import ClipTrainConfig

    args = build_parser().parse_args(argv)
    flags = {k: v for k, v in vars(args).items() if k not in ("config", "print_config", "export_openai")}
    return config_from_flags(ClipTrainConfig, flags, base_config(args.config)), args


@command
def main(argv: Sequence[str] | None = None) -> int:
    main_process = os.environ.get("RANK", "0") == "0"
    cfg, args = parse_config(argv)
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    setup_logging(main_process=main_process)
    from tqdm.contrib.logging import logging_redirect_tqdm

    from clip_family.training import train

    with logging_redirect_tqdm():
        result = train(cfg)
    if main_process:
        best = f"{result.best_metric:.4f} at step {result.best_step}" if result.best_metric is not None else "n/a"
        final = Path(result.run_dir) / ("best" if result.best_metric is not None else "last")
        print(f"done: {result.global_step} steps; best dev {best}; dev {json.dumps(result.dev)}")
        print(f"model to use: {final}   (ClipFamilyModel.from_pretrained(dir))")
        if args.export_openai is not None:
            from clip_family.export import export_openai
            from clip_family.model import ClipFamilyModel

            path = export_openai(ClipFamilyModel.from_pretrained(final), args.export_openai)
            print(f"exported OpenAI .pt: {path}   (vlt5r extract --backbone {path})")
    return 0
