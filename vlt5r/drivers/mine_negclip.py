"""vlt5r mine-negclip — NegCLIP's hard negatives: swapped-span captions and nearest CLIP images, as NegCLIP's TSV.

examples:
  vlt5r extract --images coco/ --out coco_clip.h5 --backbone ViT-B/32          # the CLIP image features
  vlt5r mine-negclip --captions coco_train.csv --image-features coco_clip.h5 --out coco_negclip.tsv
  vlt5r mine-negclip --captions pairs/ --image-features f.h5 --out mined.tsv --text-negatives 5 --image-negatives 3
  vlt5r mine-negclip ... --span-types noun_chunk adjective --index-factory HNSW32 --seed 1
  vlt5r clip-train --model-name clip_dir/ --negclip --train-data coco_negclip.tsv --val-data val.csv   # fine-tune

--captions: a stem-paired folder, .parquet or .csv/.tsv with image paths (--image-column / --caption-column, as
clip-train). --image-features: the HDF5 of `vlt5r extract` over the same images (an image's id is found as its
caption-file entry, that without suffix, its path relative to --image-root or the captions folder, or its stem).
Text negatives swap two spans of one kind (noun chunks of more than two tokens, verb phrases, singular / plural
nouns, adverbs, adjectives) tagged by spaCy (--spacy-pipeline, default en_core_web_sm; install it with
`python -m spacy download en_core_web_sm`); image negatives are the K nearest other images (cosine; faiss, exact
Flat by default). The output has one row per (image, caption) with at least one swap: filepath (relative to the
TSV's folder), title, neg_caption (a Python list), neg_image (a Python list of row indices: every row of the K
nearest images), readable by `clip-train --negclip` and by the original NegCLIP code. See docs/negclip.md.
"""

from __future__ import annotations

from collections.abc import Sequence

from foundations.cli import CLIParser, add_config_flags, command, config_from_flags, setup_logging
from foundations.errors import UsageError


def build_parser() -> CLIParser:
    from clip_family.mining import MineConfig

    p = CLIParser(prog="vlt5r mine-negclip", description=__doc__)
    add_config_flags(p, MineConfig)
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--quiet", action="store_true", help="warnings only")
    return p


@command
def main(argv: Sequence[str] | None = None) -> int:
    from clip_family.mining import MineConfig, mine_negclip
    from foundations.io import refuse_overwrite

    args = build_parser().parse_args(argv)
    cfg = config_from_flags(MineConfig, {k: v for k, v in vars(args).items() if k not in ("overwrite", "quiet")})
    for flag, value in (("--captions", cfg.captions), ("--image-features", cfg.image_features), ("--out", cfg.out)):
        if not value:
            raise UsageError(f"{flag} is required")
    refuse_overwrite(cfg.out, args.overwrite, inputs=[cfg.captions, cfg.image_features])
    setup_logging(quiet=args.quiet)
    report = mine_negclip(cfg)
    print(report.summary())
    return 0
