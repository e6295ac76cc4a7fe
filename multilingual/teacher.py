"""The teacher of a distillation: a CLIP whose text tower the student imitates and whose image tower the mCLIP keeps.

:func:`load_teacher` takes what the CLIP-family room loads (:func:`clip_family.model.build`: an OpenAI ``.pt``, one
of our model directories, a config JSON), an OpenAI model name (``ViT-B/32``: its released weights, fetched into
``~/.cache/clip`` as ``vlt5r extract`` fetches them; never ``build``'s random-weight model of that architecture) or
``hf:DIR`` (a transformers ``CLIPModel`` directory or a
hub id already in the local cache, e.g. ``hf:openai/clip-vit-base-patch16``). It returns a :class:`Teacher`: the
frozen text side (:class:`TeacherText`: tokenizer, tower, projection; ``embed`` gives exactly the teacher's
``encode_text``, ``layers`` the pooled hidden state of every text block for layer-wise distillation) and what the
mCLIP needs of the image side (tower config, weights, joint dimension, logit scale).

:func:`teacher_weights_file` names the file whose sha256 a feature file of the teacher's embeddings records
(``vlt5r extract`` writes it as ``backbone_sha256``), so a file made with another model is refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from clip_family.config import ImageTowerConfig
from clip_family.model import ClipFamilyModel, HFTextTower, HFTokenizer, OpenAITextTower, build
from foundations.errors import UserError

logger = logging.getLogger(__name__)

IMAGE_PREFIXES = ("visual.", "image_projection.")


class TeacherText(nn.Module):
    """A frozen CLIP text side: ``tokenize(texts)``, ``embed(tokens)`` (B, E), ``layers(tokens)`` [(B, W)] * depth."""

    depth: int
    width: int

    def __init__(self) -> None:
        super().__init__()

    def freeze(self) -> TeacherText:
        self.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> TeacherText:  # the teacher never leaves eval mode (no dropout)
        return super().train(False)

    def tokenize(self, texts: list[str]) -> dict[str, Tensor]:
        return self.tokenizer(texts)  # type: ignore[attr-defined, no-any-return]

    def embed(self, tokens: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError

    def layers(self, tokens: dict[str, Tensor]) -> list[Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 256) -> Tensor:
        """(N, E) teacher embeddings of ``texts`` (as the teacher's ``encode_text`` gives them)."""
        device = next(self.parameters()).device
        out = [self.embed({k: v.to(device) for k, v in self.tokenize(texts[i: i + batch_size]).items()})
               for i in range(0, len(texts), batch_size)]
        return torch.cat(out) if out else torch.zeros(0)


class FamilyTeacherText(TeacherText):
    """The text tower + projection of a :class:`ClipFamilyModel` (OpenAI or transformers towers)."""

    def __init__(self, model: ClipFamilyModel) -> None:
        super().__init__()
        self.text, self.text_projection, self.tokenizer = model.text, model.text_projection, model.tokenizer
        if isinstance(self.text, OpenAITextTower):
            self.depth = len(self.text.transformer.resblocks)
        else:
            self.depth = self.text.encoder.config.num_hidden_layers
        self.width = self.text.width
        self.freeze()

    def embed(self, tokens: dict[str, Tensor]) -> Tensor:
        return self.text_projection(self.text(**tokens))  # (B, E)

    def layers(self, tokens: dict[str, Tensor]) -> list[Tensor]:
        text = self.text
        if isinstance(text, OpenAITextTower):  # the causal tower: each block's state at the end-of-text token
            ids = tokens["input_ids"]
            eot = ids.argmax(dim=-1)  # (B,)
            x = (text.token_embedding(ids) + text.positional_embedding).permute(1, 0, 2)  # (L, B, W)
            out = []
            for block in text.transformer.resblocks:
                x = block(x)
                out.append(x[eot, torch.arange(ids.shape[0])])  # (B, W)
            return out
        assert isinstance(text, HFTextTower)
        hidden = text.encoder(**tokens, output_hidden_states=True).hidden_states[1:]  # depth x (B, L, W)
        return [text.pool(h, tokens.get("attention_mask")) for h in hidden]


class HFClipTeacherText(TeacherText):
    """The text side of a transformers ``CLIPModel``: ``get_text_features`` (pooled at the end-of-text token)."""

    def __init__(self, model: Any, path: str) -> None:
        super().__init__()
        self.text_model, self.text_projection = model.text_model, model.text_projection
        cfg = model.config.text_config
        self.tokenizer = HFTokenizer(path, cfg.max_position_embeddings)
        self.depth, self.width, self.eos_token_id = cfg.num_hidden_layers, cfg.hidden_size, cfg.eos_token_id
        self.freeze()

    def eos_positions(self, input_ids: Tensor) -> Tensor:
        """Where transformers' ``CLIPTextTransformer`` pools: the largest id (legacy configs with eos id 2), else
        the first end-of-text token."""
        if self.eos_token_id == 2:
            return input_ids.argmax(dim=-1)
        return (input_ids == self.eos_token_id).int().argmax(dim=-1)

    def embed(self, tokens: dict[str, Tensor]) -> Tensor:
        return self.text_projection(self.text_model(**tokens).pooler_output)  # (B, E)

    def layers(self, tokens: dict[str, Tensor]) -> list[Tensor]:
        hidden = self.text_model(**tokens, output_hidden_states=True).hidden_states[1:]  # depth x (B, L, W)
        rows = torch.arange(tokens["input_ids"].shape[0])
        eos = self.eos_positions(tokens["input_ids"])
        return [h[rows, eos] for h in hidden]


@dataclass
class Teacher:
    """What a distillation needs of its teacher (see the module docstring)."""

    spec: str
    text: TeacherText | None  # None when only the image side was asked for
    image: ImageTowerConfig
    image_state: dict[str, Tensor]  # ``visual.*`` / ``image_projection.*`` of a ClipFamilyModel with ``image``
    embed_dim: int
    logit_scale: float  # the log scale (a parameter value)


def _hf_clip_dir(source: str) -> str:
    """A local directory of a transformers CLIP: ``source`` itself or the cached snapshot of a hub id."""
    if Path(source).is_dir():
        return source
    from transformers.utils import cached_file

    try:
        found = cached_file(source, "config.json")
    except OSError as exc:
        raise UserError(f"--teacher hf:{source}: not a directory and not in the local hub cache ({exc})") from None
    return str(Path(found).parent)  # type: ignore[arg-type]


def load_teacher(spec: str, with_text: bool = True) -> Teacher:
    """The teacher of ``spec`` (see the module docstring); ``with_text=False`` keeps only its image side."""
    if spec.startswith("hf:"):
        from transformers import CLIPModel

        path = _hf_clip_dir(spec[3:])
        try:
            model = CLIPModel.from_pretrained(path)
        except (OSError, ValueError) as exc:
            raise UserError(f"--teacher {spec}: cannot load a transformers CLIPModel ({exc})") from None
        vision = model.config.vision_config
        state = {f"visual.encoder.{k}": v for k, v in model.vision_model.state_dict().items()}
        state["image_projection.weight"] = model.visual_projection.weight.detach()
        return Teacher(spec, HFClipTeacherText(model, path) if with_text else None,
                       ImageTowerConfig(kind="hf", path=path, image_resolution=vision.image_size), state,
                       model.config.projection_dim, float(model.logit_scale.detach()))
    model = build(openai_release(spec) or spec, "BaselineCLIP")
    state = {k: v for k, v in model.state_dict().items() if k.startswith(IMAGE_PREFIXES)}
    return Teacher(spec, FamilyTeacherText(model) if with_text else None, model.config.image, state,
                   model.config.embed_dim, float(model.logit_scale.detach()))


def openai_release(spec: str) -> str | None:
    """The released ``.pt`` of an OpenAI model name (downloaded by the clip package when not yet cached, as
    :func:`feature_extraction.openai_backbone.openai_weights` does for ``vlt5r extract``), else None."""
    import clip

    if spec not in clip.available_models():
        return None
    from feature_extraction.openai_backbone import openai_weights

    return openai_weights(spec, "--teacher")[0]


def teacher_weights_file(spec: str) -> Path | None:
    """The weights file ``vlt5r extract --backbone SPEC`` hashes into ``backbone_sha256`` (None: a config or an
    uncached hub id)."""
    release = openai_release(spec)
    if release is not None:
        return Path(release)
    path = Path(spec[3:] if spec.startswith("hf:") else spec)
    if path.is_file():
        return path
    if path.is_dir() and (path / "model.safetensors").is_file():
        return path / "model.safetensors"
    return None


def default_layer_pairs(student_depth: int, teacher_depth: int) -> list[tuple[int, int]]:
    """Student block i (1-based) -> teacher block round(i * T / S): every student block, spread over the teacher's
    (TinyBERT's uniform mapping)."""
    return [(i, max(1, round(i * teacher_depth / student_depth))) for i in range(1, student_depth + 1)]
