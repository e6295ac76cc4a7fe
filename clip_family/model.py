"""The CLIP family in one file: an image tower and a text tower, each projected into a joint space, a learnable
logit scale (and bias, for the sigmoid loss). CLIP (Radford et al. 2021), SigLIP (Zhai et al. 2023), LiT
(Zhai et al. 2022: locked image tower) and SigLiT are configurations of this one model (:func:`CLIP`,
:func:`SigLIP`, :func:`LiT`, :func:`SigLiT`, :func:`BaselineCLIP`, :func:`BaselineSigLIP`).

* OpenAI towers are built from the real ``clip`` package classes (``clip.model.CLIP`` is instantiated for its
  initialisation and its ``visual`` / ``transformer`` / ``token_embedding`` / ``ln_final`` modules are kept, with
  QuickGELU), so the parameter names are the OpenAI ones and an OpenAI ``.pt`` state dict loads as it is
  (:meth:`ClipFamilyModel.from_openai`) and exports back (:mod:`clip_family.export`). The text projection is an
  ``nn.Linear`` (OpenAI's ``text_projection`` matrix is its transposed weight).
* transformers towers: any ``AutoModel`` directory (a CLIP/SigLIP dir gives its vision or text half), pooled by
  ``pooler_output`` / CLS (images) or mean / CLS (text), each with its own ``nn.Linear`` projection.
* LiT locks: :meth:`ClipFamilyModel.lock_image_tower` / :meth:`~ClipFamilyModel.lock_text_tower` (open_clip's names)
  keep the last N layer groups of a locked tower trainable, grouped as open_clip groups them
  (:func:`image_lock_groups`, :func:`text_lock_groups`); locked groups stay in eval mode.
* :meth:`encode_image` takes a path, a list of paths, a folder (its images sorted), a ``PIL.Image`` or a list of
  them, an ``np.ndarray`` (HWC / NHWC uint8) or a ``torch.Tensor`` (CHW / NCHW, already preprocessed)
  (:mod:`clip_family.inputs`); :meth:`encode_text` takes a string or a list of strings.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from clip_family.config import ModelConfig, has_hf_weights, named_config, tiny_config, with_variant
from clip_family.inputs import ImageInput, to_pixels
from clip_family.losses import scale_from_param
from foundations.config import load_json, save_json
from foundations.errors import UserError
from vlt5.checkpoint import read_safetensors

logger = logging.getLogger(__name__)

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"


# -- tokenizers and image processors --------------------------------------------------------------------------------
class OpenAITokenizer:
    """``clip.tokenize`` (OpenAI's BPE, 49408 entries) at the tower's context length, truncating long texts."""

    def __init__(self, context_length: int) -> None:
        self.context_length = context_length

    def __call__(self, texts: list[str]) -> dict[str, Tensor]:
        import clip

        return {"input_ids": clip.tokenize(texts, context_length=self.context_length, truncate=True)}


class HFTokenizer:
    def __init__(self, path: str, max_length: int) -> None:
        from transformers import AutoTokenizer

        self.tokenizer, self.max_length = AutoTokenizer.from_pretrained(path), max_length

    def __call__(self, texts: list[str]) -> dict[str, Tensor]:
        out = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}


class HFProcessor:
    """A transformers image processor as ``PIL.Image -> (3, H, W)`` tensor."""

    def __init__(self, path: str) -> None:
        from transformers import AutoImageProcessor

        self.processor = AutoImageProcessor.from_pretrained(path)

    def __call__(self, image: Any) -> Tensor:
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]


def _hf_model(path: str) -> nn.Module:
    """``AutoModel`` of a directory: with its weights when it has them, else from its config (our saved towers:
    their weights are in the model's own ``model.safetensors``)."""
    from transformers import AutoConfig, AutoModel

    if has_hf_weights(path):
        return AutoModel.from_pretrained(path)
    return AutoModel.from_config(AutoConfig.from_pretrained(path))


class CheckpointedSequential(nn.Sequential):
    """The same blocks (same parameter names), each recomputed in the backward pass while training."""

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        for block in self:
            x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False) if self.training else block(x)
        return x


def _set_checkpointing(parent: nn.Module, name: str, enabled: bool) -> None:
    blocks = getattr(parent, name)
    cls = CheckpointedSequential if enabled else nn.Sequential
    if type(blocks) is not cls:
        setattr(parent, name, cls(*blocks))


# -- towers ----------------------------------------------------------------------------------------------------------
class OpenAITextTower(nn.Module):
    """CLIP's causal text transformer, pooled at the end-of-text token (the largest id of each row)."""

    def __init__(self, reference: nn.Module) -> None:
        super().__init__()
        self.token_embedding = reference.token_embedding
        self.positional_embedding = reference.positional_embedding
        self.transformer = reference.transformer
        self.ln_final = reference.ln_final
        self.width = reference.transformer.width

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        x = self.token_embedding(input_ids) + self.positional_embedding  # (B, L, W)
        x = self.transformer(x.permute(1, 0, 2))  # (L, B, W)
        x = self.ln_final(x.permute(1, 0, 2))  # (B, L, W)
        return x[torch.arange(x.shape[0]), input_ids.argmax(dim=-1)]  # (B, W)


class HFTextTower(nn.Module):
    def __init__(self, path: str, pooling: str) -> None:
        super().__init__()
        model = _hf_model(path)
        self.encoder = getattr(model, "text_model", model)
        self.pooling = pooling
        self.width = self.encoder.config.hidden_size

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, L, W)
        return self.pool(hidden, attention_mask)

    def pool(self, hidden: Tensor, attention_mask: Tensor | None) -> Tensor:
        """(B, L, W) hidden states of any layer -> (B, W) by the tower's pooling (mean over real tokens, or CLS)."""
        if self.pooling == "cls" or attention_mask is None:
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B, W)


class HFVisionTower(nn.Module):
    def __init__(self, path: str) -> None:
        super().__init__()
        model = _hf_model(path)
        self.encoder = getattr(model, "vision_model", model)
        self.width = self.encoder.config.hidden_size

    def forward(self, pixels: Tensor) -> Tensor:
        out = self.encoder(pixel_values=pixels)
        pooled = getattr(out, "pooler_output", None)
        return pooled if pooled is not None else out.last_hidden_state[:, 0]  # (B, W)


def _openai_reference(cfg: ModelConfig) -> nn.Module:
    """A freshly initialised ``clip.model.CLIP`` of the config's OpenAI shapes (its modules become the towers)."""
    from clip.model import CLIP as OpenAICLIP

    image, text = cfg.image, cfg.text
    if text.kind != "openai":  # only the image tower is kept: build the smallest text transformer clip allows
        text = dataclasses.replace(text, kind="openai", context_length=1, vocab_size=1, width=64, heads=1, layers=1)
    return OpenAICLIP(embed_dim=cfg.embed_dim, image_resolution=image.image_resolution,
                      vision_layers=image.layers[0] if image.is_vit else image.layers, vision_width=image.width,
                      vision_patch_size=image.patch_size, context_length=text.context_length,
                      vocab_size=text.vocab_size, transformer_width=text.width, transformer_heads=text.heads,
                      transformer_layers=text.layers)


# -- locking (LiT) ---------------------------------------------------------------------------------------------------
LockGroup = list  # modules and parameters that are locked / unlocked together (``nn.Module | nn.Parameter`` items)


def image_lock_groups(visual: nn.Module) -> list[LockGroup]:
    """The image tower's layer groups, first to last; ``lock_image_unlocked_groups = N`` keeps the last N trainable.

    * OpenAI ViT — open_clip's ``VisionTransformer.lock``: [conv1, class + positional embeddings, ln_pre], each
      block but the last, [last block, ln_post], [proj];
    * ModifiedResNet (open_clip has no partial lock for it; timm's ResNet grouping): [stem convs + BatchNorms],
      layer1, layer2, layer3, layer4, [attnpool (its ``c_proj`` is the projection)];
    * transformers — :func:`hf_lock_groups` (the tower's own projection outside the model is never locked)."""
    if isinstance(visual, HFVisionTower):
        return hf_lock_groups(visual.encoder)
    if hasattr(visual, "transformer"):  # clip.model.VisionTransformer
        blocks = list(visual.transformer.resblocks)
        return [[visual.conv1, visual.class_embedding, visual.positional_embedding, visual.ln_pre],
                *[[b] for b in blocks[:-1]], [blocks[-1], visual.ln_post], [visual.proj]]
    stem = [visual.conv1, visual.bn1, visual.conv2, visual.bn2, visual.conv3, visual.bn3]  # clip.model.ModifiedResNet
    return [stem, [visual.layer1], [visual.layer2], [visual.layer3], [visual.layer4], [visual.attnpool]]


def text_lock_groups(text: nn.Module, projection: nn.Module) -> list[LockGroup]:
    """The text tower's layer groups, first to last; ``lock_text_unlocked_layers = N`` keeps the last N trainable.

    * OpenAI text transformer — open_clip's ``lock_text_tower``: [token + positional embeddings], each block but
      the last, [last block, ln_final], [text projection] (a locked OpenAI text tower locks its projection too);
    * transformers — :func:`hf_lock_groups`, as open_clip's ``HFTextEncoder.lock`` (its projection always trains)."""
    if isinstance(text, OpenAITextTower):
        blocks = list(text.transformer.resblocks)
        return [[text.token_embedding, text.positional_embedding], *[[b] for b in blocks[:-1]],
                [blocks[-1], text.ln_final], [projection]]
    return hf_lock_groups(text.encoder)  # type: ignore[arg-type]


def hf_lock_groups(model: nn.Module) -> list[LockGroup]:
    """A transformers model's groups: [what comes before the layer list (embeddings, pre-LN)], each layer but the
    last, [last layer + what comes after it (final LN, pooler, head)]; the layer list is the longest
    ``nn.ModuleList`` (BERT ``encoder.layer``, CLIP / SigLIP ``encoder.layers``). open_clip's ``HFTextEncoder.lock``
    counts [embeddings, *layers] and never locks what follows the layers unless all are locked: the same sets."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m)]
    if not lists:
        raise UserError(f"{type(model).__name__}: no list of layers found for partial locking")
    blocks = max(lists, key=len)

    def around(module: nn.Module) -> tuple[LockGroup, LockGroup]:
        before: LockGroup = list(module.parameters(recurse=False))
        after: LockGroup = []
        seen = False
        for child in module.children():
            if child is blocks:
                seen = True
            elif any(m is blocks for m in child.modules()):
                inner_before, inner_after = around(child)
                before, after, seen = before + inner_before, after + inner_after, True
            else:
                (after if seen else before).append(child)
        return before, after

    before, after = around(model)
    return [g for g in ([*before], *[[b] for b in list(blocks)[:-1]], [blocks[-1], *after]) if g]


def locked_part(groups: list[LockGroup], unlocked: int) -> list[LockGroup]:
    """The groups a lock with ``unlocked`` trainable last groups keeps locked (all of them when 0, none when more)."""
    return groups[:len(groups) - min(unlocked, len(groups))]


def lock_groups(groups: list[LockGroup], unlocked: int, freeze_layer_norm: bool = True) -> list[LockGroup]:
    """``requires_grad`` off for all but the last ``unlocked`` groups (on for those); returns the locked groups.
    ``freeze_layer_norm=False`` leaves the LayerNorms of the locked groups trainable (open_clip's HF text lock)."""
    n_locked = len(locked_part(groups, unlocked))
    for i, group in enumerate(groups):
        for item in group:
            for p in [item] if isinstance(item, nn.Parameter) else item.parameters():
                p.requires_grad_(i >= n_locked)
    if not freeze_layer_norm:
        for group in groups[:n_locked]:
            for item in group:
                for m in [] if isinstance(item, nn.Parameter) else item.modules():
                    if isinstance(m, nn.LayerNorm):
                        m.requires_grad_(True)
    return groups[:n_locked]


# -- the model -------------------------------------------------------------------------------------------------------
class ClipFamilyModel(nn.Module):
    """Image tower + text tower + projections + logit scale (+ bias); see the module docstring."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.pretrained_dir: str | None = None  # the saved model directory it was loaded from, if any
        openai_parts = cfg.image.kind == "openai" or cfg.text.kind == "openai"
        reference = _openai_reference(cfg) if openai_parts else None
        if cfg.image.kind == "openai":
            from clip.clip import _transform

            self.visual: nn.Module = reference.visual  # type: ignore[union-attr]  # includes its projection
            self.image_projection: nn.Module = nn.Identity()
            self.processor: Any = _transform(cfg.image.image_resolution)
        else:
            self.visual = HFVisionTower(cfg.image.path)  # type: ignore[arg-type]
            self.image_projection = nn.Linear(self.visual.width, cfg.embed_dim, bias=False)
            self.processor = HFProcessor(cfg.image.path)  # type: ignore[arg-type]
        if cfg.text.kind == "openai":
            self.text: nn.Module = OpenAITextTower(reference)
            self.tokenizer: Any = OpenAITokenizer(cfg.text.context_length)
        else:
            self.text = HFTextTower(cfg.text.path, cfg.text.pooling)  # type: ignore[arg-type]
            self.tokenizer = HFTokenizer(cfg.text.path, cfg.text.context_length)  # type: ignore[arg-type]
        self.text_projection = nn.Linear(self.text.width, cfg.embed_dim, bias=False)
        if reference is not None and cfg.text.kind == "openai":
            with torch.no_grad():
                self.text_projection.weight.copy_(reference.text_projection.T)
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.init_logit_scale)))
        self.logit_bias = (nn.Parameter(torch.tensor(float(cfg.init_logit_bias)))
                           if cfg.init_logit_bias is not None else None)
        self.apply_locks()

    # names users know
    @property
    def vision_model(self) -> nn.Module:
        return self.visual

    @property
    def text_model(self) -> nn.Module:
        return self.text

    def apply_locks(self) -> None:
        """``requires_grad`` off for the locked towers but their last unlocked groups (LiT: the image tower, with its
        projection when it is inside the tower; a transformers tower's own projection still trains), and off
        everywhere for the Baseline variants."""
        cfg = self.config
        self.requires_grad_(True)
        if cfg.lock_image:
            self.visual.requires_grad_(False)
            lock_groups(image_lock_groups(self.visual), cfg.lock_image_unlocked_groups)
        if cfg.lock_text:
            self.text.requires_grad_(False)
            lock_groups(text_lock_groups(self.text, self.text_projection), cfg.lock_text_unlocked_layers,
                        cfg.lock_text_freeze_layer_norm)
        if cfg.variant.startswith("Baseline"):
            self.requires_grad_(False)
        from clip_family.peft_towers import keep_only_adapters_trainable

        keep_only_adapters_trainable(self)  # towers wrapped by peft: only their adapters train

    def set_locks(self, **changes: Any) -> None:
        """Change the config's lock fields (``lock_image``, ``lock_image_unlocked_groups``, ``lock_text``,
        ``lock_text_unlocked_layers``, ``lock_text_freeze_layer_norm``) and apply them (``requires_grad``, modes)."""
        self.config = dataclasses.replace(self.config, **changes)
        self.apply_locks()
        self.train(self.training)

    def lock_image_tower(self, unlocked_groups: int = 0) -> None:
        """Lock the image tower but its last ``unlocked_groups`` layer groups (open_clip's ``lock_image_tower``)."""
        self.set_locks(lock_image=True, lock_image_unlocked_groups=unlocked_groups)

    def lock_text_tower(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True) -> None:
        """Lock the text tower but its last ``unlocked_layers`` layer groups (open_clip's ``lock_text_tower``)."""
        self.set_locks(lock_text=True, lock_text_unlocked_layers=unlocked_layers,
                       lock_text_freeze_layer_norm=freeze_layer_norm)

    def locked_modules(self) -> list[nn.Module]:
        """The modules a lock keeps in eval mode: a whole locked tower, or the locked groups of a partly locked one."""
        cfg, out = self.config, []
        for locked, unlocked, tower, groups in (
                (cfg.lock_image, cfg.lock_image_unlocked_groups, self.visual, lambda: image_lock_groups(self.visual)),
                (cfg.lock_text, cfg.lock_text_unlocked_layers, self.text,
                 lambda: text_lock_groups(self.text, self.text_projection))):
            if locked and not unlocked:
                out.append(tower)
            elif locked:
                out += [m for g in locked_part(groups(), unlocked) for m in g if isinstance(m, nn.Module)]
        return out

    def train(self, mode: bool = True) -> ClipFamilyModel:
        """Locked towers (or their locked groups) stay in eval mode: their BatchNorm statistics and dropout never
        change (open_clip's ``freeze_bn_stats``)."""
        super().train(mode)
        for module in self.locked_modules():
            module.eval()
        return self

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute activations block by block in the backward pass (both towers): less memory, more time."""
        if isinstance(self.text, OpenAITextTower):
            _set_checkpointing(self.text.transformer, "resblocks", enabled)
        if hasattr(self.visual, "transformer"):  # OpenAI ViT
            _set_checkpointing(self.visual.transformer, "resblocks", enabled)
        elif hasattr(self.visual, "layer1"):  # OpenAI ModifiedResNet
            for name in ("layer1", "layer2", "layer3", "layer4"):
                _set_checkpointing(self.visual, name, enabled)
        for tower in (self.visual, self.text):
            encoder = getattr(tower, "encoder", None)
            if encoder is not None and hasattr(encoder, "gradient_checkpointing_enable") and enabled:
                encoder.gradient_checkpointing_enable()

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    # -- encoding -----------------------------------------------------------------------------------------------------
    def image_features(self, pixels: Tensor) -> Tensor:
        """(B, 3, R, R) preprocessed pixels -> (B, E) projected, not normalised."""
        return self.image_projection(self.visual(pixels))

    def text_features(self, tokens: dict[str, Tensor]) -> Tensor:
        return self.text_projection(self.text(**tokens))  # (B, E)

    def tokenize(self, texts: str | list[str]) -> dict[str, Tensor]:
        texts = [texts] if isinstance(texts, str) else list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise UserError(f"encode_text: item {i} is a {type(t).__name__}, expected a string")
        return self.tokenizer(texts)

    @torch.no_grad()
    def encode_image(self, images: ImageInput, normalize: bool = False, batch_size: int = 64) -> Tensor:
        """(N, E) embeddings of any accepted image input (see :mod:`clip_family.inputs`)."""
        pixels = to_pixels(images, self.processor)  # (N, 3, R, R)
        out = torch.cat([self.image_features(pixels[i: i + batch_size].to(self.device))
                         for i in range(0, len(pixels), batch_size)]) if len(pixels) else \
            torch.zeros(0, self.config.embed_dim)
        return F.normalize(out, dim=-1) if normalize else out

    @torch.no_grad()
    def encode_text(self, texts: str | list[str], normalize: bool = False, batch_size: int = 256) -> Tensor:
        tokens = self.tokenize(texts)
        n = len(tokens["input_ids"])
        out = torch.cat([self.text_features({k: v[i: i + batch_size].to(self.device) for k, v in tokens.items()})
                         for i in range(0, n, batch_size)])
        return F.normalize(out, dim=-1) if normalize else out

    def features(self, pixels: Tensor | None, tokens: dict[str, Tensor], tower_output: Tensor | None = None
                 ) -> tuple[Tensor, Tensor]:
        """(normalised image features, normalised text features), (B, E) each. ``tower_output`` (B, W): the image
        tower's stored output (pre-embedding a locked tower) instead of pixels."""
        visual = self.visual(pixels) if tower_output is None else tower_output  # (B, W)
        image = F.normalize(self.image_projection(visual), dim=-1)  # (B, E)
        text = F.normalize(self.text_features(tokens), dim=-1)  # (B, E)
        return image, text

    def logit_params(self) -> tuple[Tensor, Tensor | None]:
        """(exp-ed clamped logit scale, logit bias or None)."""
        return scale_from_param(self.logit_scale), self.logit_bias

    def forward(self, pixels: Tensor | None, tokens: dict[str, Tensor], tower_output: Tensor | None = None
                ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """(normalised image features, normalised text features, exp-ed clamped logit scale, logit bias)."""
        return *self.features(pixels, tokens, tower_output), *self.logit_params()

    # -- files ----------------------------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        """``config.json`` + ``model.safetensors`` (+ the transformers towers' files, so the dir stands alone)."""
        directory = Path(directory)
        from clip_family.peft_towers import adapted_towers, save_adapter_checkpoint

        if adapted_towers(self):  # towers with peft adapters: an adapter-only checkpoint
            return save_adapter_checkpoint(self, directory)
        directory.mkdir(parents=True, exist_ok=True)
        cfg = self.config.to_dict()
        for name, tower in (("image", self.visual), ("text", self.text)):
            if isinstance(tower, (HFVisionTower, HFTextTower)):
                sub = directory / f"{name}_tower"
                tower.encoder.config.save_pretrained(sub)
                source = Path(getattr(self.config, name).path)  # type: ignore[arg-type]
                for extra in source.glob("*"):  # tokenizer / processor files
                    if extra.is_file() and extra.suffix in (".json", ".txt", ".model") and extra.name != "config.json":
                        (sub / extra.name).write_bytes(extra.read_bytes())
                cfg[name]["path"] = f"{name}_tower"
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_NAME))
        save_json(directory / CONFIG_NAME, cfg)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> ClipFamilyModel:
        directory = Path(directory)
        cfg_data = load_json(directory / CONFIG_NAME)
        for name in ("image", "text"):
            path = cfg_data.get(name, {}).get("path")
            if path and not Path(path).is_absolute():
                cfg_data[name]["path"] = str(directory / path)
        model = cls(ModelConfig.from_dict(cfg_data, str(directory / CONFIG_NAME)))
        from clip_family.peft_towers import ADAPTERS_NAME, read_manifest

        if (directory / ADAPTERS_NAME).is_file():  # an adapter-only checkpoint (clip_family.peft_towers)
            base = read_manifest(directory).get("base")
            if base:  # else the towers' own directories hold the base weights
                model.load_weights(Path(base) / WEIGHTS_NAME)
                model.pretrained_dir = base
        else:
            model.pretrained_dir = str(directory.resolve())  # the base of adapters trained on top of it
        model.load_checkpoint(directory)
        return model

    def load_checkpoint(self, directory: str | Path) -> None:
        """Load a directory written by :meth:`save_pretrained` into this model in place (full or adapter-only)."""
        from clip_family.peft_towers import ADAPTERS_NAME, load_adapters

        directory = Path(directory)
        if (directory / ADAPTERS_NAME).is_file():
            load_adapters(self, directory)
        else:
            self.load_weights(directory / WEIGHTS_NAME)

    def load_weights(self, path: Path) -> None:
        if not Path(path).is_file():
            raise UserError(f"{path}: no such file")
        state = read_safetensors(path)  # a truncated or corrupt file: one line naming it
        missing, unexpected = self.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise UserError(f"{path}: weights do not match the config (missing {missing[:5]}, unexpected "
                            f"{unexpected[:5]})")

    @classmethod
    def from_openai(cls, path: str | Path, variant: str = "CLIP") -> ClipFamilyModel:
        """Load an OpenAI-format ``.pt`` (a released checkpoint or a state dict) as a model of ``variant``."""
        from clip_family.export import config_from_openai_state, load_openai_state, openai_to_ours

        state = load_openai_state(path)
        cfg = with_variant(config_from_openai_state(state), variant)
        model = cls(cfg)
        ours = openai_to_ours(state)
        if cfg.init_logit_bias is not None:
            ours["logit_bias"] = model.logit_bias.detach().clone()  # type: ignore[union-attr]
            ours["logit_scale"] = model.logit_scale.detach().clone()
        model.load_state_dict({k: v.float() for k, v in ours.items()})
        return model


# -- the variants, by the names users know ---------------------------------------------------------------------------
def build(spec: str | ModelConfig, variant: str) -> ClipFamilyModel:
    """A model of ``variant`` from a ModelConfig, an architecture name (``RN50``, ``ViT-B/32``, ``tiny``), a
    config JSON, a model directory (weights kept) or an OpenAI ``.pt`` (weights kept)."""
    if isinstance(spec, ModelConfig):
        return ClipFamilyModel(with_variant(spec, variant))
    if spec == "tiny":
        return ClipFamilyModel(tiny_config(variant))
    path = Path(spec)
    if path.is_dir():
        model = ClipFamilyModel.from_pretrained(path)
        if model.config.variant != variant:
            from clip_family.peft_towers import adapted_towers

            if adapted_towers(model):
                raise UserError(f"{path}: an adapter-only checkpoint of variant {model.config.variant}; to train it "
                                f"as {variant}, merge its adapters first (clip-train --export-merged DIR)")
            fresh = ClipFamilyModel(with_variant(model.config, variant))
            state = {k: v for k, v in model.state_dict().items() if not k.startswith("logit_")}
            state.update({k: v for k, v in fresh.state_dict().items() if k.startswith("logit_")})
            fresh.load_state_dict(state)
            model = fresh
        return model
    if path.suffix == ".json":
        return ClipFamilyModel(with_variant(ModelConfig.from_dict(load_json(path), str(path)), variant))
    if path.suffix in (".pt", ".pth", ".bin"):
        if not path.is_file():
            raise UserError(f"{path}: no such file")
        return ClipFamilyModel.from_openai(path, variant)
    return ClipFamilyModel(with_variant(named_config(spec), variant))


def CLIP(spec: str | ModelConfig = "ViT-B/32") -> ClipFamilyModel:
    """Both towers train, softmax (InfoNCE) loss."""
    return build(spec, "CLIP")


def SigLIP(spec: str | ModelConfig = "ViT-B/32") -> ClipFamilyModel:
    """Both towers train, sigmoid loss."""
    return build(spec, "SigLIP")


def LiT(spec: str | ModelConfig = "ViT-B/32") -> ClipFamilyModel:
    """Locked image tower, softmax loss (pass a pretrained model dir or ``.pt`` for a useful image tower)."""
    return build(spec, "LiT")


def SigLiT(spec: str | ModelConfig = "ViT-B/32") -> ClipFamilyModel:
    """Locked image tower, sigmoid loss."""
    return build(spec, "SigLiT")


def BaselineCLIP(spec: str | ModelConfig) -> ClipFamilyModel:
    """A pretrained model used as it is (nothing trains), softmax scoring; for comparisons."""
    return build(spec, "BaselineCLIP")


def BaselineSigLIP(spec: str | ModelConfig) -> ClipFamilyModel:
    """A pretrained model used as it is, sigmoid scoring."""
    return build(spec, "BaselineSigLIP")


VARIANT_BUILDERS = {"CLIP": CLIP, "SigLIP": SigLIP, "LiT": LiT, "SigLiT": SigLiT, "BaselineCLIP": BaselineCLIP,
                    "BaselineSigLIP": BaselineSigLIP}
