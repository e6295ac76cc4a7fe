"""The retrieval trainer's :class:`engine.task.Task`: joint query encoder + DPR loss + data + evaluation.

* model + loss — the query encoder, the frozen KB vectors and the temperature (stored as log tau);
  ``training_forward(batch) -> (loss, metrics)`` is DPR's softmax over the candidate pool of the global batch
  (:func:`retrieval.losses.build_candidates` / :func:`retrieval.losses.dpr_loss`; Karpukhin et al. 2020 §3.2).
  With several processes and ``gather_negatives`` the pool is built from every rank's positives and hard
  negatives (ids gathered; the KB side is frozen, so no autograd through the gather) and each rank scores its own
  queries; DDP's gradient averaging then equals the gradient of the single-process loss on the global batch.
* data — :class:`retrieval.training.batches.EpochBatches` (deterministic, resumable, sharded micro-batches);
* evaluation — dev MRR/recall by exact search over the KB (``best/`` follows ``eval.select_metric``), the
  baseline table before training (``baselines.json``) and the test comparison after it (``comparison.json``);
* files — the encoder is saved as a ``QueryEncoder`` dir (+ ``backbone.json`` naming the query features' CLIP).

:func:`build_task` loads the KB, queries and features named by a :class:`TrainConfig` and builds the encoder.
"""

from __future__ import annotations

import json
import logging
import math
import zlib
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from engine import DistEnv, Task, user_errors
from engine.distributed import gather_objects
from feature_extraction.readers import open_features as read_feature_file
from feature_extraction.store import FeatureStore
from foundations.errors import UserError
from retrieval.formats import Query
from retrieval.losses import build_candidates, dpr_loss, kb_candidates
from foundations.config import save_json
from retrieval.training.baselines import baseline_table, format_table
from retrieval.training.diagnostics import diagnostic_queries, verdict
from retrieval.training.batches import EpochBatches, TokenizedQuestions, make_loader
from retrieval.training.config import TrainConfig
from retrieval.training.data import (KBVectors, check_training_features, feature_dims, load_kb, load_queries,
                                    open_features)
from retrieval.training.evaluation import encode_queries, evaluate_vectors, flat_index
from retrieval.training.model import build_encoder, optimizer_groups
from vlt5 import QueryEncoder
from vlt5.checkpoint import WEIGHTS_NAME, read_safetensors

logger = logging.getLogger(__name__)
LARGE_KB = 200_000  # above this many entries, --negatives all warns about its per-step cost


def save_encoder(directory: Path, encoder: QueryEncoder, feature_attrs: dict[str, Any] | None) -> None:
    """The encoder + ``backbone.json`` naming the CLIP backbone of its query features (when they record one), so
    the search CLI and server encode new images with the same backbone without the training files."""
    from retrieval.querying.backbone_ref import record_from_attrs, write_backbone_record

    encoder.save_pretrained(directory)
    if feature_attrs is not None and record_from_attrs(feature_attrs) is not None:
        write_backbone_record(directory, feature_attrs)


class RetrievalTask(Task):
    """Query encoder + frozen KB vectors + temperature, with the training and evaluation data of one run.
    ``kb_vectors`` is a plain attribute on ``env.device``, not a buffer: never saved nor broadcast by DDP."""

    def __init__(self, encoder: QueryEncoder, kb: KBVectors, splits: dict[str, list[Query]], store: FeatureStore,
                 cfg: TrainConfig, env: DistEnv | None = None, questions: FeatureStore | None = None) -> None:
        super().__init__()
        env = env or DistEnv()
        self.encoder = encoder
        self.log_temperature = nn.Parameter(torch.tensor(math.log(cfg.optim.temperature)),
                                            requires_grad=cfg.optim.learn_temperature)
        self.kb, self.splits, self.store, self.questions, self.cfg, self.env = kb, splits, store, questions, cfg, env
        self.kb_vectors = torch.from_numpy(kb.vectors).to(env.device)  # (N, D), rows normalised
        self.kb_row = kb.row_of()
        if cfg.data.negatives == "all" and len(self.kb_row) > LARGE_KB and env.is_main:
            logger.warning("--negatives all scores every query against all %d KB entries each step (measured: ~74 ms "
                           "per step at 100k x 512 on 2 CPU cores, ~1.5 s at 1M; docs/training.md §10); with a small "
                           "encoder consider --negatives batch --kb-negatives 4096", len(self.kb_row))
        self.select_metric = cfg.eval.select_metric if "dev" in splits else None
        self.tokens = TokenizedQuestions(encoder.tokenizer, [q.question for q in splits["train"]],
                                         encoder.config.inputs)
        self._kb_index: Any = None
        self.comparison: dict[str, dict[str, float]] = {}  # the test table, once test() ran

    @property
    def temperature(self) -> float:
        return float(self.log_temperature.exp())

    @property
    def kb_index(self) -> Any:
        """The exact (Flat) KB index every evaluation shares, built on first use."""
        if self._kb_index is None:
            self._kb_index = flat_index(self.kb.ids, self.kb.vectors)
        return self._kb_index

    # -- model + loss ----------------------------------------------------------------------------------------------
    def candidate_pool(self, positives: list[list[str]], negatives: list[list[str]]) -> tuple[list[str], Tensor]:
        """Candidate ids and this rank's (Q_local, C) positive mask; the pool spans all ranks when gathering."""
        if not (self.cfg.loop.gather_negatives and self.env.distributed):
            return build_candidates(positives, negatives)
        everyone = gather_objects((positives, negatives), self.env)  # [(pos, neg) of rank 0, rank 1, ...]
        offset = sum(len(p) for p, _ in everyone[: self.env.rank])
        all_pos = [p for pos, _ in everyone for p in pos]
        all_neg = [n for _, neg in everyone for n in neg]
        return build_candidates(all_pos, all_neg, queries=range(offset, offset + len(positives)))

    def training_forward(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        queries = self.encoder(**batch["inputs"])  # (Q, D)
        rows, mask = self.candidates(batch)  # (C,), (Q, C)
        # (C, D); the whole KB is used as it is (no per-step copy of an N x D matrix)
        candidates = (self.kb_vectors if self.cfg.data.negatives == "all"
                      else self.kb_vectors[rows.to(self.kb_vectors.device)])
        mask = mask.to(queries.device)
        tau = self.log_temperature.exp()
        loss = dpr_loss(queries, candidates, mask, tau, candidates_normalized=True)  # kb_vectors: unit rows
        with torch.no_grad():
            top = (queries.float() @ candidates.T).argmax(dim=1)  # (Q,)
            accuracy = mask.gather(1, top[:, None]).float().mean()
        return loss, {"loss": loss.detach(), "in_batch_accuracy": accuracy,
                      "candidates": torch.tensor(float(len(rows))), "temperature": tau.detach()}

    def candidates(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """KB rows this rank's queries are scored against and the (Q, C) positive mask: the whole KB
        (``data.negatives="all"``), or the (global) batch pool plus ``data.kb_negatives`` random KB rows drawn
        from a generator seeded by the run seed and the batch's query ids (deterministic: resume-exact)."""
        data = self.cfg.data
        positive_rows = [[self.kb_row[p] for p in pos] for pos in batch["positives"]]
        if data.negatives == "all":
            return kb_candidates(positive_rows, [], len(self.kb_row), "all")
        ids, _ = self.candidate_pool(batch["positives"], batch["negatives"])
        generator = None
        if data.kb_negatives:
            key = zlib.crc32("\n".join(batch.get("query_ids", [])).encode()) ^ self.cfg.loop.seed
            generator = torch.Generator().manual_seed(key)
        return kb_candidates(positive_rows, [self.kb_row[i] for i in ids], len(self.kb_row), "batch",
                             data.kb_negatives, generator)

    def param_groups(self) -> list[dict[str, Any]]:
        return optimizer_groups(self.encoder, self.log_temperature, self.cfg.optim)

    # -- data --------------------------------------------------------------------------------------------------------
    def micro_batches_per_epoch(self) -> int:
        return len(self.splits["train"]) // self.cfg.data.batch_size

    def train_batches(self, epoch: int, start: int, stop: int) -> Any:
        data = self.cfg.data
        batches = EpochBatches(self.splits["train"], self.store, self.tokens, self.encoder.config.inputs,
                               data.batch_size, data.hard_negatives, self.cfg.loop.seed, epoch, self.env.rank,
                               self.env.world_size)
        return make_loader(batches, start, stop, data.num_workers, data.prefetch,
                           pin_memory=self.env.device.type == "cuda")

    def move_batch(self, batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
        batch["inputs"] = {k: v.to(device, non_blocking=True) for k, v in batch["inputs"].items()}
        return batch

    # -- evaluation ----------------------------------------------------------------------------------------------
    def evaluate_split(self, split: str, encoder: Any = None) -> dict[str, float]:
        return self.evaluate_queries(self.splits[split], encoder or self.encoder)

    def evaluate(self) -> dict[str, float] | None:
        return self.evaluate_split("dev") if "dev" in self.splits else None

    def on_fresh_start(self, run_dir: Path) -> None:
        """The baseline table on dev and test before training (``baselines.json``)."""
        if not self.cfg.eval.baselines:
            return
        tables = {split: baseline_table(qs, self.kb, self.store, self.questions, {"joint_untrained": self.encoder},
                                        self.cfg.eval.metrics, self.cfg.eval.encode_batch_size, self.kb_index)
                  for split, qs in self.splits.items() if split != "train"}
        (run_dir / "baselines.json").write_text(json.dumps(tables, indent=2) + "\n")
        for split, table in tables.items():
            logger.info("baselines on %s before training:\n%s", split, format_table(table))

    def test(self, best: Path | None) -> dict[str, float] | None:
        """The best encoder on test, with the shuffled-question / shuffled-image diagnostics; the comparison
        table with the baselines goes to ``comparison.json``."""
        if "test" not in self.splits:
            return None
        final = QueryEncoder.from_pretrained(best).to(self.env.device) if best is not None else self.encoder
        queries = self.splits["test"]
        joint = self.evaluate_queries(queries, final)
        run_dir = Path(self.cfg.loop.out)
        before = run_dir / "baselines.json"
        self.comparison = {**(json.loads(before.read_text()).get("test", {}) if before.is_file() else {}),
                           "joint": joint}
        if self.cfg.eval.diagnostics:
            for suffix, shuffled in diagnostic_queries(queries, self.cfg.loop.seed).items():
                self.comparison[f"joint_{suffix}"] = self.evaluate_queries(shuffled, final)
        write_comparison(run_dir, self.comparison, self.cfg.eval.select_metric, len(queries))
        return joint

    def evaluate_queries(self, queries: list[Query], encoder: Any) -> dict[str, float]:
        vectors = encode_queries(encoder, queries, self.store, self.cfg.eval.encode_batch_size)
        return evaluate_vectors(vectors, queries, self.kb_index, self.cfg.eval.metrics, name="joint")

    # -- files -----------------------------------------------------------------------------------------------------
    def save_model(self, directory: Path) -> None:
        save_encoder(directory, self.encoder, self.store.attrs)

    def load_model(self, directory: Path) -> None:
        weights = read_safetensors(directory / WEIGHTS_NAME)
        missing, unexpected = self.encoder.load_state_dict(weights, strict=False)
        if missing or unexpected:
            raise UserError(f"{directory}: the checkpoint does not match the model built from the config (missing "
                             f"{missing[:5]}, unexpected {unexpected[:5]}); resume with the run's own config.json")

    def extra_state(self) -> dict[str, Tensor]:
        return {"log_temperature": self.log_temperature.detach().cpu()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.log_temperature.copy_(state["log_temperature"])


def build_task(cfg: TrainConfig, env: DistEnv | None = None) -> RetrievalTask:
    """Load the KB vectors, queries and features of ``cfg``, build the encoder; on ``env.device``. A problem with
    the user's files or flags raises :class:`foundations.errors.UserError`."""
    env = env or DistEnv()
    with user_errors():
        d = cfg.data
        check_training_features(d.kb_features, d.kb_text_features, d.kb_side, d.query_features, d.question_features)
        kb = load_kb(cfg.data.kb, cfg.data.kb_features, cfg.data.kb_text_features, cfg.data.kb_side)
        store = open_features(cfg.data.query_features, cfg.data.cache_features, cfg.data.cache_max_gb)
        kb_ids = set(kb.ids)
        splits = {"train": load_queries(cfg.data.train_queries, kb_ids, store, "train")}
        for split in ("dev", "test"):
            if getattr(cfg.data, f"{split}_queries"):
                splits[split] = load_queries(getattr(cfg.data, f"{split}_queries"), kb_ids, store, split)
        questions = read_feature_file(cfg.data.question_features) if cfg.data.question_features else None
        n, batch, accum = len(splits["train"]), cfg.data.batch_size, cfg.optim.grad_accum
        if n // batch // accum == 0:
            raise UserError(f"{cfg.data.train_queries}: {n} queries make no optimizer step of {batch} x {accum} "
                             "(batch size x grad_accum)")
        encoder = build_encoder(cfg.model, *feature_dims(store), kb.dim).to(env.device)
        return RetrievalTask(encoder, kb, splits, store, cfg, env, questions).to(env.device)


def write_comparison(run_dir: Path, table: dict[str, dict[str, float]], metric: str, n_queries: int) -> None:
    """``comparison.json`` and the logged table with the diagnostics' verdict under it."""
    save_json(run_dir / "comparison.json", table)
    text = "\n".join([format_table(table), *verdict(table, metric)])
    logger.info("test split (%d queries):\n%s", n_queries, text)


class ReferenceTask(RetrievalTask):
    """The generic reference encoder (:mod:`retrieval.training.reference`) trained by the same task: same data
    order, candidates, loss, temperature and budget; one AdamW group at ``optim.lr_head``."""

    def param_groups(self) -> list[dict[str, Any]]:
        wd = self.cfg.optim.weight_decay
        return [{"name": "reference", "params": [p for p in self.encoder.parameters() if p.requires_grad],
                 "lr": self.cfg.optim.lr_head, "weight_decay": wd},
                {"name": "temperature", "params": [self.log_temperature], "lr": self.cfg.optim.lr_head,
                 "weight_decay": 0.0}]

    def on_fresh_start(self, run_dir: Path) -> None:
        return None

    def save_model(self, directory: Path) -> None:
        self.encoder.save_pretrained(directory)

    def load_model(self, directory: Path) -> None:
        self.encoder.load_state_dict(read_safetensors(directory / "model.safetensors"))

    def test(self, best: Path | None) -> dict[str, float] | None:
        if "test" not in self.splits:
            return None
        if best is not None:
            self.load_model(best)
        return self.evaluate_split("test")


def train_reference(task: RetrievalTask, env: DistEnv) -> dict[str, float] | None:
    """Train the generic reference beside ``task``'s encoder (``OUT/reference``, resumable like any run) and add
    its test row to ``comparison.json``; returns that row (rank 0) or None."""
    import dataclasses

    import engine
    from retrieval.training.reference import reference_like

    cfg = task.cfg
    loop = dataclasses.replace(cfg.loop, out=str(Path(cfg.loop.out) / "reference"), resume="auto",
                               save_init=False)
    sub_cfg = dataclasses.replace(cfg, loop=loop)
    torch.manual_seed(cfg.loop.seed)  # the same initial weights on every rank
    if cfg.model.init == "random":  # the same width, depth, heads and dropout as the joint encoder
        model = task.encoder.config.model
        reference = reference_like(task.encoder, d_model=model.d_model, num_layers=model.num_layers,
                                   num_heads=model.num_heads, dropout=model.dropout_rate)
    else:  # a pretrained encoder: the small standard transformer (d 128, 2 layers, 4 heads)
        reference = reference_like(task.encoder)
    reference = ReferenceTask(reference.to(env.device), task.kb, task.splits, task.store,
                              sub_cfg, env).to(env.device)
    fitted = engine.fit(reference, loop, cfg.optim, sub_cfg.to_dict(), env)
    if not env.is_main or fitted.test is None or "test" not in task.splits:
        return None
    task.comparison["generic_reference"] = fitted.test
    write_comparison(Path(cfg.loop.out), task.comparison, cfg.eval.select_metric, len(task.splits["test"]))
    return fitted.test
