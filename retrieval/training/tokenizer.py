"""A small T5-style tokenizer trained on your own questions, for query encoders initialised at random.

Pretrained inits bring their tokenizer (``t5:DIR``, or t5-base's directory with ``vlt5:``). A random init needs
one too; a sentencepiece model trained on the task's own text keeps questions short (t5's 32k vocabulary would
be mostly unused rows). Same layout as t5: unigram pieces with pad 0, eos 1, unk 2, no BOS; :func:`load_tokenizer`
then adds VL-T5's ``<extra_id>`` / ``<vis_extra_id>`` tokens. One thread, so the model is deterministic.

    python -m retrieval.training.tokenizer --texts queries.train.jsonl kb.jsonl --out runs/x/tokenizer
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterable
from pathlib import Path

from retrieval.formats import exit_on_user_error, iter_jsonl

logger = logging.getLogger(__name__)

TEXT_FIELDS = ("question", "title", "text")


def jsonl_texts(paths: Iterable[str | Path]) -> list[str]:
    """Every ``question`` / ``title`` / ``text`` string of the given JSONL files."""
    out = []
    for path in paths:
        for _, record in iter_jsonl(path):
            out += [record[f] for f in TEXT_FIELDS if isinstance(record.get(f), str) and record[f].strip()]
    return out


def train_tokenizer(texts: list[str], out_dir: str | Path, vocab_size: int = 500) -> Path:
    """Train a unigram sentencepiece model on ``texts`` (``vocab_size`` is an upper bound: a small corpus may
    support fewer pieces) and save it as a t5-style tokenizer directory (:func:`vlt5.tiny.make_tiny_tokenizer_dir`)."""
    from vlt5.tiny import make_tiny_tokenizer_dir

    if not texts:
        raise ValueError("no text to train a tokenizer on")
    out_dir = make_tiny_tokenizer_dir(out_dir, sentences=texts, vocab_size=vocab_size)
    logger.info("tokenizer trained on %d texts -> %s", len(texts), out_dir)
    return out_dir


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m retrieval.training.tokenizer", description=__doc__.split("\n\n")[0])
    p.add_argument("--texts", nargs="+", required=True, help="JSONL files (queries and/or KB)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--vocab-size", type=int, default=500, help="upper bound on sentencepiece pieces")
    args = p.parse_args(argv)
    train_tokenizer(jsonl_texts(args.texts), args.out, args.vocab_size)
    print(f"wrote tokenizer to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
