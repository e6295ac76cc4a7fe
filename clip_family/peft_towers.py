"""Vision–language pre-training from unimodal encoders: two transformers towers (a ViT / DINOv2 image model and a
BERT / RoBERTa text model, each given by directory) joined by fresh projections (:class:`TowersSection`), and
parameter-efficient training of the towers through the real ``peft`` library (:class:`PeftSection`).

* :func:`apply_peft` wraps a tower's transformers model in ``peft.get_peft_model`` (LoRA, LoHa, LoKr or IA3;
  target modules configurable, peft's defaults for the model type otherwise): the tower's own weights freeze, the
  adapters train; the projections and the logit scale train as always. The wrapper is visible in ``print(model)``
  (``text.encoder`` is a ``PeftModel``).
* Adapter-only checkpoints (:func:`save_adapter_checkpoint`, read back by ``ClipFamilyModel.from_pretrained``):
  ``adapters.json`` (which towers, where the base weights come from), ``adapters/<tower>/`` in peft's own format
  (``adapter_config.json`` + ``adapter_model.safetensors``: ``PeftModel.from_pretrained(tower_model, dir)`` reads
  it), ``rest.safetensors`` (everything outside the adapted towers: projections, logit scale, an unadapted tower)
  and ``config.json`` (the model config, tower paths absolute). The base weights are the towers' own directories,
  or — when the model was loaded from a saved model directory — that directory (``base``).
* :func:`merge_adapters` folds the adapters into the towers' weights (``merge_and_unload``): the model is then a
  plain ``ClipFamilyModel`` whose ``save_pretrained`` is a full, standalone directory.

This module never imports :mod:`clip_family.model` (the model imports it lazily for its files).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn

from clip_family.config import ImageTowerConfig, ModelConfig, TextTowerConfig, has_hf_weights
from foundations.config import load_json, save_json
from foundations.errors import ConfigError, UserError
from vlt5.checkpoint import read_safetensors

logger = logging.getLogger(__name__)

ADAPTERS_NAME, REST_NAME, ADAPTER_DIR = "adapters.json", "rest.safetensors", "adapters"
TOWERS = ("image", "text")
ADAPTER_NAME = "default"  # peft's adapter name: parameter names of the adapters hold it as a component
# method -> (peft config class, its kwargs from a PeftSection); a dict literal of the methods we pass through
PEFT_METHODS: dict[str, tuple[str, Any]] = {
    "lora": ("LoraConfig", lambda s: {"r": s.lora_r, "lora_alpha": s.lora_alpha, "lora_dropout": s.lora_dropout}),
    "loha": ("LoHaConfig", lambda s: {"r": s.lora_r, "alpha": s.lora_alpha, "module_dropout": s.lora_dropout}),
    "lokr": ("LoKrConfig", lambda s: {"r": s.lora_r, "alpha": s.lora_alpha, "module_dropout": s.lora_dropout}),
    "ia3": ("IA3Config", lambda s: {"feedforward_modules": []}),
}


def _help(text: str, **extra: Any) -> Any:
    return {"help": text, **extra}


@dataclass
class TowersSection:
    image_tower: str | None = field(default=None, metadata=_help(
        "a transformers vision model directory (ViT, DINOv2, the vision half of a CLIP/SigLIP dir): with "
        "--text-tower it replaces --model-name's towers, projections initialised fresh"))
    text_tower: str | None = field(default=None, metadata=_help(
        "a transformers text model directory (BERT, RoBERTa, XLM-R, a language's own BERT) with its tokenizer"))
    embed_dim: int = field(default=512, metadata=_help("joint embedding size of the fresh projections"))
    text_pooling: str = field(default="mean", metadata=_help("text tower pooling", choices=("mean", "cls")))
    context_length: int = field(default=77, metadata=_help("text tokens kept (longer texts are truncated)"))

    def __post_init__(self) -> None:
        if bool(self.image_tower) != bool(self.text_tower):
            raise ConfigError("--image-tower and --text-tower go together (two transformers towers); for one "
                              "transformers tower with an OpenAI one, pass a config JSON as --model-name")
        if self.embed_dim < 1 or self.context_length < 2:
            raise ConfigError(f"towers.embed_dim >= 1 and context_length >= 2 (got {self.embed_dim}, "
                              f"{self.context_length})")

    def model_config(self) -> ModelConfig | None:
        """The ModelConfig of the two towers (variant CLIP; the trainer applies its variant), or None if unset."""
        if not self.image_tower:
            return None
        for flag, path in (("--image-tower", self.image_tower), ("--text-tower", self.text_tower)):
            if not (Path(path) / "config.json").is_file():  # type: ignore[arg-type]
                raise UserError(f"{flag} {path}: not a transformers model directory (no config.json)")
        return ModelConfig(embed_dim=self.embed_dim,
                           image=ImageTowerConfig(kind="hf", path=str(Path(self.image_tower).resolve())),
                           text=TextTowerConfig(kind="hf", path=str(Path(self.text_tower).resolve()),  # type: ignore
                                                pooling=self.text_pooling, context_length=self.context_length))


@dataclass
class PeftSection:
    peft_method: str = field(default="none", metadata=_help(
        "parameter-efficient training of the transformers towers through peft", choices=("none", *PEFT_METHODS)))
    peft_towers: tuple[str, ...] = field(default=TOWERS, metadata=_help("which towers get adapters (image text)"))
    lora_r: int = field(default=8, metadata=_help("LoRA / LoHa / LoKr rank"))
    lora_alpha: float = field(default=16.0, metadata=_help("LoRA alpha (scaling alpha / r)"))
    lora_dropout: float = field(default=0.0, metadata=_help("dropout on the adapter path"))
    image_target_modules: tuple[str, ...] = field(default=(), metadata=_help(
        "module names (or suffixes) to adapt in the image tower, e.g. query value (default: peft's for the model "
        "type; ViT and DINOv2 need them)"))
    text_target_modules: tuple[str, ...] = field(default=(), metadata=_help(
        "module names to adapt in the text tower (default: peft's for the model type: BERT/RoBERTa query value)"))

    def __post_init__(self) -> None:
        self.peft_towers = tuple(self.peft_towers)
        if self.peft_method != "none" and self.peft_method not in PEFT_METHODS:
            raise ConfigError(f"peft.peft_method must be none or one of {tuple(PEFT_METHODS)}, got "
                              f"{self.peft_method!r}")
        bad = [t for t in self.peft_towers if t not in TOWERS]
        if bad or not self.peft_towers:
            raise ConfigError(f"peft.peft_towers: {bad or 'none given'}; choose from image, text")
        if self.lora_r < 1 or not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"peft: lora_r >= 1 and 0 <= lora_dropout < 1 (got {self.lora_r}, "
                              f"{self.lora_dropout})")

    @property
    def enabled(self) -> bool:
        return self.peft_method != "none"

    def peft_config(self, tower: str) -> Any:
        """The peft config object of ``tower`` (``peft.LoraConfig`` ...)."""
        import peft

        name, kwargs = PEFT_METHODS[self.peft_method]
        targets = self.image_target_modules if tower == "image" else self.text_target_modules
        extra = {"target_modules": list(targets)} if targets else {}
        return getattr(peft, name)(**kwargs(self), **extra)


# -- towers with adapters ---------------------------------------------------------------------------------------------
def _tower(model: nn.Module, name: str) -> nn.Module:
    return model.visual if name == "image" else model.text  # type: ignore[return-value]


def _prefixes(towers: Iterable[str]) -> tuple[str, ...]:
    """The state-dict prefixes of the named towers (``visual.`` / ``text.``)."""
    return tuple(f"{'visual' if name == 'image' else 'text'}." for name in towers)


def is_adapted(tower: nn.Module) -> bool:
    """A transformers tower whose model is wrapped by peft."""
    return hasattr(getattr(tower, "encoder", None), "peft_config")


def adapted_towers(model: nn.Module) -> dict[str, nn.Module]:
    return {name: _tower(model, name) for name in TOWERS if is_adapted(_tower(model, name))}


def is_adapter_parameter(name: str) -> bool:
    """peft names every adapter tensor with the adapter's name as one component (``lora_A.default.weight``)."""
    return ADAPTER_NAME in name.split(".")


def keep_only_adapters_trainable(model: nn.Module) -> None:
    """In every adapted tower, only the adapters train (what ``get_peft_model`` set up; the model's own lock logic
    calls this after turning ``requires_grad`` on everywhere)."""
    for tower in adapted_towers(model).values():
        for name, p in tower.encoder.named_parameters():
            p.requires_grad_(is_adapter_parameter(name))


def apply_peft(model: nn.Module, section: PeftSection) -> None:
    """Wrap the chosen transformers towers of ``model`` in ``peft.get_peft_model`` (in place)."""
    import peft

    if not section.enabled:
        return
    if adapted_towers(model):
        logger.info("the model already has adapters (%s): they keep training, no new ones added",
                    ", ".join(adapted_towers(model)))
        return
    cfg = model.config  # type: ignore[attr-defined]
    for name in section.peft_towers:
        tower = _tower(model, name)
        if not hasattr(tower, "encoder"):
            raise UserError(f"--peft-method {section.peft_method} on the {name} tower needs a transformers tower "
                            f"(--image-tower / --text-tower); the {name} tower is an OpenAI one")
        if getattr(cfg, f"lock_{name}"):
            raise UserError(f"--peft-towers {name}: the {name} tower is locked (variant {cfg.variant} / "
                            f"--lock-{name}); adapters train a tower whose own weights stay frozen, choose one")
        try:
            tower.encoder = peft.get_peft_model(tower.encoder, section.peft_config(name))
        except ValueError as exc:  # peft: no default target modules for this model type, or none matched
            linear = sorted({n.rsplit(".", 1)[-1] for n, m in tower.encoder.named_modules()
                             if isinstance(m, nn.Linear)})
            raise UserError(f"--peft-method {section.peft_method} on the {name} tower: {exc}; pass "
                            f"--{name}-target-modules (its linear layers: {' '.join(linear)})") from None
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("peft %s on %s: %d trainable parameters of %d", section.peft_method, ", ".join(section.peft_towers),
                n_train, sum(p.numel() for p in model.parameters()))


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold every tower's adapters into its weights (``merge_and_unload``), in place; returns ``model``."""
    for tower in adapted_towers(model).values():
        tower.encoder = tower.encoder.merge_and_unload()
    model.apply_locks()  # type: ignore[operator]  # the towers' weights train again unless locked
    return model


# -- adapter-only checkpoints -----------------------------------------------------------------------------------------
def save_adapter_checkpoint(model: nn.Module, directory: str | Path) -> None:
    """The adapters (peft's format, one folder per tower), what lies outside the adapted towers, the config and
    where the base weights come from (see the module docstring)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    towers = adapted_towers(model)
    base = getattr(model, "pretrained_dir", None)
    cfg = model.config.to_dict()  # type: ignore[attr-defined]
    for name in TOWERS:  # absolute: the checkpoint folder is renamed into place and may be copied elsewhere
        if cfg[name].get("path"):
            cfg[name]["path"] = str(Path(cfg[name]["path"]).resolve())
    for name in towers:
        path = cfg[name]["path"]
        if base is None and not has_hf_weights(path):
            raise UserError(f"the {name} tower's base weights are not in {path}; load the model from a saved model "
                            "directory (it becomes the adapters' base)")
    for name, tower in towers.items():
        tower.encoder.save_pretrained(str(directory / ADAPTER_DIR / name))
    prefixes = _prefixes(towers)
    rest = {k: v.detach().contiguous() for k, v in model.state_dict().items() if not k.startswith(prefixes)}
    save_file(rest, str(directory / REST_NAME))
    import peft

    manifest = {"format": "vlt5r-peft-adapters", "format_version": 1, "peft_version": peft.__version__,
                "towers": {name: f"{ADAPTER_DIR}/{name}" for name in towers}, "base": base}
    save_json(directory / ADAPTERS_NAME, manifest)
    save_json(directory / "config.json", cfg)


def read_manifest(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / ADAPTERS_NAME
    manifest = load_json(path)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("towers"), dict) or \
            any(name not in TOWERS for name in manifest["towers"]):
        raise UserError(f"{path}: expected {{'towers': {{name: folder}}, 'base': dir or null}}")
    if manifest.get("base") and not Path(manifest["base"]).is_dir():
        raise UserError(f"{path}: the base model directory {manifest['base']} is gone (adapter-only checkpoints "
                        "keep only the adapters)")
    return manifest


def load_adapters(model: nn.Module, directory: str | Path) -> None:
    """Put the adapters and the rest of an adapter checkpoint into ``model`` (built from its base): attached with
    ``PeftModel.from_pretrained`` (trainable) when the tower has none yet, else loaded into them in place."""
    import peft

    directory = Path(directory)
    manifest = read_manifest(directory)
    for name, folder in manifest["towers"].items():
        tower = _tower(model, name)
        source = directory / folder
        if is_adapted(tower):
            state = read_safetensors(source / "adapter_model.safetensors")
            result = peft.set_peft_model_state_dict(tower.encoder, state)
            if getattr(result, "unexpected_keys", None):
                raise UserError(f"{source}: adapter weights do not match the model ({result.unexpected_keys[:3]})")
        else:
            tower.encoder = peft.PeftModel.from_pretrained(tower.encoder, str(source), is_trainable=True)
    rest = read_safetensors(directory / REST_NAME)
    prefixes = _prefixes(manifest["towers"])
    expected = {k for k in model.state_dict() if not k.startswith(prefixes)}
    if set(rest) != expected:
        raise UserError(f"{directory / REST_NAME}: weights do not match the config (missing "
                        f"{sorted(expected - set(rest))[:5]}, unexpected {sorted(set(rest) - expected)[:5]})")
    model.load_state_dict(rest, strict=False)
    keep_only_adapters_trainable(model)  # requires_grad as a freshly adapted model has it

