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
  vlt5r clip-train ... --parallel dp                  # DataParallel over every visible GPU (slower than DDP)
  vlt5r clip-train ... --batch-size 4096 --accum-freq 8   # one contrastive batch in 8 pieces (feature cache)
  vlt5r clip-train --model-name pretrained.pt --variant LiT --lock-image-unlocked-groups 2 ...  # last 2 groups train
  vlt5r clip-train --image-tower vit_dir/ --text-tower bert_dir/ --embed-dim 256 --train-data pairs.csv \
      --peft-method lora --image-target-modules query value --lora-r 8 --wandb offline --export-merged vlp_full/
  vlt5r clip-train --model-name clip_dir/ --negclip --train-data mined.tsv --val-data val.csv \
      --eval-tasks sugar_crepe=sugar_crepe/@coco/val2017   # NegCLIP fine-tuning (vlt5r mine-negclip makes the TSV)

Every field of clip_family.training.ClipTrainConfig is a flag twice: --section.field and the plain --field-name.
A run resumes from OUT/last when it exists. The model to use afterwards: OUT/best or OUT/last
(ClipFamilyModel.from_pretrained(dir)); `--export-openai OUT.pt` also writes an OpenAI-format .pt for
`vlt5r extract --backbone OUT.pt`, `--export-transformers DIR` a transformers CLIPModel directory (OpenAI ViT
towers only) for `vlt5r extract --backbone hf:DIR`, `--export-merged DIR` (with --peft-method) the model with
its adapters merged into the towers, a full directory; an existing export is replaced only with --overwrite.
With --peft-method the checkpoints (OUT/best, OUT/last) hold only the adapters, the projections and the logit
scale (the towers' base weights stay in their directories); ClipFamilyModel.from_pretrained reads them.
See docs/clip_family.md.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path

from foundations.cli import (CLIParser, add_config_flags, command, base_config, config_from_flags,
                             start_training_command)


def build_parser() -> CLIParser:
    from clip_family.training import ClipTrainConfig

    p = CLIParser(prog="vlt5r clip-train", description=__doc__)
    p.add_argument("--config", type=Path, help="base config JSON (e.g. a run's config.json); other flags override it")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--export-openai", type=Path, help="after training, export the final model to this OpenAI .pt")
    p.add_argument("--export-transformers", type=Path,
                   help="after training, export the final model to this transformers CLIPModel directory")
    p.add_argument("--export-merged", type=Path, help="after training, merge the peft adapters into the towers and "
                   "write the full model to this directory")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --export-openai / "
                   "--export-transformers / --export-merged output")
    add_config_flags(p, ClipTrainConfig)
    return p


def parse_config(argv: Sequence[str] | None):  # -> tuple[ClipTrainConfig, argparse.Namespace]
    from clip_family.training import ClipTrainConfig

    args = build_parser().parse_args(argv)  # config_from_flags leaves out the driver's own flags
    return config_from_flags(ClipTrainConfig, args, base_config(args.config)), args


@command
def main(argv: Sequence[str] | None = None) -> int:
    main_process = os.environ.get("RANK", "0") == "0"
    cfg, args = parse_config(argv)
    if start_training_command(cfg, args.print_config, main_process):
        return 0
    from foundations.io import refuse_overwrite

    for flag, path in (("--export-openai", args.export_openai), ("--export-transformers", args.export_transformers),
                       ("--export-merged", args.export_merged)):
        if path is not None:
            refuse_overwrite(path, args.overwrite, flag)  # before training, not after it
    from tqdm.contrib.logging import logging_redirect_tqdm

    from clip_family.training import train

    make_task = None
    if cfg.data.negclip:  # NegCLIP fine-tuning: the same trainer with NegCLIP's batch and loss
        from clip_family.negclip_training import build_negclip_task as make_task
    with logging_redirect_tqdm():
        result = train(cfg, make_task)
    if main_process:
        best = f"{result.best_metric:.4f} at step {result.best_step}" if result.best_metric is not None else "n/a"
        final = Path(result.run_dir) / ("best" if result.best_metric is not None else "last")
        print(f"done: {result.global_step} steps; best dev {best}; dev {json.dumps(result.dev)}")
        print(f"model to use: {final}   (ClipFamilyModel.from_pretrained(dir))")
        if args.export_openai or args.export_transformers or args.export_merged:
            export(final, args)
    return 0


def export(final: Path, args: argparse.Namespace) -> None:
    """The exports asked for, all from the final model loaded once (merging its adapters comes last: in place)."""
    from clip_family.model import ClipFamilyModel

    model = ClipFamilyModel.from_pretrained(final)
    if args.export_openai is not None:
        from clip_family.export import export_openai

        path = export_openai(model, args.export_openai)
        print(f"exported OpenAI .pt: {path}   (vlt5r extract --backbone {path})")
    if args.export_transformers is not None:
        from clip_family.export_hf import export_transformers

        path = export_transformers(model, args.export_transformers, overwrite=args.overwrite)
        print(f"exported transformers CLIPModel: {path}   (vlt5r extract --backbone hf:{path})")
    if args.export_merged is not None:
        from clip_family.peft_towers import merge_adapters
        from foundations.io import write_dir_atomically

        path = write_dir_atomically(args.export_merged, merge_adapters(model).save_pretrained)
        print(f"exported the merged model: {path}   (ClipFamilyModel.from_pretrained(dir))")
