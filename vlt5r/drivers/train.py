"""vlt5r train — train the joint (question + image) query encoder into CLIP space, DPR-style.

examples:
  vlt5r train --kb kb.jsonl --kb-features kb.h5 --train-queries train.jsonl --dev-queries dev.jsonl \
      --test-queries test.jsonl --query-features scenes.h5 --question-features questions.h5 \
      --init random --tokenizer tok/ --out runs/x
  vlt5r train --init vlt5:snap/pretrain/VLT5/Epoch30.pth --tokenizer t5-base/ --method houlsby \
      --pool-grid-to 6 --precision bf16 ...same data flags...
  torchrun --nproc_per_node 4 -m vlt5r train ...same flags...     # DDP, negatives gathered across ranks
  vlt5r train --config runs/x/config.json --epochs 20 --out runs/y   # a saved config, some fields overridden

Every field of retrieval.training.TrainConfig is a flag twice: --section.field and the plain --field-name
(--lr-head = --optim.lr_head). A run resumes from OUT/last when it exists (--resume yes|no|auto). See
docs/training.md. Same as `python -m retrieval.train` and `bash scripts/train_joint_encoder.sh`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from foundations.cli import (CLIParser, add_config_flags, base_config, command, config_from_flags,
                             start_training_command)


def build_parser() -> CLIParser:
    from retrieval.training.config import TrainConfig

    p = CLIParser(prog="vlt5r train", description=__doc__)
    p.add_argument("--config", type=Path, help="base config JSON (e.g. a run's config.json); other flags override it")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    add_config_flags(p, TrainConfig)
    return p


def parse_config(argv: Sequence[str] | None):  # -> tuple[TrainConfig, bool]
    """(the resolved config, whether --print-config was given); a mistake raises UsageError."""
    from retrieval.training.config import TrainConfig

    args = build_parser().parse_args(argv)  # config_from_flags leaves out the driver's own flags
    return config_from_flags(TrainConfig, args, base_config(args.config)), args.print_config


def describe_outputs(out: str, tensorboard: bool) -> str:
    run = Path(out)
    return "\n".join([
        f"run directory: {run}",
        f"  config       {run / 'config.json'}",
        f"  log          {run / 'log.jsonl'}, {run / 'curves.png'}"
        + (f"  (TensorBoard: {run / 'tensorboard'})" if tensorboard else ""),
        f"  checkpoints  {run / 'last'} (resumable), {run / 'best'} (best dev), {run / 'init'} (before training)",
        f"  tables       {run / 'baselines.json'}, {run / 'comparison.json'} (test), {run / 'result.json'}"])


@command
def main(argv: Sequence[str] | None = None) -> int:
    main_process = os.environ.get("RANK", "0") == "0"
    cfg, print_only = parse_config(argv)
    if start_training_command(cfg, print_only, main_process):
        return 0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from foundations.io import check_writable_dir

    check_writable_dir(cfg.loop.out)  # before the data and the model are loaded
    from tqdm.contrib.logging import logging_redirect_tqdm

    from retrieval.training import train

    if main_process:
        try:
            import tensorboard  # noqa: F401

            has_tb = cfg.loop.tensorboard
        except ImportError:
            has_tb = False
        print(describe_outputs(cfg.loop.out, has_tb), flush=True)
    with logging_redirect_tqdm():
        result = train(cfg)
    if main_process:
        best = f"{result.best_metric:.4f} at step {result.best_step}" if result.best_metric is not None else "n/a"
        print(f"done: {result.global_step} steps; best dev {cfg.eval.select_metric} {best}")
        best_dir = Path(result.run_dir) / ("best" if result.best_metric is not None else "last")
        print(f"encoder to use: {best_dir}   (QueryEncoder.from_pretrained(dir))")
        if result.test:
            print(f"test comparison: {Path(result.run_dir) / 'comparison.json'}")
    return 0
