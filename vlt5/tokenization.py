"""The VL-T5 vocabulary on transformers' T5 tokenizer (DESIGN.md §4.2).

VL-T5's ``VLT5Tokenizer`` (j-min/VL-T5 ``src/tokenization.py``) = the t5 sentencepiece model (32000 pieces for
t5-base) + 100 ``<extra_id_k>`` (id ``n_sp + 99 - k``) + 100 ``<vis_extra_id_k>`` (id ``n_sp + 199 - k``):
32200 ids, ``<pad>`` = 0, ``</s>`` = 1 appended to every sequence, no BOS. Task prefixes (``"vqa: "``) are plain
text. We load the standard T5 tokenizer from a local directory (``from_pretrained(dir)``: the ``vocab_file=``
constructor of transformers 5 is broken) and add the ``<vis_extra_id_k>`` tokens in the order that gives
VL-T5's ids, then check the layout.

:func:`train_tokenizer` makes a new vocabulary in the same layout (a sentencepiece model trained on your own
text, for encoders initialised at random): pad 0, eos 1, unk 2, no BOS, saved as a t5-style directory whose
``T5Tokenizer`` adds the 100 ``<extra_id>`` tokens, so :func:`load_tokenizer` gives ``pieces + 100 + 100`` ids.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from foundations.errors import UserError

logger = logging.getLogger(__name__)

N_EXTRA_IDS = 100
N_VIS_EXTRA_IDS = 100


class TokenizerError(UserError):
    """The tokenizer directory does not give VL-T5's vocabulary layout."""


def vis_extra_token(k: int) -> str:
    return f"<vis_extra_id_{k}>"


def load_tokenizer(directory: str | Path) -> Any:
    """A T5 tokenizer with VL-T5's 200 extra tokens, from a local directory (t5-base's, or one saved by us)."""
    from transformers import AutoTokenizer, T5Tokenizer

    directory = Path(directory)
    if not directory.is_dir():
        raise TokenizerError(f"{directory}: no such tokenizer directory")
    try:
        tok = AutoTokenizer.from_pretrained(directory) if (directory / "tokenizer_config.json").is_file() \
            else T5Tokenizer.from_pretrained(directory)
    except Exception as exc:
        raise TokenizerError(f"{directory}: cannot load a T5 tokenizer (need spiece.model or tokenizer.json): "
                             f"{exc}") from exc
    if tok.convert_tokens_to_ids(vis_extra_token(0)) in (None, tok.unk_token_id):
        tok.add_tokens([vis_extra_token(k) for k in range(N_VIS_EXTRA_IDS - 1, -1, -1)], special_tokens=True)
    check_layout(tok, str(directory))
    return tok


def check_layout(tok: Any, where: str = "tokenizer") -> None:
    """Raise :class:`TokenizerError` unless ids follow VL-T5: pad 0, eos 1, extra/vis_extra ids at the end."""
    total = len(tok)
    n_sp = total - N_EXTRA_IDS - N_VIS_EXTRA_IDS
    expected = {"<pad>": 0, "</s>": 1, "<extra_id_0>": n_sp + N_EXTRA_IDS - 1, "<extra_id_99>": n_sp,
                vis_extra_token(0): total - 1, vis_extra_token(N_VIS_EXTRA_IDS - 1): total - N_VIS_EXTRA_IDS}
    got = {t: tok.convert_tokens_to_ids(t) for t in expected}
    if got != expected:
        raise TokenizerError(f"{where}: not the VL-T5 vocabulary layout; expected ids {expected}, got {got}")


def sentencepiece_size(tok: Any) -> int:
    """Number of sentencepiece pieces (32000 for t5-base)."""
    return len(tok) - N_EXTRA_IDS - N_VIS_EXTRA_IDS


def train_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int, model_type: str = "unigram",
                    exact_vocab_size: bool = False) -> Path:
    """Train a sentencepiece model on ``texts`` and save it as a t5-style tokenizer directory (``spiece.model`` +
    transformers' files) that :func:`load_tokenizer` turns into VL-T5's layout (checked before returning).

    Ids as t5's: pad 0, eos 1, unk 2, no BOS. One thread, so the model is deterministic. ``vocab_size`` is an
    upper bound on the pieces (a small corpus may support fewer) unless ``exact_vocab_size``."""
    import sentencepiece as spm
    from transformers import T5Tokenizer

    texts = [t for t in texts if t.strip()]
    if not texts:
        raise UserError(f"{out_dir}: no text to train a tokenizer on")
    if vocab_size <= 3:
        raise UserError(f"vocab_size must be > 3 (pad, eos and unk come first), got {vocab_size}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=buf, vocab_size=vocab_size, model_type=model_type,
        hard_vocab_limit=exact_vocab_size, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, num_threads=1,
        character_coverage=1.0, minloglevel=2)
    (out_dir / "spiece.model").write_bytes(buf.getvalue())
    T5Tokenizer.from_pretrained(out_dir).save_pretrained(out_dir)  # converts spiece.model (needs protobuf)
    tok = load_tokenizer(out_dir)  # raises TokenizerError unless the layout is VL-T5's
    logger.info("tokenizer: %d sentencepiece pieces from %d texts -> %s", sentencepiece_size(tok), len(texts), out_dir)
    return out_dir
