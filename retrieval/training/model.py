"""The query encoder to train and its optimizer groups.

:func:`build_encoder` makes the joint query encoder of :mod:`vlt5` from a :class:`ModelConfig` (random init,
a plain T5 dir, a VL-T5 checkpoint, or a saved QueryEncoder to continue), adds the adapter of ``model.adapter``
and applies the freezing policy; ``model.inputs`` becomes the encoder's ``VisualInputConfig`` (+ grid pooling).
:func:`optimizer_groups` names the AdamW groups the engine builds (``adapters.policy.param_groups``).
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from adapters.policy import apply_policy, param_groups
from retrieval.training.config import ModelConfig, OptimConfig
from vlt5 import QueryEncoder, QueryEncoderConfig, VisualConfig, VLT5Config, load_tokenizer
from vlt5.tokenization import N_VIS_EXTRA_IDS
from foundations.errors import UserError

logger = logging.getLogger(__name__)


def build_encoder(cfg: ModelConfig, fc_dim: int, grid_tokens: int | None, grid_dim: int | None,
                  kb_dim: int) -> QueryEncoder:
    """A query encoder whose inputs match the query feature file and whose output size is the KB's."""
    if cfg.proj_dim is not None and cfg.proj_dim != kb_dim:
        raise UserError(f"model.proj_dim {cfg.proj_dim} != KB embedding dim {kb_dim}: the query vectors must live "
                         "in the KB's CLIP space (leave --proj-dim unset to use the KB dim)")
    ins = cfg.inputs
    if ins.grid and grid_dim is None:
        raise UserError("the query feature file has no grid: use --no-grid --fc-token")
    kind, _, where = cfg.init.partition(":")
    if kind == "encoder":
        qe = QueryEncoder.from_pretrained(where)
        if qe.config.proj_dim != kb_dim:
            raise UserError(f"{where}: encoder output dim {qe.config.proj_dim} != KB embedding dim {kb_dim}")
        logger.info("continuing from %s (its architecture, inputs and adapters; model flags ignored)", where)
        apply_policy(qe, cfg.resolved_policy)
        return qe
    inputs = ins.visual_input_config()
    n_visual = (ins.pool_grid_to**2 if ins.pool_grid_to else grid_tokens or 0) * ins.grid + int(ins.fc_token)
    if n_visual > N_VIS_EXTRA_IDS:
        raise UserError(f"{n_visual} visual tokens per image, but VL-T5 has {N_VIS_EXTRA_IDS} object-order "
                         "embeddings: use --pool-grid-to N")
    feat_dim = grid_dim if ins.grid and grid_dim is not None else fc_dim
    visual = {"fc_dim": fc_dim if ins.fc_token else None, "pool_grid_to": ins.pool_grid_to}
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
        if ins.grid and qe.config.model.visual.feat_dim != grid_dim:
            raise UserError(f"{where}: the checkpoint's visual feat_dim {qe.config.model.visual.feat_dim} != the "
                             f"query features' grid dim {grid_dim} (extract them with the matching CLIP backbone)")
    adapter = cfg.adapter.build()
    if adapter is not None:
        qe.add_adapter(adapter)
    qe.config.policy = cfg.resolved_policy
    apply_policy(qe, cfg.resolved_policy)
    return qe


def optimizer_groups(encoder: QueryEncoder, log_temperature: nn.Parameter, cfg: OptimConfig) -> list[dict[str, Any]]:
    """Named AdamW groups: one per part (head / adapters / visual / backbone, each with its learning rate) + the
    log temperature (head lr, no weight decay) when it is learned."""
    groups = param_groups(encoder, cfg.group_lrs, cfg.weight_decay)
    if log_temperature.requires_grad:
        groups.append({"name": "temperature", "params": [log_temperature], "lr": cfg.lr_head, "weight_decay": 0.0})
    if not groups:
        raise UserError("nothing to train: the policy freezes every parameter")
    return groups
