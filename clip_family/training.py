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
* partial locking — ``--lock-image-unlocked-groups N`` (LiT / SigLiT) and ``--lock-text``
  ``--lock-text-unlocked-layers N`` keep the last N layer groups of a locked tower trainable (open_clip's
  ``lock_image_tower`` / ``lock_text_tower``; the groups are :func:`clip_family.model.image_lock_groups` /
  :func:`text_lock_groups`);
* data — one global contrastive batch of ``batch_size`` per micro-batch (``batch_size / world`` per rank), a
  permutation per epoch and one caption sampled per image per epoch, both pure functions of (seed, epoch);
* ``--accum-freq K`` — open_clip's accumulation that keeps the contrastive batch whole: the engine's micro-batch
  is run in K pieces by :meth:`CLIPTask.training_step` (features of all pieces under ``no_grad`` first, then each
  piece again with grad, its features put in place of its cached slice, one backward per piece; the logit scale
  and bias take their gradient from the last piece only, so the sum is exactly the gradient of the whole batch's
  loss — open_clip counts their gradient K times). ``--grad-accum`` (the engine's) still averages independent
  contrastive batches; the two compose;
* ``--parallel`` — ``auto`` (DDP when launched by torchrun, else one process), ``single``, ``dp``
  (``torch.nn.DataParallel`` over every visible GPU: the towers are replicated, the logit scale and the loss stay
  outside; slower than DDP, one Python process drives every GPU), ``ddp`` (torchrun must have started it);
* evaluation each epoch — :func:`clip_family.zeroshot.evaluate_items` on ``data.val`` (recall@1/5/10 both ways;
  zero-shot accuracy when ``eval.classes`` is given); ``best/`` follows ``eval.select_metric``.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

import engine
from clip_family.config import VARIANTS
from clip_family.data import FORMATS, CaptionDataset, Item, ReadReport, detect_format, list_shards, open_dataset, \
    rank_shards
from clip_family.losses import SIGLIP_DIST, clip_loss, siglip_loss
from clip_family.model import ClipFamilyModel, build
from clip_family.peft_towers import PeftSection, TowersSection, apply_peft
from clip_family.pre_embed import open_tower_features, tower_outputs
from clip_family.stream import ShardStream, shard_sizes
from clip_family.suite import TRADEOFF_NAME, draw_tradeoff, parse_eval_tasks, run_eval_tasks
from clip_family.zeroshot import evaluate_items
from engine.config import LoopConfig, OptimConfig
from engine.distributed import barrier, gather_objects
from engine.logs import read_log
from feature_extraction.store import FeatureStore
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
    lock_image_unlocked_groups: int = field(default=0, metadata=_help(
        "LiT / SigLiT: the last N layer groups of the locked image tower still train (open_clip's; ViT: [proj], "
        "[last block + ln_post], earlier blocks, [stem]; ModifiedResNet: attnpool, layer4 … layer1, stem)"))
    lock_text: bool = field(default=False, metadata=_help("lock the text tower (open_clip's --lock-text)"))
    lock_text_unlocked_layers: int = field(default=0, metadata=_help(
        "with --lock-text: the last N layer groups still train (OpenAI: [projection], [last block + ln_final], "
        "earlier blocks, [embeddings]; transformers: [last layer + what follows], earlier layers, [embeddings])"))
    lock_text_freeze_layer_norm: bool = field(default=True, metadata=_help(
        "with --lock-text: the LayerNorms of the locked layers are locked too (--no-…: they still train)"))

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"model.variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.lock_image_unlocked_groups < 0 or self.lock_text_unlocked_layers < 0:
            raise ConfigError("model.lock_image_unlocked_groups and lock_text_unlocked_layers must be >= 0 (got "
                              f"{self.lock_image_unlocked_groups}, {self.lock_text_unlocked_layers})")
        if self.lock_image_unlocked_groups and self.variant not in ("LiT", "SigLiT"):
            raise ConfigError(f"model.lock_image_unlocked_groups needs a locked image tower (variant LiT or SigLiT), "
                              f"got variant {self.variant}")
        if self.lock_text_unlocked_layers and not self.lock_text:
            raise ConfigError("model.lock_text_unlocked_layers needs model.lock_text (--lock-text)")


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
    stream_shards: bool = field(default=True, metadata=_help(
        ".tar shards: each rank streams its own shards through a shuffle buffer (data larger than memory); "
        "--no-stream-shards reads them into memory (one global permutation per epoch)"))
    shuffle_buffer: int = field(default=1000, metadata=_help("streamed shards: samples in the shuffle buffer"))
    pre_embed: bool = field(default=False, metadata=_help(
        "locked image tower (LiT / SigLiT): run it once over the training images, then train from the stored outputs"))
    pre_embed_features: str | None = field(default=None, metadata=_help(
        "pre-embed through this HDF5 feature file (extraction layout, ids = image keys): reused when it matches the "
        "locked tower and holds every training image, else written first (implies --pre-embed)"))
    negclip: bool = field(default=False, metadata=_help(
        "NegCLIP fine-tuning: --train-data is a NegCLIP TSV (filepath, title, neg_caption, neg_image; vlt5r "
        "mine-negclip); each batch adds hard-negative images and captions (clip_family.negclip_training)"))

    def __post_init__(self) -> None:
        if self.batch_size < 2:
            raise ConfigError(f"data.batch_size must be >= 2 for a contrastive batch, got {self.batch_size}")
        if self.shuffle_buffer < 0:
            raise ConfigError(f"data.shuffle_buffer must be >= 0, got {self.shuffle_buffer}")


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
    siglip_dist: str = field(default="gather", metadata=_help(
        "DDP, SigLIP: how the other ranks' texts arrive (open_clip's dist_impl; same loss)", choices=SIGLIP_DIST))
    accum_freq: int = field(default=1, metadata=_help(
        "run each contrastive batch in K pieces with a feature cache (open_clip's --accum-freq): the gradient of "
        "the whole batch's loss with the activations of batch_size / K rows"))

    def __post_init__(self) -> None:
        if self.freeze_text_epochs < 0:
            raise ConfigError(f"optim.freeze_text_epochs must be >= 0, got {self.freeze_text_epochs}")
        if self.accum_freq < 1:
            raise ConfigError(f"optim.accum_freq must be >= 1, got {self.accum_freq}")
        if self.siglip_dist not in SIGLIP_DIST:
            raise ConfigError(f"optim.siglip_dist must be one of {SIGLIP_DIST}, got {self.siglip_dist!r}")
        rule = f"text@epoch:{self.freeze_text_epochs}"
        if self.freeze_text_epochs and rule not in tuple(self.unfreeze_at):
            self.unfreeze_at = (*tuple(self.unfreeze_at), rule)
        super().__post_init__()


PARALLEL = ("auto", "single", "dp", "ddp")


@dataclass
class ClipLoopConfig(LoopConfig):
    parallel: str = field(default="auto", metadata=_help(
        "auto: ddp when launched by torchrun, else single | single: one process, one device | dp: "
        "torch.nn.DataParallel over every visible GPU (one process; slower than ddp) | ddp: torchrun's processes",
        choices=PARALLEL))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.parallel not in PARALLEL:
            raise ConfigError(f"loop.parallel must be one of {PARALLEL}, got {self.parallel!r}")


@dataclass
class EvalSection:
    classes: tuple[str, ...] = field(default=(), metadata=_help(
        "class names for zero-shot accuracy on the val set (or one file with a name per line)"))
    templates: tuple[str, ...] = field(default=("a photo of a {}.",), metadata=_help("prompt templates, {} = class"))
    eval_batch_size: int = field(default=256, metadata=_help("images / texts per encoding batch"))
    select_metric: str | None = field(default=None, metadata=_help(
        "dev metric that picks OUT/best (default: zeroshot_accuracy with classes, else mean_recall)"))
    eval_tasks: tuple[str, ...] = field(default=(), metadata=_help(
        "evaluation-suite tasks run at every evaluation, NAME=DATA or NAME=DATA@IMAGES (e.g. sugar_crepe=data/ "
        "aro_vg_relation=vgr.json@vg_images): logged as NAME/metric, composition vs retrieval in OUT/tradeoff.png"))

    def __post_init__(self) -> None:
        self.eval_tasks = tuple(self.eval_tasks)
        parse_eval_tasks(self.eval_tasks, check_paths=False)  # the form of each spec, before anything runs


@dataclass
class ClipTrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: ClipOptimConfig = field(default_factory=ClipOptimConfig)
    loop: ClipLoopConfig = field(default_factory=lambda: ClipLoopConfig(out="runs/clip"))
    eval: EvalSection = field(default_factory=EvalSection)
    towers: TowersSection = field(default_factory=TowersSection)
    peft: PeftSection = field(default_factory=PeftSection)

    def __post_init__(self) -> None:
        if self.data.batch_size % self.optim.accum_freq:
            raise ConfigError(f"data.batch_size {self.data.batch_size} must be divisible by optim.accum_freq "
                              f"{self.optim.accum_freq}")

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
        if cfg.data.batch_size % (self.env.world_size * cfg.optim.accum_freq):
            raise UserError(f"--batch-size {cfg.data.batch_size} must be divisible by the {self.env.world_size} "
                            f"rank(s) x --accum-freq {cfg.optim.accum_freq}")
        self.classes = read_classes(cfg.eval.classes)
        self.eval_tasks = parse_eval_tasks(cfg.eval.eval_tasks)
        self.select_metric = (cfg.eval.select_metric or ("zeroshot_accuracy" if self.classes else "mean_recall")) \
            if val is not None else cfg.eval.select_metric if self.eval_tasks else None
        self._pixels: dict[int, Tensor] = {}
        self._tower_outputs: Tensor | None = None
        self._tower_store: FeatureStore | None = None
        self.pre_embed = cfg.data.pre_embed or cfg.data.pre_embed_features is not None
        if self.pre_embed and not model.config.lock_image:
            raise UserError("--pre-embed / --pre-embed-features need a locked image tower (--variant LiT or SigLiT)")
        if self.pre_embed and model.config.lock_image_unlocked_groups:
            raise UserError("--pre-embed / --pre-embed-features store the whole image tower's output; they do not go "
                            "with --lock-image-unlocked-groups")
        if cfg.model.gradient_checkpointing:
            model.set_gradient_checkpointing(True)
        # --parallel dp: the towers replicated over the visible GPUs at each forward. Kept out of the module tree
        # (object.__setattr__), so the task's parameters, printout and files stay the model's.
        object.__setattr__(self, "data_parallel", data_parallel_towers(model) if cfg.loop.parallel == "dp" else None)
        cuda = self.env.device.type == "cuda"
        self.rng_devices = (list(range(torch.cuda.device_count())) if cuda and self.data_parallel is not None
                            else [self.env.device] if cuda else [])  # the generators the towers' dropout draws from

    # -- model + loss ------------------------------------------------------------------------------------------
    def forward(self, batch: dict[str, Any], features_only: bool = False) -> Any:
        """``training_forward(batch)``, or with ``features_only`` the batch's (image, text) features (what the
        accumulation runs through DDP piece by piece)."""
        return self.features(batch) if features_only else self.training_forward(batch)

    def features(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """(b, E) normalised image and text features of a batch (through DataParallel with ``--parallel dp``)."""
        towers = self.data_parallel if self.data_parallel is not None else self.model.features
        return towers(batch.get("pixels"), batch["tokens"], batch.get("tower_output"))

    def training_forward(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        image, text = self.features(batch)  # (b, E) each
        return self.loss_and_metrics(image, text, *self.model.logit_params())

    def loss_and_metrics(self, image: Tensor, text: Tensor, scale: Tensor, bias: Tensor | None
                         ) -> tuple[Tensor, dict[str, Tensor]]:
        """The variant's contrastive loss of this rank's (b, E) features and the metrics to log."""
        if self.model.config.loss == "siglip":
            loss = siglip_loss(image, text, scale, bias, dist_impl=self.cfg.optim.siglip_dist)  # type: ignore[arg-type]
        else:
            loss = clip_loss(image, text, scale, bias, local_loss=self.cfg.optim.local_loss,
                             gather_with_grad=self.cfg.optim.gather_with_grad)
        with torch.no_grad():
            accuracy = ((image @ text.T).argmax(dim=1) == torch.arange(len(image), device=image.device)).float().mean()
        metrics = {"loss": loss.detach(), "in_batch_accuracy": accuracy, "temperature": 1.0 / scale.detach()}
        if bias is not None:
            metrics["logit_bias"] = bias.detach()
        return loss, metrics

    def training_step(self, model: nn.Module, batch: dict[str, Any],
                      autocast: Callable[[], AbstractContextManager[Any]],
                      backward: Callable[[Tensor], None]) -> dict[str, Tensor]:
        """One contrastive batch; with ``--accum-freq K`` in K pieces (open_clip ``train_one_epoch``'s accum_freq):
        every piece's features under ``no_grad`` first, then each piece again with grad, its features in place of
        its cached slice of the whole batch's, the loss of the whole batch and one backward per piece. The sum of
        the K gradients is the whole batch's gradient (the features of piece j get d loss / d features_j from the
        backward of piece j only); the logit scale / bias join the graph of the last piece only. Each piece is
        recomputed with the RNG state of its cached pass (same dropout); under DDP only the last backward syncs."""
        k = self.cfg.optim.accum_freq
        if k == 1:
            return super().training_step(model, batch, autocast, backward)
        pieces = split_batch(batch, k)
        rng: list[tuple[Tensor, list[Tensor]]] = []
        with torch.no_grad(), autocast():
            cached = []
            for piece in pieces:
                rng.append(rng_state(self.rng_devices))
                cached.append(model(piece, features_only=True))  # (b/K, E) image, text
        after = rng_state(self.rng_devices)
        images, texts = [c[0] for c in cached], [c[1] for c in cached]
        metrics: dict[str, Tensor] = {}
        for j, piece in enumerate(pieces):
            last = j == k - 1
            set_rng_state(rng[j], self.rng_devices)
            no_sync = model.no_sync() if isinstance(model, DistributedDataParallel) and not last \
                else contextlib.nullcontext()
            with no_sync:
                with autocast():
                    image, text = model(piece, features_only=True)  # (b/K, E) each, with grad
                    scale, bias = self.model.logit_params()
                    if not last:  # their gradient comes once, from the last piece
                        scale, bias = scale.detach(), None if bias is None else bias.detach()
                    loss, metrics = self.loss_and_metrics(torch.cat([*images[:j], image, *images[j + 1:]]),
                                                          torch.cat([*texts[:j], text, *texts[j + 1:]]), scale, bias)
                backward(loss)
        set_rng_state(after, self.rng_devices)
        return metrics

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

    def tower_store(self) -> FeatureStore:
        """The feature file of the locked tower's outputs (``--pre-embed-features``), written on first use if absent."""
        if self._tower_store is None:
            path = str(self.cfg.data.pre_embed_features)
            self._tower_store = open_tower_features(path, self.model, self.train_data.items, self.pixels,
                                                    self.cfg.eval.eval_batch_size)
        return self._tower_store

    def stored_tower_outputs(self, rows: np.ndarray) -> Tensor:
        """(b, W) locked-tower outputs of training items ``rows``: from the feature file, or computed once in memory."""
        if self.cfg.data.pre_embed_features is not None:
            keys = [self.train_data.items[int(i)].key for i in rows]
            return torch.from_numpy(self.tower_store().get_many(keys).fc)
        if self._tower_outputs is None:
            self._tower_outputs = tower_outputs(self.model, self.train_data.items, self.pixels,
                                                self.cfg.eval.eval_batch_size)
        return self._tower_outputs[torch.from_numpy(rows)]

    def local_rows(self, order: np.ndarray, micro: int) -> np.ndarray:
        """This rank's rows of global micro-batch ``micro`` of an epoch's permutation ``order``."""
        local_b = self.cfg.data.batch_size // self.env.world_size
        first = micro * self.cfg.data.batch_size + self.env.rank * local_b
        return order[first: first + local_b]

    def train_batches(self, epoch: int, start: int, stop: int) -> Any:
        order, picks = self.epoch_order(epoch)
        for micro in range(start, stop):
            rows = self.local_rows(order, micro)
            items = [self.train_data.items[i] for i in rows]
            captions = [it.captions[int(picks[i] * len(it.captions))] for i, it in zip(rows, items)]
            tokens = self.model.tokenize(captions)
            if self.pre_embed:
                yield {"tower_output": self.stored_tower_outputs(rows), "tokens": tokens}
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
        """Recall@k (+ zero-shot accuracy) on ``data.val``, and the ``eval.eval_tasks`` of the evaluation suite."""
        if self.val_data is None and not self.eval_tasks:
            return None
        def encode_text(texts: list[str]) -> Tensor:
            return self.model.encode_text(texts, batch_size=self.cfg.eval.eval_batch_size).cpu()

        metrics = evaluate_items(self.encode_items, encode_text, self.val_data.items, self.classes,
                                 self.cfg.eval.templates) if self.val_data is not None else {}
        if self.eval_tasks:
            metrics.update(run_eval_tasks(self.model, self.eval_tasks, self.cfg.eval.eval_batch_size))
        return metrics

    def after_evaluation(self, run_dir: Path) -> None:
        """``OUT/tradeoff.png``: the evaluation-suite tasks against retrieval, every evaluation so far."""
        if self.eval_tasks and self.val_data is not None:
            draw_tradeoff(read_log(run_dir), run_dir / TRADEOFF_NAME)

    # -- files -------------------------------------------------------------------------------------------------
    def save_model(self, directory: Path) -> None:
        self.model.save_pretrained(directory)

    def load_model(self, directory: Path) -> None:
        self.model.load_checkpoint(directory)  # a full or an adapter-only checkpoint


class StreamingCLIPTask(CLIPTask):
    """:class:`CLIPTask` on ``.tar`` shards streamed per rank (:class:`clip_family.stream.ShardStream`) instead of
    items in memory: every rank runs the same number of micro-batches (the smallest rank's samples // local batch;
    the rest of a rank's shards is dropped for the epoch) and a resume at micro-batch k reads the epoch's stream
    again and skips its first k × local batch samples (re-read and decoded, not preprocessed)."""

    def __init__(self, model: ClipFamilyModel, stream: ShardStream, val: CaptionDataset | None,
                 cfg: ClipTrainConfig, env: engine.DistEnv | None = None) -> None:
        d = cfg.data
        if d.pre_embed or d.pre_embed_features is not None or d.cache_images:
            raise UserError("--pre-embed / --pre-embed-features / --cache-images keep every training image at hand; "
                            "with .tar shards add --no-stream-shards (reads the shards into memory)")
        super().__init__(model, CaptionDataset([], ReadReport("streamed shards")), val, cfg, env)
        self.stream = stream

    def micro_batches_per_epoch(self) -> int:
        return self.stream.batches_per_epoch(self.cfg.data.batch_size // self.env.world_size)

    def train_batches(self, epoch: int, start: int, stop: int) -> Any:
        local_b = self.cfg.data.batch_size // self.env.world_size
        samples = self.stream.epoch(epoch)
        try:
            for _ in itertools.islice(samples, start * local_b):  # resume: the micro-batches already trained on
                pass
            for _ in range(start, stop):
                chunk = list(itertools.islice(samples, local_b))
                yield {"pixels": torch.stack([self.model.processor(image) for _, _, image in chunk]),  # (b, 3, R, R)
                       "tokens": self.model.tokenize([caption for _, caption, _ in chunk])}
        finally:
            self.stream.reports[-1].log()


def split_batch(batch: Any, k: int) -> list[Any]:
    """``k`` equal pieces of a batch along its rows (tensors in nested dicts; None stays None in every piece)."""
    if isinstance(batch, Tensor):
        return list(batch.tensor_split(k))
    if isinstance(batch, dict):
        parts = {key: split_batch(value, k) for key, value in batch.items()}
        return [{key: value[i] for key, value in parts.items()} for i in range(k)]
    if batch is None:
        return [None] * k
    raise TypeError(f"cannot split a {type(batch).__name__} batch entry")


def rng_state(devices: list[Any]) -> tuple[Tensor, list[Tensor]]:
    return torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in devices]


def set_rng_state(state: tuple[Tensor, list[Tensor]], devices: list[Any]) -> None:
    torch.set_rng_state(state[0])
    for device, cuda_state in zip(devices, state[1]):
        torch.cuda.set_rng_state(cuda_state, device)


class TowerFeatures(nn.Module):
    """The two towers of a model as one module returning (image, text) features: what ``--parallel dp`` replicates
    (the logit scale and the loss stay outside, on the first device; vi_clip's DataParallel set-up)."""

    def __init__(self, model: ClipFamilyModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: Tensor | None, tokens: dict[str, Tensor], tower_output: Tensor | None
                ) -> tuple[Tensor, Tensor]:
        return self.model.features(pixels, tokens, tower_output)


def data_parallel_towers(model: ClipFamilyModel) -> nn.DataParallel:
    """``torch.nn.DataParallel`` over every visible CUDA device (with none it just calls the towers)."""
    devices = torch.cuda.device_count()
    if devices < 2:
        logger.info("--parallel dp: %d CUDA device(s) visible, the towers run in this one process as with single",
                    devices)
    return nn.DataParallel(TowerFeatures(model))


def check_parallel(mode: str, env: engine.DistEnv) -> None:
    """One-line errors for a --parallel mode that does not fit how the run was launched."""
    torchrun = "WORLD_SIZE" in os.environ
    if mode == "ddp" and not torchrun:
        raise UserError("--parallel ddp: launch with torchrun --nproc_per_node N -m vlt5r clip-train ...")
    if mode in ("single", "dp") and env.distributed:
        raise UserError(f"--parallel {mode} runs one process, but torchrun started {env.world_size}; use --parallel "
                        "ddp (or auto)")
    if mode == "dp" and torch.cuda.device_count() >= 2 and env.device != torch.device("cuda", 0):
        raise UserError(f"--parallel dp keeps the model on cuda:0 and replicas on every visible GPU; got device "
                        f"{env.device} (choose the GPUs with CUDA_VISIBLE_DEVICES)")


def build_model(cfg: ClipTrainConfig) -> ClipFamilyModel:
    """The run's model: ``--model-name`` (or the two ``--image-tower`` / ``--text-tower``) as ``--variant``, this
    run's locks, and peft adapters on the towers when ``--peft-method`` is set."""
    towers = cfg.towers.model_config()
    model = build(towers if towers is not None else cfg.model.model_name, cfg.model.variant)
    m = cfg.model
    if not model.config.variant.startswith("Baseline"):  # this run's flags decide (a saved dir may hold other locks)
        model.set_locks(lock_image_unlocked_groups=m.lock_image_unlocked_groups, lock_text=m.lock_text,
                        lock_text_unlocked_layers=m.lock_text_unlocked_layers,
                        lock_text_freeze_layer_norm=m.lock_text_freeze_layer_norm)
    apply_peft(model, cfg.peft)
    return model


def build_task(cfg: ClipTrainConfig, env: engine.DistEnv) -> CLIPTask:
    if not cfg.data.train_data:
        raise UserError("no training data: pass --train-data (a folder, .parquet, .csv/.tsv or .tar shards)")
    d = cfg.data
    read: dict[str, Any] = {"fmt": d.data_format, "image_column": d.image_column, "caption_column": d.caption_column,
                            "image_root": d.image_root, "verify": d.verify_images}
    streamed = d.stream_shards and (detect_format(d.train_data) if d.data_format == "auto" else d.data_format) \
        == "webdataset"
    train_data = open_stream(d.train_data, d.shuffle_buffer, d.batch_size, cfg.loop.seed, env) if streamed \
        else open_dataset(d.train_data, **read)
    val = open_dataset(d.val_data, **read) if d.val_data else None
    if isinstance(train_data, CaptionDataset) and len(train_data) < d.batch_size:
        raise UserError(f"{d.train_data}: {len(train_data)} usable pairs, fewer than one batch of {d.batch_size}")
    model = build_model(cfg)
    task = (StreamingCLIPTask if streamed else CLIPTask)(model, train_data, val, cfg, env).to(env.device)
    if d.pre_embed_features is not None:  # rank 0 writes the feature file (when absent) before any rank reads it
        if env.is_main:
            task.tower_store()
        barrier(env)
    return task


def open_stream(source: str, buffer: int, batch_size: int, seed: int, env: engine.DistEnv) -> ShardStream:
    """This rank's :class:`ShardStream` of the shards of ``source``; each rank sizes its own shards (sizes.json or
    the index pass), then every rank gets every size (the epoch length is the smallest rank's)."""
    shards = list_shards(source)
    own = shard_sizes(shards, rank_shards(len(shards), env.rank, env.world_size))
    sizes = {i: n for part in gather_objects(own, env) for i, n in part.items()}
    stream = ShardStream(shards, sizes, env.rank, env.world_size, seed, buffer)
    per_rank = stream.samples_per_rank()
    logger.info("%s: %d shards streamed over %d rank(s), usable samples per rank %s", source, len(shards),
                env.world_size, per_rank)
    if stream.batches_per_epoch(batch_size // env.world_size) == 0:
        raise UserError(f"{source}: the smallest rank's shards hold {min(per_rank)} usable samples, fewer than one "
                        f"local batch of {batch_size // env.world_size} (--batch-size {batch_size} over "
                        f"{env.world_size} rank(s))")
    return stream


def train(cfg: ClipTrainConfig, make_task: Callable[[ClipTrainConfig, engine.DistEnv], CLIPTask] | None = None
          ) -> engine.FitResult:
    """Build the task from the config (``make_task``: :func:`build_task`, or NegCLIP's
    :func:`clip_family.negclip_training.build_negclip_task`) and run the engine (setup -> fit -> teardown)."""
    env = engine.setup(cfg.loop, cfg.optim)
    try:
        check_parallel(cfg.loop.parallel, env)
        task = (make_task or build_task)(cfg, env)
        return engine.fit(task, cfg.loop, cfg.optim, cfg.to_dict(), env)
    finally:
        engine.teardown(env)


class Trainer:
    """The Python equivalent of ``vlt5r clip-train``: ``Trainer(cfg).train()`` (vi_clip's ``Trainer`` in spirit)."""

    def __init__(self, cfg: ClipTrainConfig) -> None:
        self.cfg = cfg

    def train(self) -> engine.FitResult:
        return train(self.cfg)
