"""A small T5-style tokenizer trained on your own questions, for query encoders initialised at random.

Pretrained inits bring their tokenizer (``t5:DIR``, or t5-base's directory with ``vlt5:``). A random init needs
one too; a sentencepiece model trained on the task's own text keeps questions short (t5's 32k vocabulary would
be mostly unused rows). Same layout as t5: unigram pieces with pad 0, eos 1, unk 2, no BOS; :func:`load_tokenizer`
then adds VL-T5's ``<extra_id>`` / ``<vis_extra_id>`` tokens. One thread, so the model is deterministic.

    vlt5r tokenizer --texts queries.train.jsonl kb.jsonl --out runs/x/tokenizer
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from foundations.jsonl import iter_jsonl
from vlt5.tokenization import train_tokenizer as vlt5_train_tokenizer
from foundations.errors import UserError

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
    support fewer pieces) and save it as a t5-style tokenizer directory
    (:func:`vlt5.tokenization.train_tokenizer`)."""
    if not texts:
        raise UserError("no text to train a tokenizer on")
    out_dir = vlt5_train_tokenizer(texts, out_dir, vocab_size)
    logger.info("tokenizer trained on %d texts -> %s", len(texts), out_dir)
    return out_dir
