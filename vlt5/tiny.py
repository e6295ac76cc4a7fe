"""Tiny VL-T5 artefacts in the real formats, for tests, docs and smoke runs (the VL-T5 family's one factory).

Sizes are small, odd and mutually distinct so that a transposed dimension fails loudly (HF ``T5ModelTester``
habit): d_model 32, d_ff 37, d_kv 8 with 3 heads (inner 24 != d_model), 2 layers, 8 relative-position
buckets (so the logarithmic buckets are used by ~10-token texts), feat_dim 16, 5 regions, and a vocabulary of
99 sentencepiece pieces + 100 ``<extra_id>`` + 100 ``<vis_extra_id>`` = 299 ids. ``relative_attention_max_distance``
stays 128: transformers 4.2.1 (which VL-T5 pins) hard-codes it.

* :func:`make_tiny_tokenizer_dir` — a t5-style tokenizer directory (``spiece.model`` + transformers files,
  without the ``<vis_extra_id>`` tokens, like the ``t5-base`` directory users have).
* :func:`make_tiny_t5_dir` — ``T5ForConditionalGeneration.save_pretrained`` + that tokenizer (a "plain T5 dir").
* :func:`make_tiny_vlt5_checkpoint` — an ``Epoch30.pth``-style bare state dict: ``module.`` prefix, tied copies
  of ``shared``, decoder, ``lm_head`` and the stray ``encoder.visual_embedding.layer_norm.weight``.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import torch
from transformers import T5ForConditionalGeneration

from vlt5.config import VisualConfig, VLT5Config
from vlt5.modeling import JointEncoder
from vlt5.tokenization import train_tokenizer

logger = logging.getLogger(__name__)

TINY_SP_PIECES = 99
TINY_VOCAB = TINY_SP_PIECES + 200
TINY_FEAT_DIM = 16
TINY_REGIONS = 5

_WH = ["what", "who", "where", "which", "how many", "when", "why", "whose"]
_VERB = ["is", "designed", "painted", "built", "shows", "holds", "wears", "owns", "photographed", "visited"]
_THING = ["the building", "this bridge", "the red bus", "that statue", "the animal", "this painting",
          "the tower", "a player", "the church", "the river", "a yellow kite", "the mountain", "this castle",
          "the giraffe", "a wooden boat", "the fountain", "the museum", "a famous singer", "the cathedral"]
_TAIL = ["in the picture", "here", "at night", "near the lake", "in this photo", "during winter", "from the jungle",
         "quickly", "next to the zebra", "behind the fence", "on the left", ""]


def tiny_sentences() -> list[str]:
    """Deterministic question-like training text for the tiny sentencepiece model."""
    return [f"vqa: {w} {v} {t} {tail}".strip() + "?" for w, v, t, tail in itertools.product(_WH, _VERB, _THING, _TAIL)]


def tiny_config(**overrides: object) -> VLT5Config:
    """The tiny VL-T5 config (see the module docstring); ``overrides`` replace fields."""
    cfg = VLT5Config(vocab_size=TINY_VOCAB, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=3,
                     relative_attention_num_buckets=8, relative_attention_max_distance=128, dropout_rate=0.1,
                     visual=VisualConfig(feat_dim=TINY_FEAT_DIM, n_images=2))
    return cfg.with_overrides(**overrides) if overrides else cfg


def make_tiny_tokenizer_dir(directory: str | Path, sentences: list[str] | None = None,
                            vocab_size: int = TINY_SP_PIECES, model_type: str = "unigram") -> Path:
    """The tiny tokenizer directory: :func:`vlt5.tokenization.train_tokenizer` on ``sentences`` (default
    :func:`tiny_sentences`: exactly 99 unigram pieces; with other sentences ``vocab_size`` is an upper bound)."""
    return train_tokenizer(sentences or tiny_sentences(), directory, vocab_size, model_type=model_type,
                           exact_vocab_size=sentences is None)


def make_tiny_t5_dir(directory: str | Path, config: VLT5Config | None = None, seed: int = 0) -> Path:
    """A plain T5 directory (``T5ForConditionalGeneration``, rows = pieces + 100 extra ids + 3 unused, like
    t5-base's 32128 rows for 32100 tokens) with its tokenizer files."""
    cfg = (config or tiny_config()).with_overrides(vocab_size=TINY_SP_PIECES + 103)
    t5cfg = cfg.to_t5_config()
    t5cfg.is_encoder_decoder = True
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(t5cfg)
    _perturb_norms(model)
    directory = Path(directory)
    model.save_pretrained(directory)
    make_tiny_tokenizer_dir(directory)
    return directory


def make_tiny_vlt5_checkpoint(path: str | Path, config: VLT5Config | None = None, seed: int = 0) -> Path:
    """Save an ``Epoch30.pth``-style state dict of a random tiny VL-T5 (encoder from our JointEncoder, decoder
    and lm_head from a T5ForConditionalGeneration of the same size)."""
    cfg = config or tiny_config()
    torch.manual_seed(seed)
    encoder = JointEncoder(cfg)
    _perturb_norms(encoder)
    t5cfg = cfg.to_t5_config()
    t5cfg.is_encoder_decoder = True
    seq2seq = T5ForConditionalGeneration(t5cfg)
    state: dict[str, torch.Tensor] = dict(encoder.state_dict())
    shared = state["shared.weight"]
    state["encoder.embed_tokens.weight"] = shared
    state["encoder.visual_embedding.obj_order_embedding.weight"] = shared
    state["encoder.visual_embedding.layer_norm.weight"] = torch.rand(cfg.d_model) + 0.5
    state["decoder.embed_tokens.weight"] = shared
    state.update({k: v for k, v in seq2seq.state_dict().items() if k.startswith("decoder.") and "embed" not in k})
    state["lm_head.weight"] = seq2seq.lm_head.weight.detach().clone()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({f"module.{k}": v for k, v in state.items()}, path)
    return path


def _perturb_norms(model: torch.nn.Module) -> None:
    """RMSNorm weights start at exactly 1; make them differ so a norm applied in the wrong place shows."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("layer_norm.weight") or (".1.weight" in name and "visual_embedding" in name):
                param.uniform_(0.5, 1.5)
