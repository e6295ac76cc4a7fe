"""OpenAI CLIP (the ``clip`` package of openai/CLIP) behind the :class:`~feature_extraction.backbone_base.Backbone`
interface: names such as ``RN101`` / ``ViT-B/32`` or a local OpenAI-format ``.pt``.  ``fc`` is exactly
``model.encode_image`` / ``encode_text``; the grid is captured by a forward hook during that same forward pass:
ResNet ``layer4`` output (N, C, h, w) -> (N, h*w, C) row-major, or the ViT ``transformer`` output (the last block,
before ``ln_post``; LND in the clip code) -> (N, h*w, C) without the CLS token.

The model is what ``clip.load(name_or_path, jit=False)`` returns, built the same way (``clip.model.build_model`` on
the checkpoint's state dict, fp32 on the CPU), but the file is read by :func:`read_openai_state`, never by
``clip.load``: that falls back to ``torch.load`` *without* ``weights_only``, which runs any code pickled in a crafted
``.pt`` as soon as torch's default changes (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``).
"""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from feature_extraction.backbone_base import (CLIP_MEAN, CLIP_STD, Backbone, ClipTensorTransform, GridTap,
                                              clip_transform, file_sha256, resize_pos_embed)
from foundations.errors import UsageError
from foundations.images import RGB_CONVERSION

logger = logging.getLogger(__name__)


class OpenAITokenize:
    """Picklable ``clip.tokenize`` with truncation (long passages are cut at the context length)."""

    def __init__(self, context_length: int) -> None:
        self.context_length = context_length

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        import clip

        return {"text": clip.tokenize(texts, context_length=self.context_length, truncate=True)}


def grid_module(visual: nn.Module) -> tuple[str, nn.Module, int]:
    """(arch, the module whose output is the grid, grid width) of an OpenAI image tower (``clip.model``)."""
    if hasattr(visual, "transformer"):  # VisionTransformer: the last block's output (LND, with the CLS token)
        return "vit", visual.transformer, visual.conv1.out_channels
    return "resnet", visual.layer4, visual.attnpool.k_proj.in_features  # ModifiedResNet: layer4 (N, C, h, w)


def encode_with_grid(encode: Callable[[torch.Tensor], torch.Tensor], pixels: torch.Tensor, tap: GridTap | None,
                     arch: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``encode(pixels)`` (N, D) and, with a ``tap`` (the grid module's hook), that module's output of the same
    forward as (N, h*w, C); without one (``--no-grid``) no hook runs."""
    fc = encode(pixels)  # (N, D)
    if tap is None:
        return fc, None
    out = tap.take()
    if arch == "vit":
        return fc, out.permute(1, 0, 2)[:, 1:, :]  # LND -> (N, h*w, C), CLS dropped
    return fc, out.flatten(2).transpose(1, 2)  # (N, C, h, w) -> (N, h*w, C) row-major


NOT_CLIP = "not a CLIP checkpoint"


def read_openai_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of an OpenAI-format CLIP ``.pt`` without unpickling any Python object.

    The released files are TorchScript archives: ``torch.jit.load`` reads them with TorchScript's own unpickler
    (tensors and TorchScript modules, no Python callables) and we keep only ``state_dict()``, as ``clip.load``
    does. Anything else is read with ``torch.load(weights_only=True)`` (tensors and plain containers). A corrupt,
    truncated or foreign file is one :class:`UsageError` saying it is not a CLIP checkpoint.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:  # TorchScript: <name>/constants.pkl beside <name>/data.pkl
            torchscript = any(n.endswith("/constants.pkl") for n in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        torchscript = False
    try:
        if torchscript:
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # first sentence only: never torch's advice to turn weights_only off
        reason = " ".join(str(exc).split(". ")[0].split())
        raise UsageError(f"{path}: {NOT_CLIP} (unreadable as a TorchScript archive or a state dict of tensors: "
                         f"{type(exc).__name__}: {reason[:200]})") from None
    if isinstance(state, dict) and set(state) == {"state_dict"}:
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"{path}: {NOT_CLIP} (expected a state dict of tensors, got {type(state).__name__})")
    if "visual.conv1.weight" not in state or "text_projection" not in state:
        raise UsageError(f"{path}: {NOT_CLIP} (no visual.conv1.weight / text_projection: another kind of model)")
    return dict(state)


def build_openai_clip(state: dict[str, torch.Tensor], path: str | Path, device: str) -> nn.Module:
    """``clip.model.build_model(state)`` on ``device``, fp32 on the CPU: exactly what ``clip.load(jit=False)``
    returns for that file."""
    from clip.model import build_model

    try:
        model = build_model(state).to(device)
    except (KeyError, RuntimeError, ValueError, IndexError, TypeError) as exc:
        raise UsageError(f"{path}: {NOT_CLIP} (its tensors do not form an OpenAI CLIP model: "
                         f"{' '.join(str(exc).split())[:200]})") from None
    if str(device) == "cpu":
        model.float()
    return model


def openai_weights(name: str, flag: str = "--backbone") -> tuple[str, str | None]:
    """(the weights file, its sha256 when the name states it) of an OpenAI name or a local ``.pt``; a named model
    not yet in ``~/.cache/clip`` is downloaded (and its sha256 verified) by the clip package. ``flag`` names the
    option in the errors."""
    import clip

    if name in clip.available_models():
        url = clip.clip._MODELS[name]  # the URL carries the sha256 that clip's _download verifies
        try:
            return clip.clip._download(url, os.path.expanduser("~/.cache/clip")), url.split("/")[-2]
        except (OSError, RuntimeError) as exc:
            raise UsageError(f"{flag} {name}: not in ~/.cache/clip and not downloadable ({exc})") from None
    if Path(name).is_file():
        return str(Path(name).resolve()), None
    raise UsageError(f"{flag} {name!r}: not an OpenAI CLIP name ({', '.join(clip.available_models())}),"
                     " not a local .pt file, and not hf:<dir or hub id>")


class OpenAIClip(Backbone):
    family = "openai-clip"

    def __init__(self, name: str, device: str, compute_dtype: torch.dtype, image_size: int | None) -> None:
        import clip

        self.name, self.device, self.compute_dtype = name, device, compute_dtype
        self.weights_path, named_sha = openai_weights(name)
        self.weights_sha256 = named_sha or file_sha256(self.weights_path)
        # fp16 only on CUDA, through clip's own mixed-precision model; everything else computes in fp32.
        load_device = device if compute_dtype == torch.float16 else "cpu"
        model = build_openai_clip(read_openai_state(self.weights_path), self.weights_path, load_device)
        self.model = model.to(device).eval()
        visual = self.model.visual
        self.arch = "vit" if isinstance(visual, clip.model.VisionTransformer) else "resnet"
        stride = visual.conv1.kernel_size[0] if self.arch == "vit" else 32
        side = self._set_size(visual.input_resolution, image_size, stride)
        if self.arch == "vit":
            visual.positional_embedding = nn.Parameter(resize_pos_embed(visual.positional_embedding.data, side))
            visual.input_resolution = self.image_size
            self.grid_dim, self._grid_module = visual.conv1.out_channels, visual.transformer
        else:
            pool = visual.attnpool
            pool.positional_embedding = nn.Parameter(resize_pos_embed(pool.positional_embedding.data, side))
            self.grid_dim, self._grid_module = pool.k_proj.in_features, visual.layer4
        self.fc_dim = self.model.text_projection.shape[1]
        self.preprocess = clip_transform(self.image_size)
        self.tensor_preprocess = ClipTensorTransform(self.image_size)
        self.tokenize = OpenAITokenize(self.model.context_length)
        self.tokenization = f"clip.tokenize(context_length={self.model.context_length}, truncate=True)"
        self.preprocessing = (f"{RGB_CONVERSION}; Resize(shortest side {self.image_size}, bicubic) -> "
                              f"CenterCrop({self.image_size}) -> ToTensor -> Normalize(mean={CLIP_MEAN}, "
                              f"std={CLIP_STD}) (OpenAI clip transform)")

    def encode_images(self, pixels: torch.Tensor, grid: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        tap = self.grid_tap(self._grid_module) if grid else None
        return encode_with_grid(self.model.encode_image, pixels, tap, self.arch)

    def image_tower(self) -> nn.Module:
        return self.model.visual

    def encode_texts(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model.encode_text(tokens["text"].to(self.device))  # (N, D)
