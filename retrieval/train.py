"""Train the joint (question + image) query encoder into CLIP space, DPR-style (issue 4; docs/training.md).

    python -m retrieval.train --kb kb.jsonl --kb-features kb.h5 --train-queries train.jsonl \
        --dev-queries dev.jsonl --query-features scenes.h5 --init random --tokenizer tok/ --out runs/x
    torchrun --nproc_per_node 4 -m retrieval.train ...same flags...      # DDP, negatives gathered across ranks

Every field of :class:`retrieval.training.TrainConfig` is a flag (``--lr-head`` = ``--optim.lr_head``); see
``--help``. A run resumes from ``OUT/last`` when it exists. User errors print one ``error:`` line, exit 2.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from retrieval.training.cli import UsageError, parse_config


def describe_outputs(out: str, tensorboard: bool) -> str:
    run = Path(out)
    lines = [f"run directory: {run}",
             f"  config       {run / 'config.json'}",
             f"  log          {run / 'log.jsonl'}" + (f"  (TensorBoard: {run / 'tensorboard'})" if tensorboard else ""),
             f"  checkpoints  {run / 'last'} (resumable), {run / 'best'} (best dev), {run / 'init'} (before training)",
             f"  tables       {run / 'baselines.json'}, {run / 'comparison.json'} (test), {run / 'result.json'}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    main_process = os.environ.get("RANK", "0") == "0"
    try:
        cfg, print_only = parse_config(argv, __doc__.split("\n\n")[0])
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if print_only:
        import json

        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.INFO if main_process else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    from tqdm.contrib.logging import logging_redirect_tqdm

    from retrieval.training.loop import UserError, train

    if main_process:
        try:
            import tensorboard  # noqa: F401

            has_tb = cfg.loop.tensorboard
        except ImportError:
            has_tb = False
        print(describe_outputs(cfg.loop.out, has_tb), flush=True)
    try:
        with logging_redirect_tqdm():
            result = train(cfg)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if main_process:
        best = f"{result.best_metric:.4f} at step {result.best_step}" if result.best_metric is not None else "n/a"
        print(f"done: {result.global_step} steps; best dev {cfg.eval.select_metric} {best}")
        best_dir = Path(result.run_dir) / ("best" if result.best_metric is not None else "last")
        print(f"encoder to use: {best_dir}   (QueryEncoder.from_pretrained(dir))")
        if result.test:
            print(f"test comparison: {Path(result.run_dir) / 'comparison.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
