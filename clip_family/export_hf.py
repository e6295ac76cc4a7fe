"""Export to a transformers directory: ``CLIPModel`` + ``CLIPConfig`` + ``CLIPTokenizer`` files + a
``CLIPImageProcessor`` config, so that ``CLIPModel.from_pretrained(dir)`` and ``vlt5r extract --backbone hf:DIR``
read a model trained here.

Only OpenAI-architecture ViT image towers with the OpenAI text tower map onto ``CLIPModel``. The weights are
renamed the way transformers' ``convert_clip_original_pytorch_to_hf.py`` does it:

* each residual block: ``attn.in_proj_{weight,bias}`` split in three (q, k, v rows, in that order) into
  ``self_attn.{q,k,v}_proj``; ``attn.out_proj`` -> ``self_attn.out_proj``; ``ln_1`` / ``ln_2`` -> ``layer_norm1`` /
  ``layer_norm2``; ``mlp.c_fc`` / ``mlp.c_proj`` -> ``mlp.fc1`` / ``mlp.fc2``;
* image: ``class_embedding``, ``positional_embedding`` -> ``position_embedding.weight``, ``conv1`` ->
  ``patch_embedding``, ``ln_pre`` -> ``pre_layrnorm`` (transformers' spelling), ``ln_post`` -> ``post_layernorm``,
  ``proj`` (W, E) -> ``visual_projection.weight`` (E, W);
* text: ``token_embedding``, ``positional_embedding``, ``ln_final`` -> ``final_layer_norm``; our
  ``text_projection`` is already an ``nn.Linear`` (OpenAI's matrix transposed), as is transformers'; ``logit_scale``
  as it is. ``hidden_act`` is ``quick_gelu`` (OpenAI's activation).

The tokenizer files are OpenAI's BPE (``bpe_simple_vocab_16e6.txt.gz`` of the ``clip`` package) written as
``vocab.json`` (the ``SimpleTokenizer`` encoder: 256 byte symbols, the same with ``</w>``, the 48,894 merges,
``<|startoftext|>``, ``<|endoftext|>`` = 49,408 ids) and ``merges.txt`` (the merges in rank order), with
``model_max_length`` = the text tower's context length: on plain text the ids equal ``clip.tokenize``'s (OpenAI's
tokenizer also runs ``ftfy`` and unescapes HTML entities, transformers' does not). SigLIP's logit bias has no
place in a ``CLIPModel`` and is dropped with a warning (a ``SiglipModel`` has a different architecture: no class
token, an attention-pooling head, last-token text pooling, so our towers do not map onto it).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from feature_extraction.backbone_base import CLIP_MEAN, CLIP_STD
from foundations.errors import UserError
from foundations.io import refuse_overwrite, write_dir_atomically

logger = logging.getLogger(__name__)

OPENAI_VOCAB_SIZE = 49408
_BLOCK = re.compile(r"(visual|text)\.transformer\.resblocks\.(\d+)\.(.+)")
_BLOCK_PARTS = {"attn.out_proj": "self_attn.out_proj", "ln_1": "layer_norm1", "ln_2": "layer_norm2",
                "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
_TOWER = {"visual": "vision_model", "text": "text_model"}
_NAMES = {
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "text.token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "text.positional_embedding": "text_model.embeddings.position_embedding.weight",
    "text.ln_final.weight": "text_model.final_layer_norm.weight",
    "text.ln_final.bias": "text_model.final_layer_norm.bias",
    "text_projection.weight": "text_projection.weight",
    "logit_scale": "logit_scale",
}


def check_exportable(model: nn.Module) -> None:
    """Raise a one-line :class:`UserError` unless ``model`` maps onto a transformers ``CLIPModel``."""
    cfg = model.config
    if cfg.image.kind != "openai" or not cfg.image.is_vit:
        tower = "a ResNet" if cfg.image.kind == "openai" else "a transformers"
        raise UserError(f"{tower} image tower cannot become a transformers CLIPModel (only OpenAI-architecture ViT "
                        "towers can); export it with --export-openai (clip_family.export.export_openai) instead")
    if cfg.text.kind != "openai":
        raise UserError("a transformers text tower cannot become a transformers CLIPModel (only the OpenAI text "
                        "tower can); save the model with save_pretrained instead")
    if cfg.text.vocab_size != OPENAI_VOCAB_SIZE:
        raise UserError(f"text vocab_size {cfg.text.vocab_size}: the exported CLIP tokenizer is OpenAI's BPE of "
                        f"{OPENAI_VOCAB_SIZE} ids")


def hf_clip_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Our state dict (OpenAI names; the text tower under ``text.``) in transformers ``CLIPModel`` names."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key in _NAMES:
            out[_NAMES[key]] = value
        elif key == "visual.proj":
            out["visual_projection.weight"] = value.T.contiguous()  # (W, E) -> (E, W)
        elif key == "logit_bias":
            continue
        elif match := _BLOCK.fullmatch(key):
            tower, index, rest = match.groups()
            prefix = f"{_TOWER[tower]}.encoder.layers.{index}."
            if rest.startswith("attn.in_proj_"):  # (3W, W) / (3W,): q, k, v stacked by rows
                kind = rest[len("attn.in_proj_"):]
                for name, part in zip(("q", "k", "v"), value.chunk(3, dim=0)):
                    out[f"{prefix}self_attn.{name}_proj.{kind}"] = part.contiguous()
            else:
                module, _, param = rest.rpartition(".")
                if module not in _BLOCK_PARTS:
                    raise KeyError(f"no transformers name for {key}")
                out[f"{prefix}{_BLOCK_PARTS[module]}.{param}"] = value
        else:
            raise KeyError(f"no transformers name for {key}")
    return out


def hf_clip_config(model: nn.Module) -> Any:
    """The ``CLIPConfig`` of ``model``'s shapes (heads read from the attention modules themselves)."""
    from transformers import CLIPConfig

    cfg = model.config
    image_heads = model.visual.transformer.resblocks[0].attn.num_heads
    text_heads = model.text.transformer.resblocks[0].attn.num_heads
    eos = OPENAI_VOCAB_SIZE - 1  # <|endoftext|>: the pooled position (transformers takes its first occurrence)
    text = dict(vocab_size=cfg.text.vocab_size, hidden_size=cfg.text.width, intermediate_size=4 * cfg.text.width,
                num_hidden_layers=cfg.text.layers, num_attention_heads=text_heads,
                max_position_embeddings=cfg.text.context_length, hidden_act="quick_gelu", bos_token_id=eos - 1,
                eos_token_id=eos, pad_token_id=eos)
    vision = dict(hidden_size=cfg.image.width, intermediate_size=4 * cfg.image.width,
                  num_hidden_layers=cfg.image.layers[0], num_attention_heads=image_heads,
                  image_size=cfg.image.image_resolution, patch_size=cfg.image.patch_size, hidden_act="quick_gelu")
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=cfg.embed_dim,
                      logit_scale_init_value=float(model.logit_scale.detach()))


def write_clip_tokenizer(directory: Path, context_length: int) -> None:
    """OpenAI's BPE as transformers ``CLIPTokenizer`` files (``vocab.json``, ``merges.txt``, the tokenizer config)."""
    from clip.simple_tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer

    bpe = SimpleTokenizer()  # the clip package's own vocabulary construction, read back (not rebuilt)
    merges = sorted(bpe.bpe_ranks, key=bpe.bpe_ranks.__getitem__)
    (directory / "vocab.json").write_text(json.dumps(bpe.encoder, ensure_ascii=False), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                                          encoding="utf-8")
    CLIPTokenizer.from_pretrained(directory, model_max_length=context_length).save_pretrained(directory)


def write_image_processor(directory: Path, resolution: int) -> None:
    """OpenAI's preprocessing as a ``CLIPImageProcessor``: shortest side to ``resolution`` (bicubic), centre crop,
    OpenAI's mean / std."""
    from PIL import Image
    from transformers import CLIPImageProcessor

    CLIPImageProcessor(size={"shortest_edge": resolution}, crop_size={"height": resolution, "width": resolution},
                       resample=Image.BICUBIC, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD),
                       do_convert_rgb=True).save_pretrained(directory)


def export_transformers(model: nn.Module, directory: str | Path, overwrite: bool = False) -> Path:
    """Write ``model`` (a :class:`clip_family.model.ClipFamilyModel`) as a transformers CLIP directory, atomically;
    an existing ``directory`` is replaced only with ``overwrite``."""
    from transformers import CLIPModel

    check_exportable(model)
    directory = Path(directory)
    refuse_overwrite(directory, overwrite, "--export-transformers")
    if model.logit_bias is not None:
        logger.warning("a transformers CLIPModel has no logit bias: the sigmoid bias (%.4f) is dropped from the "
                       "export", float(model.logit_bias.detach()))
    state = hf_clip_state_dict({k: v.detach().float().cpu() for k, v in model.state_dict().items()})
    hf = CLIPModel(hf_clip_config(model))
    missing, unexpected = hf.load_state_dict(state, strict=False)
    if missing or unexpected:  # a bug in the mapping, not a user error
        raise RuntimeError(f"CLIPModel weights not matched: missing {missing[:5]}, unexpected {unexpected[:5]}")

    def write(tmp: Path) -> None:
        hf.save_pretrained(tmp)
        write_clip_tokenizer(tmp, model.config.text.context_length)
        write_image_processor(tmp, model.config.image.image_resolution)

    directory.parent.mkdir(parents=True, exist_ok=True)
    write_dir_atomically(directory, write)
    logger.info("exported a transformers CLIPModel to %s", directory)
    return directory
