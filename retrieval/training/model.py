"""The query encoder to train and the training task around it.

:func:`build_encoder` makes the joint query encoder of :mod:`vlt5` from a :class:`ModelConfig` (random init,
a plain T5 dir, a VL-T5 checkpoint, or a saved QueryEncoder to continue), adds adapters and applies the freezing
policy. :class:`RetrievalTask` = encoder + frozen KB vectors + temperature, with
``training_forward(batch) -> (loss, metrics)``: DPR's softmax over the candidate pool of the global batch
(:func:`retrieval.losses.build_candidates` / :func:`retrieval.losses.dpr_loss`; Karpukhin et al. 2020 §3.2).
With several processes and ``gather_negatives`` the pool is built from every rank's positives and hard negatives
(ids gathered; the KB side is frozen, so no autograd through the gather) and each rank scores its own queries;
DDP's gradient averaging then equals the gradient of the single-process loss on the global batch.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import Tensor, nn

from adapters import HoulsbyConfig, LoRAConfig, PromptConfig
from adapters.policy import apply_policy, param_groups
from retrieval.losses import build_candidates, dpr_loss
from retrieval.training.config import ModelConfig, OptimConfig
from retrieval.training.distributed import DistEnv, gather_objects
from vlt5 import QueryEncoder, QueryEncoderConfig, VisualConfig, VisualInputConfig, VLT5Config, load_tokenizer
from vlt5.tokenization import N_VIS_EXTRA_IDS

logger = logging.getLogger(__name__)


def build_encoder(cfg: ModelConfig, fc_dim: int, grid_tokens: int | None, grid_dim: int | None,
                  kb_dim: int) -> QueryEncoder:
    """A query encoder whose inputs match the query feature file and whose output size is the KB's."""
    if cfg.proj_dim is not None and cfg.proj_dim != kb_dim:
        raise ValueError(f"model.proj_dim {cfg.proj_dim} != KB embedding dim {kb_dim}: the query vectors must live "
                         "in the KB's CLIP space (leave --proj-dim unset to use the KB dim)")
    if cfg.grid and grid_dim is None:
        raise ValueError("the query feature file has no grid: use --no-grid --fc-token")
    kind, _, where = cfg.init.partition(":")
    if kind == "encoder":
        qe = QueryEncoder.from_pretrained(where)
        if qe.config.proj_dim != kb_dim:
            raise ValueError(f"{where}: encoder output dim {qe.config.proj_dim} != KB embedding dim {kb_dim}")
        logger.info("continuing from %s (its architecture, inputs and adapters; model flags ignored)", where)
        apply_policy(qe, cfg.resolved_policy)
        return qe
    inputs = VisualInputConfig(grid=cfg.grid, fc_token=cfg.fc_token, boxes=cfg.boxes, max_length=cfg.max_length,
                               prefix=cfg.prefix)
    n_visual = (cfg.pool_grid_to**2 if cfg.pool_grid_to else grid_tokens or 0) * cfg.grid + int(cfg.fc_token)
    if n_visual > N_VIS_EXTRA_IDS:
        raise ValueError(f"{n_visual} visual tokens per image, but VL-T5 has {N_VIS_EXTRA_IDS} object-order "
                         "embeddings: use --pool-grid-to N")
    feat_dim = grid_dim if cfg.grid and grid_dim is not None else fc_dim
    visual = {"fc_dim": fc_dim if cfg.fc_token else None, "pool_grid_to": cfg.pool_grid_to}
    proj_dim = cfg.proj_dim or kb_dim
    if kind == "random":
        tokenizer = load_tokenizer(cfg.tokenizer)
        model = VLT5Config(vocab_size=len(tokenizer), d_model=cfg.d_model, d_kv=cfg.d_kv, d_ff=cfg.d_ff,
                           num_layers=cfg.num_layers, num_heads=cfg.num_heads, dropout_rate=cfg.dropout,
                           visual=VisualConfig(feat_dim=feat_dim, **visual))
        qe = QueryEncoder(QueryEncoderConfig(model=model, inputs=inputs, pooling=cfg.pooling, proj_dim=proj_dim),
                          tokenizer=tokenizer)
    elif kind == "t5":
        qe = QueryEncoder.from_t5(where, proj_dim, feat_dim, pooling=cfg.pooling, inputs=inputs,
                                  tokenizer_dir=cfg.tokenizer, dropout_rate=cfg.dropout, visual=visual)
    else:
        qe, report = QueryEncoder.from_vlt5_checkpoint(where, cfg.tokenizer or "", proj_dim, pooling=cfg.pooling,
                                                       inputs=inputs, dropout_rate=cfg.dropout, visual=visual)
        logger.info("VL-T5 checkpoint: %s", report)
        if cfg.grid and qe.config.model.visual.feat_dim != grid_dim:
            raise ValueError(f"{where}: the checkpoint's visual feat_dim {qe.config.model.visual.feat_dim} != the "
                             f"query features' grid dim {grid_dim} (extract them with the matching CLIP backbone)")
    adapter = {"houlsby": lambda: HoulsbyConfig(reduction_factor=cfg.adapter_reduction),
               "lora": lambda: LoRAConfig(r=cfg.lora_r, alpha=cfg.lora_alpha),
               "prompt": lambda: PromptConfig(length=cfg.prompt_length, mid_dim=cfg.prompt_mid_dim)}.get(cfg.adapters)
    if adapter is not None:
        qe.add_adapter(adapter())
    qe.config.policy = cfg.resolved_policy
    apply_policy(qe, cfg.resolved_policy)
    return qe


class RetrievalTask(nn.Module):
    """Query encoder + frozen KB vectors + temperature (stored as log tau). ``kb_vectors`` is a plain attribute,
    not a buffer: it is never saved with the model nor broadcast by DDP."""

    def __init__(self, encoder: QueryEncoder, kb_ids: list[str], kb_vectors: Tensor, temperature: float,
                 learn_temperature: bool, env: DistEnv = DistEnv(), gather_negatives: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)), requires_grad=learn_temperature)
        self.kb_vectors = kb_vectors  # (N, D), rows normalised
        self.kb_row = {kb_id: n for n, kb_id in enumerate(kb_ids)}
        self.env, self.gather_negatives = env, gather_negatives

    @property
    def temperature(self) -> float:
        return float(self.log_temperature.exp())

    def forward(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        return self.training_forward(batch)

    def candidate_pool(self, positives: list[list[str]], negatives: list[list[str]]) -> tuple[list[str], Tensor]:
        """Candidate ids and this rank's (Q_local, C) positive mask; the pool spans all ranks when gathering."""
        if not (self.gather_negatives and self.env.distributed):
            return build_candidates(positives, negatives)
        everyone = gather_objects((positives, negatives), self.env)  # [(pos, neg) of rank 0, rank 1, ...]
        offset = sum(len(p) for p, _ in everyone[: self.env.rank])
        all_pos = [p for pos, _ in everyone for p in pos]
        all_neg = [n for _, neg in everyone for n in neg]
        return build_candidates(all_pos, all_neg, queries=range(offset, offset + len(positives)))

    def training_forward(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        queries = self.encoder(**batch["inputs"])  # (Q, D)
        ids, mask = self.candidate_pool(batch["positives"], batch["negatives"])  # C ids, (Q, C)
        rows = torch.tensor([self.kb_row[i] for i in ids], device=self.kb_vectors.device)  # (C,)
        candidates = self.kb_vectors[rows]  # (C, D)
        tau = self.log_temperature.exp()
        loss = dpr_loss(queries, candidates, mask.to(queries.device), tau)
        with torch.no_grad():
            scores = queries.float() @ candidates.T  # (Q, C)
            top = scores.argmax(dim=1)  # (Q,)
            accuracy = mask.to(queries.device).gather(1, top[:, None]).float().mean()
        return loss, {"loss": loss.detach(), "in_batch_accuracy": accuracy,
                      "candidates": torch.tensor(float(len(ids))), "temperature": tau.detach()}


def build_optimizer(task: RetrievalTask, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters, one group per part (head / adapters / visual / backbone, each with
    its learning rate) + the log temperature (head lr, no weight decay) when it is learned."""
    groups = param_groups(task.encoder, cfg.group_lrs, cfg.weight_decay)
    if task.log_temperature.requires_grad:
        groups.append({"name": "temperature", "params": [task.log_temperature], "lr": cfg.lr_head,
                       "weight_decay": 0.0})
    if not groups:
        raise ValueError("nothing to train: the policy freezes every parameter")
    return torch.optim.AdamW(groups, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based): linear warmup, then decay."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = cfg.warmup_steps or int(cfg.warmup_ratio * total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup, total_steps, cfg.schedule))
