"""vlt5r tokenizer — train a small T5-style sentencepiece tokenizer on your own questions / KB texts.

examples:
  vlt5r tokenizer --texts queries.train.jsonl kb.jsonl --out runs/x/tokenizer
  vlt5r tokenizer --texts queries.train.jsonl --out tok/ --vocab-size 2000

For query encoders initialised at random (pretrained inits bring their own tokenizer). Reads the "question",
"title" and "text" strings of the JSONL files. Unigram pieces with pad 0, eos 1, unk 2, no BOS, plus VL-T5's
<extra_id_k> / <vis_extra_id_k> tokens; one thread, so the model is deterministic. Then: vlt5r train --tokenizer OUT.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from foundations.cli import CLIParser, command, setup_logging
from foundations.io import refuse_overwrite


def build_parser() -> CLIParser:
    p = CLIParser(prog="vlt5r tokenizer", description=__doc__)
    p.add_argument("--texts", nargs="+", required=True, type=Path, help="JSONL files (queries and/or KB)")
    p.add_argument("--out", required=True, type=Path, help="tokenizer directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--vocab-size", type=int, default=500, help="upper bound on sentencepiece pieces")
    return p


@command
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    refuse_overwrite(args.out, args.overwrite)
    setup_logging(quiet=True)
    from retrieval.training.tokenizer import jsonl_texts, train_tokenizer

    texts = jsonl_texts(args.texts)
    train_tokenizer(texts, args.out, args.vocab_size)
    print(f"wrote tokenizer to {args.out} (trained on {len(texts)} texts)")
    return 0
