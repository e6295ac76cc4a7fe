"""OpenAI ``.pt`` in and out: the bridge to ``clip.load`` and so to feature extraction (``--backbone model.pt``).

Our OpenAI towers keep OpenAI's parameter names (``visual.*``; the text tower's under ``text.``), so the mapping
is a renaming plus one transpose (OpenAI's ``text_projection`` is (W, E), our ``nn.Linear`` weight is (E, W)).
The architecture is inferred from the state dict exactly as ``clip.model.build_model`` infers it (text heads =
width // 64, ViT heads = width // 64, ResNet heads = width·32 // 64), so only configs that follow that rule export.
``clip.load`` builds the model in fp16 for its weight layers and then (on the CPU) casts to fp32: weights that
are not fp16-representable are rounded on the way.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from clip_family.config import ImageTowerConfig, ModelConfig, TextTowerConfig
from foundations.errors import UserError
from foundations.io import atomic_write_bytes

logger = logging.getLogger(__name__)

_TEXT_KEYS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.")
_DROP = ("input_resolution", "context_length", "vocab_size")


def load_openai_state(path: str | Path) -> dict[str, Tensor]:
    """The state dict of an OpenAI ``.pt`` (a TorchScript archive, the released files, or a plain state dict), read
    without unpickling Python objects (:func:`feature_extraction.openai_backbone.read_openai_state`)."""
    from feature_extraction.openai_backbone import read_openai_state

    return {k: v for k, v in read_openai_state(path).items() if k not in _DROP}


def config_from_openai_state(state: dict[str, Tensor]) -> ModelConfig:
    """The ModelConfig of an OpenAI state dict, inferred as ``clip.model.build_model`` does."""
    if "visual.proj" in state:
        width = state["visual.conv1.weight"].shape[0]
        layers: tuple[int, ...] = (len([k for k in state if k.startswith("visual.")
                                        and k.endswith(".attn.in_proj_weight")]),)
        patch = state["visual.conv1.weight"].shape[-1]
        grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        image = ImageTowerConfig(image_resolution=patch * grid, layers=layers, width=width, patch_size=patch)
    else:
        layers = tuple(len({k.split(".")[2] for k in state if k.startswith(f"visual.layer{b}.")}) for b in range(1, 5))
        width = state["visual.layer1.0.conv1.weight"].shape[0]
        side = round((state["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
        image = ImageTowerConfig(image_resolution=side * 32, layers=layers, width=width, patch_size=None)
    text_width = state["ln_final.weight"].shape[0]
    text = TextTowerConfig(context_length=state["positional_embedding"].shape[0],
                           vocab_size=state["token_embedding.weight"].shape[0], width=text_width,
                           heads=max(1, text_width // 64),
                           layers=len({k.split(".")[2] for k in state if k.startswith("transformer.resblocks.")}))
    return ModelConfig(embed_dim=state["text_projection"].shape[1], image=image, text=text)


def openai_to_ours(state: dict[str, Tensor]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key == "text_projection":
            out["text_projection.weight"] = value.T.contiguous()
        elif key.startswith(_TEXT_KEYS):
            out[f"text.{key}"] = value
        else:
            out[key] = value  # visual.*, logit_scale
    return out


def ours_to_openai(state: dict[str, Tensor]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()
        elif key.startswith("text."):
            out[key[len("text."):]] = value
        elif key == "logit_bias":
            continue
        else:
            out[key] = value
    return out


def export_openai(model: nn.Module, path: str | Path) -> Path:
    """Write ``model`` (a :class:`clip_family.model.ClipFamilyModel`) as an OpenAI-format state dict that
    ``clip.load(path, jit=False)`` loads (fp32 values)."""
    cfg = model.config
    if cfg.image.kind != "openai" or cfg.text.kind != "openai":
        raise UserError("only models with OpenAI image and text towers export to an OpenAI .pt")
    if cfg.text.width // 64 != cfg.text.heads or cfg.text.width % 64:
        raise UserError(f"text width {cfg.text.width} with {cfg.text.heads} heads cannot be read back by clip.load "
                        "(it infers heads = width // 64)")
    if model.logit_bias is not None:
        logger.warning("the OpenAI format has no logit bias: the sigmoid bias is dropped from the export")
    state = ours_to_openai({k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()})
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())
    return path
