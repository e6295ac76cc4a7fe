"""Distilling a multilingual student from a CLIP teacher on the shared engine (:mod:`engine`): :class:`DistillTask`,
:func:`train` (``vlt5r distill`` is a thin driver over it) and :class:`CrossLingual`, the Python equivalent
(vi_clip's name for the trainer; the result is an :class:`multilingual.model.MCLIP`).

* model + loss — the student's embedding of the *foreign* sentence against the teacher's embedding of its
  *English* original (:func:`multilingual.losses.distill_loss`: ``mse`` | ``cosine`` | ``cl`` and ``alpha``
  mixtures), plus, with ``--layer-kd``, :func:`multilingual.losses.layer_kd_loss` over pooled block outputs through
  learned linear maps (training-only: kept in ``training_state.pt``, not in the mCLIP);
* the teacher — run frozen on every batch, or never: ``--teacher-features FILE`` reads its embeddings from a
  feature file made by the extraction room (``vlt5r extract --texts`` over the English side; written here on rank 0
  when it does not exist), checked against the teacher's weights and the sentences it must hold;
* parameter groups — ``student`` (the transformer) and ``proj`` (the linear map, and the layer maps);
* data — a global batch of pairs per micro-batch (``batch_size / world`` per rank), one permutation per epoch, pure
  in (seed, epoch), so a resume sees the same batches;
* evaluation each epoch — on ``--val-data``: ``val_mse``, ``val_cosine`` and ``val_t2t_r@1`` (a foreign sentence
  finds its English original among the held-out ones, student vs teacher space); with ``--xtd-*``: the XTD table
  (:mod:`multilingual.evaluation`), written to ``OUT/xtd.json`` / ``OUT/xtd.md`` after training.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import engine
from engine.distributed import barrier
from feature_extraction.backbone_base import file_sha256
from feature_extraction.store import FeatureStore
from foundations.errors import UserError
from multilingual.config import DistillConfig
from multilingual.data import Columns, ParallelDataset, open_parallel, write_english_texts
from multilingual.evaluation import (TEACHER_LANG, Caption, evaluate_xtd, flat_metrics, image_pool, read_captions,
                                     write_xtd)
from multilingual.losses import distill_loss, layer_kd_loss
from multilingual.model import MCLIP
from multilingual.teacher import TeacherText, default_layer_pairs, load_teacher, teacher_weights_file

logger = logging.getLogger(__name__)


# -- the teacher's embeddings in a feature file ------------------------------------------------------------------
def write_teacher_features(path: Path, teacher: str, english: dict[str, str], batch_size: int = 256) -> None:
    """Embed every English sentence with the real extraction pipeline (``vlt5r extract --texts``, float32), from
    ``PATH.english.jsonl`` (kept beside the file: the exact input of the extraction)."""
    from feature_extraction.config import ExtractConfig, ShardSpec
    from feature_extraction.extract import extract

    texts = write_english_texts(english, path.with_name(path.stem + ".english.jsonl"))
    logger.info("%s: embedding %d English sentences with the teacher %s", path, len(english), teacher)
    extract(ExtractConfig(out=path, backbone=teacher, texts=texts, batch_size=batch_size, dtype="float32",
                          grid=False, shard=ShardSpec(), progress=False))


def open_teacher_features(path: str | Path, teacher: str, keys: set[str], embed_dim: int) -> FeatureStore:
    """The feature file of the teacher's embeddings, refused (one line) when another model made it, it is not text
    embeddings of the teacher's dimension, or it lacks sentences."""
    from feature_extraction.readers import open_features

    store = open_features(path)
    attrs = store.attrs
    weights = teacher_weights_file(teacher)
    problem = None
    if attrs.get("modality") not in (None, "text"):
        problem = f"holds {attrs.get('modality')} features, not text embeddings"
    elif len(store) and store.get(store.ids[0]).fc.shape[1] != embed_dim:
        problem = f"holds vectors of dim {store.get(store.ids[0]).fc.shape[1]}, the teacher's are {embed_dim}"
    elif weights is not None and attrs.get("backbone_sha256") not in (None, file_sha256(weights)):
        problem = (f"was extracted with backbone {attrs.get('backbone')!r}, not the teacher {teacher} (another "
                   "weights sha256)")
    else:
        missing = sorted(keys - set(store.ids))
        if missing:
            problem = f"lacks {len(missing)} English sentence(s) of the data (first id {missing[0]})"
    if problem:
        store.close()
        raise UserError(f"--teacher-features {path} {problem}; delete it to have it written again")
    return store


# -- the task ----------------------------------------------------------------------------------------------------
class DistillTask(engine.Task):
    """Student + frozen teacher (or its stored embeddings) + parallel data + dev evaluation of one distillation."""

    def __init__(self, model: MCLIP, train: ParallelDataset, val: ParallelDataset | None, cfg: DistillConfig,
                 teacher: TeacherText | None = None, teacher_store: FeatureStore | None = None,
                 env: engine.DistEnv | None = None) -> None:
        super().__init__()
        if teacher is None and teacher_store is None:
            raise UserError("a distillation needs the teacher's text tower or its stored embeddings")
        self.model, self.teacher, self.store = model, teacher, teacher_store
        self.train_data, self.val_data, self.cfg = train, val, cfg
        self.env = env or engine.DistEnv()
        if cfg.data.batch_size % self.env.world_size:
            raise UserError(f"--batch-size {cfg.data.batch_size} must be divisible by the {self.env.world_size} ranks")
        self.pairs: list[tuple[int, int]] = []
        self.layer_maps = nn.ModuleList()
        if cfg.model.layer_kd:
            if teacher is None:
                raise UserError("--layer-kd needs the teacher's text tower (not --teacher-features)")
            depth = model.text.encoder.config.num_hidden_layers
            self.pairs = cfg.model.pairs() or default_layer_pairs(depth, teacher.depth)
            for s, t in self.pairs:
                if s > depth or t > teacher.depth:
                    raise UserError(f"--layer-pairs {s}:{t}: the student has {depth} blocks, the teacher "
                                    f"{teacher.depth}")
            self.layer_maps = nn.ModuleList(nn.Linear(model.text.width, teacher.width, bias=False) for _ in self.pairs)
        self.xtd_images: tuple[list[str], Tensor] | None = None
        self.xtd_captions: list[Caption] = []
        self._teacher_xtd: Tensor | None = None
        self._eval_teacher: tuple[TeacherText | None] | None = None
        self.select_metric = cfg.eval.select_metric or ("val_cosine" if val is not None else
                                                        "xtd_mean_t2i_r@10" if cfg.eval.xtd_images else None)

    # -- model + loss ------------------------------------------------------------------------------------------
    def teacher_embeddings(self, batch: dict[str, Any]) -> tuple[Tensor, list[Tensor]]:
        if "teacher_embeddings" in batch:
            return batch["teacher_embeddings"], []
        assert self.teacher is not None
        with torch.no_grad():
            tokens = batch["teacher_tokens"]
            layers = self.teacher.layers(tokens) if self.pairs else []
            return self.teacher.embed(tokens), layers

    def training_forward(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        if self.pairs:
            student, student_layers = self.model.text_hidden_states(batch["tokens"])  # (b, E), depth x (b, W)
        else:
            student, student_layers = self.model.text_features(batch["tokens"]), []  # (b, E)
        teacher, teacher_layers = self.teacher_embeddings(batch)  # (b, E)
        teacher = teacher.to(student.dtype)
        c = self.cfg.loss
        loss, metrics = distill_loss(student, teacher, c.loss, c.alpha, c.alpha_loss, c.temperature,
                                     local_loss=self.cfg.optim.local_loss,
                                     gather_with_grad=self.cfg.optim.gather_with_grad)
        if self.pairs:
            kd = layer_kd_loss([student_layers[s - 1] for s, _ in self.pairs],
                               [teacher_layers[t - 1].to(student.dtype) for _, t in self.pairs], self.layer_maps)
            loss = loss + c.layer_kd_weight * kd
            metrics["loss_layer_kd"] = kd.detach()
        with torch.no_grad():
            s, t = F.normalize(student.float(), dim=-1), F.normalize(teacher.float(), dim=-1)
            metrics["cosine"] = (s * t).sum(-1).mean()
            metrics["in_batch_accuracy"] = ((s @ t.T).argmax(1) == torch.arange(len(s), device=s.device)).float().mean()
        metrics["loss"] = loss.detach()
        return loss, metrics

    def param_groups(self) -> list[dict[str, Any]]:
        o = self.cfg.optim

        def trainable(*modules: nn.Module) -> list[nn.Parameter]:
            return [p for m in modules for p in m.parameters() if p.requires_grad]

        groups = [
            {"name": "student", "params": trainable(self.model.text),
             "lr": o.lr_student if o.lr_student is not None else o.lr},
            {"name": "proj", "params": trainable(self.model.text_projection, self.layer_maps),
             "lr": o.lr_proj if o.lr_proj is not None else o.lr},
        ]
        return [g for g in groups if g["params"]]

    # -- data --------------------------------------------------------------------------------------------------
    def micro_batches_per_epoch(self) -> int:
        return len(self.train_data) // self.cfg.data.batch_size

    def epoch_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.cfg.loop.seed, epoch]).permutation(len(self.train_data))

    def batch(self, pairs: list[Any]) -> dict[str, Any]:
        """Student tokens of the foreign sentences + the teacher's side of their English originals."""
        out: dict[str, Any] = {"tokens": self.model.tokenize([p.foreign for p in pairs])}
        if self.store is not None:
            out["teacher_embeddings"] = torch.from_numpy(self.store.get_many([p.key for p in pairs]).fc).float()
        else:
            out["teacher_tokens"] = self.teacher.tokenize([p.english for p in pairs])  # type: ignore[union-attr]
        return out

    def train_batches(self, epoch: int, start: int, stop: int) -> Any:
        order = self.epoch_order(epoch)
        global_b = self.cfg.data.batch_size
        local_b = global_b // self.env.world_size
        for micro in range(start, stop):
            first = micro * global_b + self.env.rank * local_b
            yield self.batch([self.train_data.pairs[int(i)] for i in order[first: first + local_b]])

    # -- evaluation --------------------------------------------------------------------------------------------
    def encode_pairs(self, pairs: list[Any]) -> tuple[Tensor, Tensor]:
        """(student embeddings of the foreign side, teacher embeddings of the English side), (N, E) each."""
        bs, device = self.cfg.eval.eval_batch_size, self.model.device
        student, teacher = [], []
        for i in range(0, len(pairs), bs):
            batch = engine.move_to(self.batch(pairs[i: i + bs]), device)
            student.append(self.model.text_features(batch["tokens"]).float().cpu())
            teacher.append(self.teacher_embeddings(batch)[0].float().cpu())
        return torch.cat(student), torch.cat(teacher)

    def teacher_text_for_eval(self) -> TeacherText | None:
        """The teacher's text side for the XTD table's teacher row: the one training runs, or (teacher features) the
        teacher loaded once for it, kept outside the module tree (it is no part of the task's state)."""
        if self.teacher is not None:
            return self.teacher
        if self._eval_teacher is None:
            try:
                text = load_teacher(self.cfg.model.teacher).text
                self._eval_teacher = (text.to(self.model.device),)  # type: ignore[union-attr]
            except UserError as exc:
                logger.warning("no teacher row in the XTD table: %s", exc)
                self._eval_teacher = (None,)
        return self._eval_teacher[0]

    def xtd(self) -> dict[str, Any] | None:
        e = self.cfg.eval
        if e.xtd_images is None or e.xtd_captions is None:
            return None
        if self.xtd_images is None:
            def encode_images(paths: list[Path]) -> Tensor:
                return self.model.encode_image(paths).float().cpu()

            self.xtd_images = image_pool(e.xtd_images, encode_images, e.eval_batch_size)
            self.xtd_captions, _ = read_captions(e.xtd_captions, set(self.xtd_images[0]))

        def student(texts: list[str]) -> Tensor:
            return self.model.encode_text(texts, batch_size=e.eval_batch_size).float().cpu()

        teacher_text = self.teacher_text_for_eval()

        def teacher(texts: list[str]) -> Tensor:  # the frozen teacher's row never changes: computed once
            if self._teacher_xtd is None:
                self._teacher_xtd = teacher_text.encode(texts, e.eval_batch_size).float().cpu()  # type: ignore
            return self._teacher_xtd

        return evaluate_xtd(*self.xtd_images, self.xtd_captions, student,
                            teacher if teacher_text is not None else None, TEACHER_LANG)

    def evaluate(self) -> dict[str, float] | None:
        metrics: dict[str, float] = {}
        if self.val_data is not None:
            student, teacher = self.encode_pairs(self.val_data.pairs)
            metrics["val_mse"] = float(F.mse_loss(student, teacher))
            s, t = F.normalize(student, dim=-1), F.normalize(teacher, dim=-1)
            metrics["val_cosine"] = float((s * t).sum(-1).mean())
            # several pairs can share one English sentence: a foreign sentence finds any row of its original
            number: dict[str, int] = {}
            original = torch.tensor([number.setdefault(p.key, len(number)) for p in self.val_data.pairs])  # (N,)
            found = original[(s @ t.T).argmax(1)]  # (N,) the original of the nearest English row
            metrics["val_t2t_r@1"] = float((found == original).float().mean())
        result = self.xtd()
        if result is not None:
            metrics.update(flat_metrics(result))
        return metrics or None

    def test(self, best: Path | None) -> dict[str, float] | None:
        if self.cfg.eval.xtd_images is None:
            return None
        if best is not None:
            self.load_model(best)
        result = self.xtd()
        assert result is not None
        paths = write_xtd(result, self.cfg.loop.out)
        logger.info("XTD table: %s", paths[1])
        return flat_metrics(result)

    # -- files -------------------------------------------------------------------------------------------------
    def save_model(self, directory: Path) -> None:
        self.model.save_pretrained(directory)

    def load_model(self, directory: Path) -> None:
        self.model.load_weights(Path(directory) / "model.safetensors")

    def extra_state(self) -> dict[str, Any]:
        return {"layer_maps": dict(self.layer_maps.state_dict())} if self.pairs else {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if self.pairs:
            self.layer_maps.load_state_dict(state["layer_maps"])


def build_task(cfg: DistillConfig, env: engine.DistEnv) -> DistillTask:
    d, m = cfg.data, cfg.model
    if not d.train_data:
        raise UserError("no training data: pass --train-data (parallel sentences: .jsonl, .csv, .tsv, .parquet or a "
                        "datasets folder)")
    if not m.student:
        raise UserError("no student: pass --student (a transformers text encoder directory)")
    columns = Columns(d.english_column, d.foreign_column, d.lang_column)
    train_data = open_parallel(d.train_data, columns, d.data_format, d.split)
    val = open_parallel(d.val_data, columns, d.data_format, d.split) if d.val_data else None
    if len(train_data) < d.batch_size:
        raise UserError(f"{', '.join(d.train_data)}: {len(train_data)} usable pairs, fewer than one batch of "
                        f"{d.batch_size}")
    teacher = load_teacher(m.teacher, with_text=d.teacher_features is None)
    info = {"languages": train_data.languages, "loss": cfg.loss.loss, "alpha": cfg.loss.alpha}
    model = MCLIP.from_teacher(teacher, m.student, m.pooling, m.max_length, info)
    store = None
    if d.teacher_features is not None:
        english = {**train_data.english(), **(val.english() if val is not None else {})}
        path = Path(d.teacher_features)
        if env.is_main and not path.exists():  # rank 0 writes the file before any rank reads it
            write_teacher_features(path, m.teacher, english, cfg.eval.eval_batch_size)
        barrier(env)
        store = open_teacher_features(path, m.teacher, set(english), teacher.embed_dim)
    task = DistillTask(model, train_data, val, cfg, teacher.text, store, env)
    return task.to(env.device)


def train(cfg: DistillConfig) -> engine.FitResult:
    """Build the task from the config and run the engine (setup -> fit -> teardown)."""
    env = engine.setup(cfg.loop, cfg.optim)
    try:
        task = build_task(cfg, env)
        return engine.fit(task, cfg.loop, cfg.optim, cfg.to_dict(), env)
    finally:
        engine.teardown(env)


class CrossLingual:
    """The Python equivalent of ``vlt5r distill``: ``CrossLingual(cfg).train()`` (vi_clip's name)."""

    def __init__(self, cfg: DistillConfig) -> None:
        self.cfg = cfg

    def train(self) -> engine.FitResult:
        return train(self.cfg)


__all__ = ["CrossLingual", "DistillTask", "build_task", "open_teacher_features", "train", "write_teacher_features"]
