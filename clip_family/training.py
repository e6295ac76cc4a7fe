"""Training of the CLIP family on the shared engine (:mod:`engine`): a typed config, :class:`CLIPTask` and
:func:`train` (``vlt5r clip-train`` is a thin driver over it; :class:`Trainer` is the Python equivalent).

* model + loss — :class:`clip_family.model.ClipFamilyModel` and :func:`clip_family.losses.clip_loss` /
  :func:`siglip_loss` chosen by the variant; across torchrun ranks the features are gathered (CLIP: open_clip's
  ``local_loss`` + ``gather_with_grad`` by default, so DDP's gradient averaging gives the gradient of the
  single-process loss of the global batch; SigLIP: other ranks' texts as negatives);
* parameter groups (per-group LRs, freeze/unfreeze by name): ``image`` (image tower), ``text`` (text tower),
  ``proj`` (projections), ``logit`` (scale and bias, no weight decay). A locked tower (LiT / SigLiT) has
  ``requires_grad`` off and is in no group; ``--freeze-text-epochs N`` is ``optim.unfreeze_at text@epoch:N``: only
  the projections, the logit scale (and an unlocked image tower) train for N epochs, then the text tower joins
  with ``lr_text``;
* data — one global contrastive batch of ``batch_size`` per micro-batch (``batch_size / world`` per rank), a
  permutation per epoch and one caption sampled per image per epoch, both pure functions of (seed, epoch);
* evaluation each epoch — :func:`clip_family.zeroshot.evaluate_items` on ``data.val`` (recall@1/5/10 both ways;
  zero-shot accuracy when ``eval.classes`` is given); ``best/`` follows ``eval.select_metric``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

import engine
from clip_family.config import VARIANTS
from clip_family.data import FORMATS, CaptionDataset, Item, open_dataset
from clip_family.losses import clip_loss, siglip_loss
from clip_family.model import WEIGHTS_NAME, ClipFamilyModel, build
from clip_family.zeroshot import evaluate_items
from engine.config import LoopConfig, OptimConfig
from foundations.errors import ConfigError, UserError
from foundations.images import decode_image

logger = logging.getLogger(__name__)


def _help(text: str, **extra: Any) -> Any:
    return {"help": text, **extra}


@dataclass
class ModelSection:
    model_name: str = field(default="ViT-B/32", metadata=_help(
        "RN50 | RN101 | RN50x4 | RN50x16 | RN50x64 | ViT-B/32 | ViT-B/16 | ViT-L/14 | ViT-L/14@336px | tiny | a "
        "config JSON | a model dir | an OpenAI .pt (weights kept: e.g. LiT from a pretrained image tower)"))
    variant: str = field(default="CLIP", metadata=_help("which family member", choices=VARIANTS))
    gradient_checkpointing: bool = field(default=False, metadata=_help("recompute activations in the text tower"))

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"model.variant must be one of {VARIANTS}, got {self.variant!r}")


@dataclass
class DataSection:
    train_data: str = field(default="", metadata=_help("training data: a stem-paired folder, .parquet, .csv/.tsv "
                                                        "or .tar shards (a folder of them, or comma-separated)"))
    val_data: str | None = field(default=None, metadata=_help("validation data (same formats) for zero-shot eval"))
    data_format: str = field(default="auto", metadata=_help("override the detected format", choices=FORMATS))
    image_column: str = field(default="filepath", metadata=_help("CSV/TSV image column (open_clip's name)"))
    caption_column: str = field(default="title", metadata=_help("CSV/TSV caption column"))
    image_root: str | None = field(default=None, metadata=_help("folder of relative image paths (CSV: the table's "
                                                                "folder; parquet: its image/ folder)"))
    batch_size: int = field(default=64, metadata=_help("global contrastive batch per micro-batch (split over ranks)"))
    verify_images: bool = field(default=True, metadata=_help("decode every image once while reading (skip bad)"))
    cache_images: bool = field(default=False, metadata=_help("keep preprocessed pixels in memory (small data)"))
    pre_embed: bool = field(default=False, metadata=_help(
        "locked image tower (LiT / SigLiT): run it once over the training images, then train from the stored outputs"))

    def __post_init__(self) -> None:
        if self.batch_size < 2:
            raise ConfigError(f"data.batch_size must be >= 2 for a contrastive batch, got {self.batch_size}")


@dataclass
class ClipOptimConfig(OptimConfig):
    lr: float = field(default=5e-4, metadata=_help("base learning rate (groups without their own)"))
    lr_image: float | None = field(default=None, metadata=_help("image tower LR (default: lr)"))
    lr_text: float | None = field(default=None, metadata=_help("text tower LR (default: lr)"))
    lr_proj: float | None = field(default=None, metadata=_help("projections LR (default: lr)"))
    lr_logit: float | None = field(default=None, metadata=_help("logit scale / bias LR (default: lr)"))
    freeze_text_epochs: int = field(default=0, metadata=_help(
        "train only projections + logit scale (+ an unlocked image tower) for N epochs, then the text tower"))
    local_loss: bool = field(default=True, metadata=_help("DDP: score only local rows against the global batch"))
    gather_with_grad: bool = field(default=True, metadata=_help("DDP: gather features with autograd"))

    def __post_init__(self) -> None:
        if self.freeze_text_epochs < 0:
            raise ConfigError(f"optim.freeze_text_epochs must be >= 0, got {self.freeze_text_epochs}")
        rule = f"text@epoch:{self.freeze_text_epochs}"
        if self.freeze_text_epochs and rule not in tuple(self.unfreeze_at):
            self.unfreeze_at = (*tuple(self.unfreeze_at), rule)
        super().__post_init__()


@dataclass
class EvalSection:
    classes: tuple[str, ...] = field(default=(), metadata=_help(
        "class names for zero-shot accuracy on the val set (or one file with a name per line)"))
    templates: tuple[str, ...] = field(default=("a photo of a {}.",), metadata=_help("prompt templates, {} = class"))
    eval_batch_size: int = field(default=256, metadata=_help("images / texts per encoding batch"))
    select_metric: str | None = field(default=None, metadata=_help(
        "dev metric that picks OUT/best (default: zeroshot_accuracy with classes, else mean_recall)"))


@dataclass
class ClipTrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: ClipOptimConfig = field(default_factory=ClipOptimConfig)
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(out="runs/clip"))
    eval: EvalSection = field(default_factory=EvalSection)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_classes(classes: tuple[str, ...]) -> list[str]:
    if len(classes) == 1 and Path(classes[0]).is_file():
        return [line.strip() for line in Path(classes[0]).read_text().splitlines() if line.strip()]
    return list(classes)


class CLIPTask(engine.Task):
    """Model + contrastive loss + caption data + zero-shot evaluation of one CLIP-family run."""

    def __init__(self, model: ClipFamilyModel, train: CaptionDataset, val: CaptionDataset | None,
                 cfg: ClipTrainConfig, env: engine.DistEnv | None = None) -> None:
        super().__init__()
        self.model, self.train_data, self.val_data, self.cfg = model, train, val, cfg
        self.env = env or engine.DistEnv()
        if cfg.data.batch_size % self.env.world_size:
            raise UserError(f"--batch-size {cfg.data.batch_size} must be divisible by the {self.env.world_size} ranks")
        self.classes = read_classes(cfg.eval.classes)
        self.select_metric = (cfg.eval.select_metric or ("zeroshot_accuracy" if self.classes else "mean_recall")) \
            if val is not None else None
        self._pixels: dict[int, Tensor] = {}
        self._tower_outputs: Tensor | None = None
        if cfg.data.pre_embed and not model.config.lock_image:
            raise UserError("--pre-embed needs a locked image tower (--variant LiT or SigLiT)")
        if cfg.model.gradient_checkpointing:
            model.set_gradient_checkpointing(True)

    # -- model + loss ------------------------------------------------------------------------------------------
    def training_forward(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        image, text, scale, bias = self.model(batch.get("pixels"), batch["tokens"],
                                              batch.get("tower_output"))  # (b, E), (b, E), (), ()
        if self.model.config.loss == "siglip":
            loss = siglip_loss(image, text, scale, bias)  # type: ignore[arg-type]
        else:
            loss = clip_loss(image, text, scale, bias, local_loss=self.cfg.optim.local_loss,
                             gather_with_grad=self.cfg.optim.gather_with_grad)
        with torch.no_grad():
            accuracy = ((image @ text.T).argmax(dim=1) == torch.arange(len(image), device=image.device)).float().mean()
        metrics = {"loss": loss.detach(), "in_batch_accuracy": accuracy, "temperature": 1.0 / scale.detach()}
        if bias is not None:
            metrics["logit_bias"] = bias.detach()
        return loss, metrics

    def param_groups(self) -> list[dict[str, Any]]:
        o = self.cfg.optim
        m = self.model

        def trainable(module: torch.nn.Module) -> list[torch.nn.Parameter]:
            return [p for p in module.parameters() if p.requires_grad]

        logit = [p for p in (m.logit_scale, m.logit_bias) if p is not None and p.requires_grad]
        groups = [
            {"name": "image", "params": trainable(m.visual), "lr": o.lr_image if o.lr_image is not None else o.lr},
            {"name": "text", "params": trainable(m.text), "lr": o.lr_text if o.lr_text is not None else o.lr},
            {"name": "proj", "params": trainable(m.text_projection) + trainable(m.image_projection),
             "lr": o.lr_proj if o.lr_proj is not None else o.lr},
            {"name": "logit", "params": logit, "lr": o.lr_logit if o.lr_logit is not None else o.lr,
             "weight_decay": 0.0},
        ]
        return [g for g in groups if g["params"]]

    # -- data --------------------------------------------------------------------------------------------------
    def micro_batches_per_epoch(self) -> int:
        return len(self.train_data) // self.cfg.data.batch_size

    def pixels(self, index: int, item: Item) -> Tensor:
        if index in self._pixels:
            return self._pixels[index]
        pixels = self.model.processor(decode_image(item.image))  # (3, R, R)
        if self.cfg.data.cache_images:
            self._pixels[index] = pixels
        return pixels

    def epoch_order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(a permutation of the items, the caption picked for each item) of ``epoch``: pure in (seed, epoch)."""
        rng = np.random.default_rng([self.cfg.loop.seed, epoch])
        order = rng.permutation(len(self.train_data))
        picks = rng.random(len(self.train_data))
        return order, picks

    @torch.no_grad()
    def tower_outputs(self) -> Tensor:
        """(N, W) outputs of the locked image tower for every training image, computed once (pre-embedding)."""
        if self._tower_outputs is None:
            visual, bs = self.model.visual, self.cfg.eval.eval_batch_size
            was_training = visual.training
            visual.eval()
            items = self.train_data.items
            chunks = [visual(torch.stack([self.pixels(i, items[i]) for i in range(s, min(s + bs, len(items)))])
                             .to(self.model.device)).cpu() for s in range(0, len(items), bs)]
            visual.train(was_training)
            self._tower_outputs = torch.cat(chunks)
            logger.info("pre-embedded %d training images with the locked image tower", len(items))
        return self._tower_outputs

    def train_batches(self, epoch: int, start: int, stop: int) -> Any:
        order, picks = self.epoch_order(epoch)
        global_b = self.cfg.data.batch_size
        local_b = global_b // self.env.world_size
        for micro in range(start, stop):
            rows = order[micro * global_b + self.env.rank * local_b: micro * global_b + (self.env.rank + 1) * local_b]
            items = [self.train_data.items[i] for i in rows]
            captions = [it.captions[int(picks[i] * len(it.captions))] for i, it in zip(rows, items)]
            tokens = self.model.tokenize(captions)
            if self.cfg.data.pre_embed:
                yield {"tower_output": self.tower_outputs()[torch.from_numpy(rows)], "tokens": tokens}
            else:
                yield {"pixels": torch.stack([self.pixels(int(i), it) for i, it in zip(rows, items)]),
                       "tokens": tokens}

    # -- evaluation --------------------------------------------------------------------------------------------
    def encode_items(self, items: list[Item]) -> Tensor:
        bs = self.cfg.eval.eval_batch_size
        out = [self.model.encode_image(torch.stack([self.model.processor(decode_image(it.image))
                                                    for it in items[i: i + bs]]))
               for i in range(0, len(items), bs)]
        return torch.cat(out).cpu()

    def evaluate(self) -> dict[str, float] | None:
        if self.val_data is None:
            return None
        def encode_text(texts: list[str]) -> Tensor:
            return self.model.encode_text(texts, batch_size=self.cfg.eval.eval_batch_size).cpu()

        return evaluate_items(self.encode_items, encode_text, self.val_data.items, self.classes,
                              self.cfg.eval.templates)

    # -- files -------------------------------------------------------------------------------------------------
    def save_model(self, directory: Path) -> None:
        self.model.save_pretrained(directory)

    def load_model(self, directory: Path) -> None:
        self.model.load_weights(Path(directory) / WEIGHTS_NAME)


def build_task(cfg: ClipTrainConfig, env: engine.DistEnv) -> CLIPTask:
    if not cfg.data.train_data:
        raise UserError("no training data: pass --train-data (a folder, .parquet, .csv/.tsv or .tar shards)")
    d = cfg.data
    read: dict[str, Any] = {"fmt": d.data_format, "image_column": d.image_column, "caption_column": d.caption_column,
                            "image_root": d.image_root, "verify": d.verify_images}
    train_data = open_dataset(d.train_data, **read)
    val = open_dataset(d.val_data, **read) if d.val_data else None
    if len(train_data) < d.batch_size:
        raise UserError(f"{d.train_data}: {len(train_data)} usable pairs, fewer than one batch of {d.batch_size}")
    model = build(cfg.model.model_name, cfg.model.variant)
    return CLIPTask(model, train_data, val, cfg, env).to(env.device)


def train(cfg: ClipTrainConfig) -> engine.FitResult:
    """Build the task from the config and run the engine (setup -> fit -> teardown)."""
    env = engine.setup(cfg.loop, cfg.optim)
    try:
        task = build_task(cfg, env)
        return engine.fit(task, cfg.loop, cfg.optim, cfg.to_dict(), env)
    finally:
        engine.teardown(env)


class Trainer:
    """The Python equivalent of ``vlt5r clip-train``: ``Trainer(cfg).train()`` (vi_clip's ``Trainer`` in spirit)."""

    def __init__(self, cfg: ClipTrainConfig) -> None:
        self.cfg = cfg

    def train(self) -> engine.FitResult:
        return train(self.cfg)
