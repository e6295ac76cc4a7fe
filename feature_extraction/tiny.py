"""Tiny CLIP checkpoints in the *real* formats, for tests, the demo and benchmarks.

Two formats a user's real weights come in, made small enough to build in well under a second:

* OpenAI format: a plain ``state_dict`` of ``clip.model.CLIP`` saved with ``torch.save`` (fp16, like the released
  checkpoints after ``clip.model.convert_weights``). ``clip.load(path, jit=False)`` accepts it and rebuilds the
  architecture from tensor shapes (``clip.model.build_model``), exactly as it does for ``RN101.pt``.
* transformers format: a ``CLIPModel.save_pretrained`` directory with its tokenizer and image processor.
* a transformers text encoder (``XLMRobertaModel`` + its Unigram tokenizer): the multilingual student.

The sizes are small and mutually distinct (so a transposed dimension fails loudly), within what the OpenAI
builder allows: it fixes heads = width // 64 for text and ViT, width * 32 // 64 for the ResNet attention pool,
and the text vocabulary must be the full 49408 BPE entries because ``clip.tokenize`` always uses it.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["TinyClipSpec", "TINY_VIT", "TINY_RESNET", "VIT_B32", "RN101", "make_openai_clip", "make_hf_clip",
           "photo", "make_image_folder", "make_hf_text_encoder", "make_hf_vit"]

# Colour photographs bundled with scikit-image (no download needed).
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
          "colorwheel", "stereo_motorcycle")


@dataclass(frozen=True)
class TinyClipSpec:
    """Arguments of ``clip.model.CLIP``; ``vision_layers`` is an int for a ViT, a 4-tuple for a ModifiedResNet."""

    embed_dim: int = 48
    image_resolution: int = 32
    vision_layers: int | tuple[int, int, int, int] = 2
    vision_width: int = 128
    vision_patch_size: int | None = 8
    context_length: int = 77
    vocab_size: int = 49408
    transformer_width: int = 64
    transformer_heads: int = 1
    transformer_layers: int = 2

    @property
    def is_vit(self) -> bool:
        return isinstance(self.vision_layers, int)

    @property
    def grid_hw(self) -> tuple[int, int]:
        side = self.image_resolution // (self.vision_patch_size if self.is_vit else 32)
        return side, side

    @property
    def grid_dim(self) -> int:
        return self.vision_width if self.is_vit else self.vision_width * 32


# ViT: 32 px, patch 8 -> 4x4 = 16 patch tokens of width 128, embedding 48.
TINY_VIT = TinyClipSpec()
# ModifiedResNet: 96 px -> layer4 map 3x3x256 (width 8 * 32), embedding 40.
TINY_RESNET = TinyClipSpec(embed_dim=40, image_resolution=96, vision_layers=(1, 1, 1, 1), vision_width=8,
                           vision_patch_size=None)
# The shape of the released ViT-B/32 (random weights): used by the extraction benchmark.
VIT_B32 = TinyClipSpec(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=32,
                       transformer_width=512, transformer_heads=8, transformer_layers=12)
# The shape of the released RN101 (random weights): the GPU throughput benchmark and the precision measurements.
RN101 = TinyClipSpec(embed_dim=512, image_resolution=224, vision_layers=(3, 4, 23, 3), vision_width=64,
                     vision_patch_size=None, transformer_width=512, transformer_heads=8, transformer_layers=12)


def make_openai_clip(path: str | Path, spec: TinyClipSpec = TINY_VIT, seed: int = 0) -> Path:
    """Build a randomly initialised ``clip.model.CLIP`` and save its fp16 state dict to ``path`` (``.pt``)."""
    from clip.model import CLIP, convert_weights

    torch.manual_seed(seed)
    model = CLIP(**{k: v for k, v in asdict(spec).items() if k != "transformer_heads"},
                 transformer_heads=spec.transformer_heads)
    # The ResNet's BatchNorm statistics are 0/1 at init; give them real values so a wrong eval/train mode shows.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    convert_weights(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def _tiny_bpe(n_merges: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The first ``n_merges`` merges of the OpenAI CLIP BPE, with the vocabulary layout of its SimpleTokenizer."""
    from clip.simple_tokenizer import bytes_to_unicode, default_bpe

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1 : 1 + n_merges]
    merges = [tuple(line.split()) for line in lines]
    tokens = list(bytes_to_unicode().values())
    tokens += [t + "</w>" for t in tokens]
    tokens += ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges  # type: ignore[return-value]


def make_hf_clip(directory: str | Path, seed: int = 0, image_size: int = 32, n_merges: int = 500) -> Path:
    """Write a tiny transformers CLIP directory (model, tokenizer, image processor) with ``save_pretrained``."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = _tiny_bpe(n_merges)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges)
    n = len(vocab)
    config = CLIPConfig(
        text_config=dict(vocab_size=n, hidden_size=40, intermediate_size=74, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77,
                         bos_token_id=n - 2, eos_token_id=n - 1, pad_token_id=n - 1),
        vision_config=dict(hidden_size=56, intermediate_size=90, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=8),
        projection_dim=36,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    CLIPImageProcessor(size={"shortest_edge": image_size},
                       crop_size={"height": image_size, "width": image_size}).save_pretrained(directory)
    (directory / "TINY.json").write_text(json.dumps({"made_by": "feature_extraction.tiny.make_hf_clip",
                                                     "seed": seed}))
    return directory


def photo(index: int) -> np.ndarray:
    """Bundled scikit-image colour photo number ``index`` (modulo the list), as an (H, W, 3) uint8 array."""
    import skimage.data

    image = getattr(skimage.data, PHOTOS[index % len(PHOTOS)])()
    return image[0] if isinstance(image, tuple) else image  # stereo_motorcycle returns (left, right, disparity)


def make_image_folder(directory: str | Path, n: int, size: tuple[int, int] = (500, 375), seed: int = 0,
                      suffix: str = ".jpg", subdirs: int = 0) -> list[Path]:
    """Write ``n`` distinct realistic photos (random crops + flips of the bundled photos, resized to ``size``).

    Files are ``img_00000.jpg`` ... (or spread over ``subdirs`` sub-folders ``d0/``, ``d1/``...); JPEG quality 90.
    """
    import numpy as np
    from PIL import Image

    directory = Path(directory)
    rng = np.random.default_rng(seed)
    bases = [Image.fromarray(photo(i)) for i in range(len(PHOTOS))]
    paths = []
    for i in range(n):
        base = bases[i % len(bases)]
        w, h = base.size
        scale = rng.uniform(0.5, 1.0)
        cw, ch = max(8, int(w * scale)), max(8, int(h * scale))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        image = base.crop((x0, y0, x0 + cw, y0 + ch)).resize(size, Image.BICUBIC)
        if rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        folder = directory / f"d{i % subdirs}" if subdirs else directory
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"img_{i:05d}{suffix}"
        image.save(path, quality=90) if suffix in (".jpg", ".jpeg") else image.save(path)
        paths.append(path)
    return paths


def make_hf_text_encoder(directory: str | Path, texts: list[str], seed: int = 0, hidden_size: int = 36,
                         layers: int = 2, heads: int = 3, intermediate_size: int = 37, max_length: int = 40,
                         dropout: float = 0.1) -> Path:
    """Write a tiny transformers ``XLMRobertaModel`` directory (random weights, ``save_pretrained``) with a real
    ``XLMRobertaTokenizer`` (a Unigram model, as XLM-R's sentencepiece) whose vocabulary is every word of ``texts``
    (``▁word``) plus their characters, so any text of those characters tokenizes: the student of the multilingual
    tests (``AutoModel`` / ``AutoTokenizer`` load it like ``xlm-roberta-base``)."""
    from transformers import XLMRobertaConfig, XLMRobertaModel, XLMRobertaTokenizer

    words = sorted({w for text in texts for w in text.split()})
    chars = sorted({c for w in words for c in w} | {"▁"})
    specials = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab = specials + [(f"▁{w}", -1.0) for w in words] + [(c, -5.0) for c in chars] + [("<mask>", 0.0)]
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    XLMRobertaTokenizer(vocab=vocab, model_max_length=max_length).save_pretrained(directory)
    config = XLMRobertaConfig(vocab_size=len(vocab), hidden_size=hidden_size, num_hidden_layers=layers,
                              num_attention_heads=heads, intermediate_size=intermediate_size,
                              max_position_embeddings=max_length + 2, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                              hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    torch.manual_seed(seed)
    XLMRobertaModel(config).save_pretrained(directory)
    return directory


def make_hf_vit(directory: str | Path, seed: int = 0, image_size: int = 32, patch_size: int = 8,
                hidden_size: int = 44, layers: int = 2, heads: int = 2, intermediate_size: int = 53) -> Path:
    """Write a tiny transformers ``ViTModel`` directory (random weights, with its pooler) and its
    ``ViTImageProcessor`` (resize to ``image_size``): a unimodal image tower as ``google/vit-base-patch16-224`` is."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = ViTConfig(image_size=image_size, patch_size=patch_size, hidden_size=hidden_size,
                       num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=intermediate_size)
    torch.manual_seed(seed)
    ViTModel(config).save_pretrained(directory)
    ViTImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(directory)
    return directory
