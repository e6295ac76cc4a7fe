"""NegCLIP fine-tuning on the shared engine: :class:`NegCLIPTask` is :class:`clip_family.training.CLIPTask` with
NegCLIP's batch and loss (:mod:`clip_family.negclip`); ``vlt5r clip-train --negclip --train-data mined.tsv`` runs it
(:func:`build_negclip_task` given to :func:`clip_family.training.train`).

* data — the NegCLIP TSV of ``vlt5r mine-negclip`` (or the original NegCLIP release's): one row per (image,
  caption) with its hard-negative captions and hard-negative image rows; each epoch is a permutation of the rows
  and a fresh draw of every row's negatives (:func:`clip_family.negclip.draw_negatives`), both pure in
  (seed, epoch), so a resume continues exactly;
* batch — ``batch_size`` rows (split over ranks) + their hard-negative images: 2b images and 4b texts per rank;
* loss — :func:`clip_family.negclip.negclip_loss` (softmax; the variant must be CLIP or LiT), features gathered
  across ranks as the CLIP loss gathers them (``--local-loss`` / ``--gather-with-grad``);
* logged per step — ``loss``, ``in_batch_accuracy`` (an image's caption is its top text among the 4b),
  ``hard_negative_accuracy`` (an image's caption beats its own hard-negative caption), ``temperature``;
* evaluation — as ``clip-train``: recall@k on ``--val-data`` picks ``OUT/best``; ``--eval-tasks`` (SugarCREPE,
  ARO, ...) run at every evaluation and ``OUT/tradeoff.png`` plots composition against retrieval.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import Tensor

import engine
from clip_family.model import ClipFamilyModel
from clip_family.negclip import NegClipData, batch_texts, draw_negatives, hard_negative_accuracy, negclip_loss, \
    read_negclip_tsv
from clip_family.data import CaptionDataset, open_dataset
from clip_family.training import CLIPTask, ClipTrainConfig, build_model
from foundations.errors import UserError

logger = logging.getLogger(__name__)


class NegCLIPTask(CLIPTask):
    """CLIP-family training with NegCLIP's hard negatives in every batch (see the module docstring)."""

    def __init__(self, model: ClipFamilyModel, train: NegClipData, val: CaptionDataset | None,
                 cfg: ClipTrainConfig, env: engine.DistEnv | None = None) -> None:
        if model.config.loss != "clip":
            raise UserError(f"--negclip fine-tunes with NegCLIP's softmax loss; variant {model.config.variant} uses "
                            "the sigmoid loss (use --variant CLIP or LiT)")
        if cfg.optim.accum_freq != 1:
            raise UserError("--negclip does not go with --accum-freq (its batch is not a plain contrastive batch); "
                            "use --grad-accum")
        if cfg.data.pre_embed or cfg.data.pre_embed_features is not None:
            raise UserError("--negclip does not go with --pre-embed (its hard-negative images are drawn per epoch)")
        super().__init__(model, train, val, cfg, env)

    def loss_and_metrics(self, image: Tensor, text: Tensor, scale: Tensor, bias: Tensor | None
                         ) -> tuple[Tensor, dict[str, Tensor]]:
        """NegCLIP's loss of this rank's (2b, E) images and (4b, E) texts and the metrics to log."""
        o = self.cfg.optim
        loss = negclip_loss(image, text, scale, local_loss=o.local_loss, gather_with_grad=o.gather_with_grad)
        with torch.no_grad():
            rows = torch.arange(len(image), device=image.device)
            accuracy = ((image @ text.T).argmax(dim=1) == rows).float().mean()
            metrics = {"loss": loss.detach(), "in_batch_accuracy": accuracy,
                       "hard_negative_accuracy": hard_negative_accuracy(image, text),
                       "temperature": 1.0 / scale.detach()}
        return loss, metrics

    def train_batches(self, epoch: int, start: int, stop: int) -> Any:
        order, _ = self.epoch_order(epoch)
        items = self.train_data.items
        draws = draw_negatives(items, self.cfg.loop.seed, epoch)
        for micro in range(start, stop):
            rows = self.local_rows(order, micro)
            negatives = draws.neg_row[rows]
            pixels = [self.pixels(int(i), items[i]) for i in np.concatenate([rows, negatives])]  # 2b x (3, R, R)
            yield {"pixels": torch.stack(pixels), "tokens": self.model.tokenize(batch_texts(items, rows, draws))}


def build_negclip_task(cfg: ClipTrainConfig, env: engine.DistEnv) -> NegCLIPTask:
    """The task of ``vlt5r clip-train --negclip``: the NegCLIP TSV, the validation data, the model of the run."""
    d = cfg.data
    if not d.train_data:
        raise UserError("no training data: --negclip needs --train-data, a NegCLIP TSV (vlt5r mine-negclip)")
    train = read_negclip_tsv(d.train_data, d.image_column, d.caption_column, d.image_root, d.verify_images)
    if len(train) < d.batch_size:
        raise UserError(f"{d.train_data}: {len(train)} usable NegCLIP rows, fewer than one batch of {d.batch_size}")
    val = open_dataset(d.val_data, d.data_format, d.image_column, d.caption_column, d.image_root,
                       d.verify_images) if d.val_data else None
    return NegCLIPTask(build_model(cfg), train, val, cfg, env).to(env.device)
