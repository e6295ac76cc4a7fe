"""vlt5r distill — distil a multilingual student text encoder from a CLIP teacher (Multilingual-CLIP / vi_clip's
CrossLingual) into an mCLIP: the student's text tower + the teacher's image tower, a CLIP-family model directory.

examples:
  vlt5r distill --teacher ViT-B-32.pt --student xlm-roberta-base/ --train-data vi=pairs_vi.jsonl de=pairs_de.tsv \
      --val-data val.jsonl --loss cl --alpha 0.1 --pooling cls --batch-size 512 --lr 1e-4 --out runs/mclip
  vlt5r distill --teacher hf:openai/clip-vit-base-patch16 --student xlm-roberta-base/ --train-data pairs/ \
      --teacher-features runs/teacher_en.h5 ...     # the teacher runs once (vlt5r extract --texts), never again
  vlt5r distill --write-english en.jsonl --train-data pairs.jsonl        # the English side, for vlt5r extract
  vlt5r distill --teacher ViT-B-32.pt --student xlmr/ --train-data pairs.jsonl --layer-kd --layer-pairs 6:6 12:12
  vlt5r distill --evaluate runs/mclip/best --xtd-images xtd/images --xtd-captions xtd/captions.jsonl --out xtd/
  torchrun --nproc_per_node 4 -m vlt5r distill ...same flags...           # DDP

Parallel data: rows {english, foreign[, lang]} (JSONL, CSV/TSV, parquet, a datasets folder); bad rows are skipped
and counted. Every field of multilingual.config.DistillConfig is a flag twice: --section.field and --field-name.
A run resumes from OUT/last. Use the model with `vlt5r extract --texts kb.jsonl --backbone OUT/best` or
MCLIP.from_pretrained(dir). See docs/multilingual.md.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from foundations.cli import (CLIParser, add_config_flags, base_config, command, config_from_flags,
                             start_training_command)
from foundations.errors import UsageError


def build_parser() -> CLIParser:
    from multilingual.config import DistillConfig

    p = CLIParser(prog="vlt5r distill", description=__doc__)
    p.add_argument("--config", type=Path, help="base config JSON (e.g. a run's config.json); other flags override it")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--write-english", type=Path, help="write the distinct English sentences of --train-data and "
                   "--val-data as {id, text} JSONL (the input of `vlt5r extract --texts`) and exit")
    p.add_argument("--evaluate", type=Path, help="only evaluate this mCLIP directory on --xtd-images / "
                   "--xtd-captions (writes OUT/xtd.json and OUT/xtd.md)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --write-english file")
    add_config_flags(p, DistillConfig)
    return p


def parse_config(argv: Sequence[str] | None):  # -> tuple[DistillConfig, argparse.Namespace]
    from multilingual.config import DistillConfig

    args = build_parser().parse_args(argv)  # config_from_flags leaves out the driver's own flags
    return config_from_flags(DistillConfig, args, base_config(args.config)), args


def write_english(cfg, path: Path, overwrite: bool) -> int:  # cfg: DistillConfig
    from foundations.io import refuse_overwrite
    from multilingual.data import Columns, open_parallel, write_english_texts

    d = cfg.data
    if not d.train_data and not d.val_data:
        raise UsageError("--write-english needs --train-data (and/or --val-data)")
    refuse_overwrite(path, overwrite, "--write-english")
    columns = Columns(d.english_column, d.foreign_column, d.lang_column)
    english: dict[str, str] = {}
    for sources in (d.train_data, d.val_data):
        if sources:
            english.update(open_parallel(sources, columns, d.data_format, d.split).english())
    write_english_texts(english, path)
    print(f"wrote {len(english)} English sentences: {path}   (vlt5r extract --texts {path} --out teacher.h5 "
          "--backbone TEACHER --dtype float32, then --teacher-features teacher.h5)")
    return 0


def evaluate_only(cfg, directory: Path) -> int:  # cfg: DistillConfig
    e = cfg.eval
    if e.xtd_images is None or e.xtd_captions is None:
        raise UsageError("--evaluate needs --xtd-images and --xtd-captions")
    from multilingual.evaluation import evaluate_xtd, image_pool, read_captions, write_xtd, xtd_table
    from multilingual.model import MCLIP
    from multilingual.teacher import load_teacher

    if not (directory / "config.json").is_file():
        raise UsageError(f"--evaluate {directory}: not a model directory (no config.json)")
    model = MCLIP.from_pretrained(directory).eval()
    ids, images = image_pool(e.xtd_images, lambda paths: model.encode_image(paths).float(), e.eval_batch_size)
    captions, _ = read_captions(e.xtd_captions, set(ids))
    teacher = model.info.get("teacher")
    text = load_teacher(teacher).text if teacher else None
    result = evaluate_xtd(ids, images, captions, lambda t: model.encode_text(t, batch_size=e.eval_batch_size),
                          (lambda t: text.encode(t, e.eval_batch_size)) if text is not None else None)
    paths = write_xtd(result, cfg.loop.out)
    print(xtd_table(result) + f"written: {paths[0]}, {paths[1]}")
    return 0


@command
def main(argv: Sequence[str] | None = None) -> int:
    main_process = os.environ.get("RANK", "0") == "0"
    cfg, args = parse_config(argv)
    if start_training_command(cfg, args.print_config, main_process):
        return 0
    if args.write_english is not None:
        return write_english(cfg, args.write_english, args.overwrite)
    if args.evaluate is not None:
        return evaluate_only(cfg, args.evaluate)
    from tqdm.contrib.logging import logging_redirect_tqdm

    from multilingual.training import train

    with logging_redirect_tqdm():
        result = train(cfg)
    if main_process:
        best = f"{result.best_metric:.4f} at step {result.best_step}" if result.best_metric is not None else "n/a"
        final = Path(result.run_dir) / ("best" if result.best_metric is not None else "last")
        print(f"done: {result.global_step} steps; best dev {best}; dev {json.dumps(result.dev)}")
        print(f"mCLIP to use: {final}   (vlt5r extract --texts kb.jsonl --backbone {final}; "
              "MCLIP.from_pretrained(dir))")
    return 0
