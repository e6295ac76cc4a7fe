"""mCLIP: a multilingual student text tower + the teacher CLIP's image tower, as one CLIP-family model
(Multilingual-CLIP, Carlsson et al. 2022; vi_clip's ``mCLIP``).

An :class:`MCLIP` *is* a :class:`clip_family.model.ClipFamilyModel` (LiT-shaped: the image tower is the teacher's
and locked; the text tower is any transformers encoder pooled by ``mean`` / ``cls``, then a linear map into the
teacher's joint space), so it has ``encode_text`` / ``encode_image`` like every model of the family and its
directory is a CLIP-family directory (``config.json`` + ``model.safetensors`` + ``text_tower/`` with the student's
config and tokenizer files, + ``image_tower/`` for a transformers image tower) that ``vlt5r extract --backbone DIR``
reads. ``mclip.json`` beside them records the teacher, the student and the languages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from clip_family.config import ModelConfig, TextTowerConfig
from clip_family.model import ClipFamilyModel
from foundations.config import load_json, save_json
from foundations.errors import UserError
from multilingual.teacher import Teacher

MCLIP_NAME = "mclip.json"


class MCLIP(ClipFamilyModel):
    """Student text tower + teacher image tower (see the module docstring); ``info`` is ``mclip.json``."""

    def __init__(self, cfg: ModelConfig, info: dict[str, Any] | None = None) -> None:
        super().__init__(cfg)
        self.info: dict[str, Any] = dict(info or {})
        self.logit_scale.requires_grad_(False)  # the teacher's, kept for scoring; distillation does not use it
        self.image_projection.requires_grad_(False)  # the teacher's own projection (a transformers tower's too)
        pooler = getattr(self.text.encoder, "pooler", None)  # BERT / XLM-R's unused pooler: no DDP-unused params
        if pooler is not None:
            pooler.requires_grad_(False)

    @classmethod
    def from_teacher(cls, teacher: Teacher, student: str, pooling: str = "mean", max_length: int = 77,
                     info: dict[str, Any] | None = None) -> MCLIP:
        """A fresh mCLIP: the student directory's weights, a new linear map, the teacher's image tower."""
        if not Path(student).is_dir():
            raise UserError(f"--student {student}: not a directory (a transformers text encoder saved with "
                            "save_pretrained, e.g. a local copy of xlm-roberta-base)")
        cfg = ModelConfig(embed_dim=teacher.embed_dim, image=teacher.image,
                          text=TextTowerConfig(kind="hf", path=str(student), pooling=pooling,
                                               context_length=max_length),
                          lock_image=True, init_logit_scale=teacher.logit_scale, variant="LiT")
        model = cls(cfg, {"teacher": teacher.spec, "student": str(student), "pooling": pooling, **(info or {})})
        missing, unexpected = model.load_state_dict(teacher.image_state, strict=False)
        if unexpected or any(k.startswith(("visual.", "image_projection.")) for k in missing):
            raise UserError(f"--teacher {teacher.spec}: its image tower does not fit (unexpected {unexpected[:3]})")
        return model

    def save_pretrained(self, directory: str | Path) -> None:
        super().save_pretrained(directory)
        save_json(Path(directory) / MCLIP_NAME, self.info)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> MCLIP:
        model = super().from_pretrained(directory)
        info = Path(directory) / MCLIP_NAME
        model.info = load_json(info) if info.is_file() else {}  # type: ignore[attr-defined]
        return model  # type: ignore[return-value]

    def text_hidden_states(self, tokens: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(the (B, E) text features, the pooled (B, W) states of each student block) from one forward."""
        tower = self.text
        out = tower.encoder(**tokens, output_hidden_states=True)
        mask = tokens.get("attention_mask")
        pooled = [tower.pool(h, mask) for h in out.hidden_states[1:]]  # depth x (B, W)
        return self.text_projection(pooled[-1]), pooled  # (B, E), depth x (B, W)


def is_mclip_dir(path: str | Path) -> bool:
    return (Path(path) / MCLIP_NAME).is_file()
