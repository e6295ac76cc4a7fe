"""The retrieval task's pieces in process: freezing policies vs gradients, optimizer groups, deterministic sharded
batches, and the nested config <-> flags mapping (foundations.cli, as ``vlt5r train`` builds it)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from train_helpers import make_data, train_args

from adapters import is_adapter_param
from adapters.policy import trainable_names
from engine.optim import build_optimizer
from foundations.cli import CLIParser, add_config_flags, config_from_flags, config_leaves
from foundations.errors import UsageError
from retrieval.querying.features import QueryCollator
from retrieval.training.batches import EpochBatches, TokenizedQuestions, sample_negatives
from retrieval.training.config import TrainConfig
from retrieval.training.data import load_kb, load_queries, open_features
from retrieval.training.task import RetrievalTask, build_task


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_data(tmp_path_factory.mktemp("train_task"))


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def parse_config(argv: list[str]) -> TrainConfig:
    """Flags -> TrainConfig the way ``vlt5r train`` does it (foundations.cli over the nested config)."""
    parser = CLIParser(prog="train")
    parser.add_argument("--config")
    add_config_flags(parser, TrainConfig)
    args = vars(parser.parse_args(argv))
    path = args.pop("config", None)
    base = TrainConfig.load(path).to_dict() if path else {}
    base.pop("format_version", None)
    return config_from_flags(TrainConfig, args, base)


def make_task(data: dict[str, Path], learn_temperature: bool = False, adapters: str = "none",
              policy: str = "auto", **optim: float) -> tuple[RetrievalTask, dict]:
    argv = train_args(data, data["kb"].parent / "unused", "--num-layers", "2", "--fc-token", "--boxes",
                      "grid_cells", "--method", adapters, "--policy", policy, "--temperature", "0.1",
                      *(["--learn-temperature"] if learn_temperature else []),
                      *[a for k, v in optim.items() for a in (f"--optim.{k}", str(v))])
    task = build_task(parse_config(argv))
    batch = EpochBatches(task.splits["train"], task.store, task.tokens, task.encoder.config.inputs, 6, 2, seed=0,
                         epoch=0)[0]
    return task, batch


@pytest.mark.parametrize("adapters, policy", [("houlsby", "auto"), ("lora", "head"), ("prompt", "adapters+head"),
                                              ("none", "last_n_blocks:1"), ("none", "auto")])
def test_gradients_flow_only_where_the_policy_allows(data: dict[str, Path], adapters: str, policy: str) -> None:
    task, batch = make_task(data, adapters=adapters, policy=policy)
    resolved = task.cfg.model.resolved_policy
    assert resolved == {"auto": "adapters+visual+head" if adapters != "none" else "full"}.get(policy, policy)
    allowed = set(trainable_names(task.encoder, resolved))
    loss, metrics = task.training_forward(batch)
    loss.backward()
    for name, param in task.encoder.named_parameters():
        if name in allowed:
            assert param.requires_grad, name
        else:
            assert not param.requires_grad and param.grad is None, name
    assert task.log_temperature.grad is None  # fixed tau
    assert task.encoder.head.weight.grad.abs().sum() > 0  # the head is in every policy
    if "adapters" in resolved:  # the adapters themselves learn (zero-init up-projections get a gradient)
        grads = [p.grad for n, p in task.encoder.named_parameters() if is_adapter_param(n) and p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads)
    assert metrics["candidates"].item() > 6  # positives + sampled hard negatives of the batch


def test_learned_temperature_gets_a_gradient_and_the_head_lr(data: dict[str, Path]) -> None:
    task, batch = make_task(data, learn_temperature=True, adapters="houlsby", lr_head=3e-3, lr_adapters=2e-3,
                            lr_visual=1e-3, weight_decay=0.1)
    loss, _ = task.training_forward(batch)
    loss.backward()
    assert task.log_temperature.grad is not None and task.log_temperature.grad.item() != 0.0
    optim = build_optimizer(task.param_groups(), task.cfg.optim)
    groups = {g["name"]: g for g in optim.param_groups}
    assert set(groups) == {"head", "adapters", "visual", "temperature"}  # backbone frozen by the policy
    assert groups["temperature"]["lr"] == 3e-3 and groups["temperature"]["weight_decay"] == 0.0
    assert groups["adapters"]["lr"] == 2e-3 and groups["visual"]["weight_decay"] == 0.1


def test_batches_are_deterministic_and_ranks_split_the_global_batch(data: dict[str, Path]) -> None:
    kb = load_kb(str(data["kb"]), str(data["kb_features"]), None, "image")
    store = open_features(str(data["query_features"]))
    queries = load_queries(str(data["train"]), set(kb.ids), store, "train")
    task, _ = make_task(data)
    inputs = task.encoder.config.inputs
    tok = TokenizedQuestions(task.encoder.tokenizer, [q.question for q in queries], inputs)
    whole = EpochBatches(queries, store, tok, inputs, 6, 2, seed=3, epoch=1)
    again = EpochBatches(queries, store, tok, inputs, 6, 2, seed=3, epoch=1)
    other_epoch = EpochBatches(queries, store, tok, inputs, 6, 2, seed=3, epoch=2)
    ranks = [EpochBatches(queries, store, tok, inputs, 6, 2, seed=3, epoch=1, rank=r, world_size=3) for r in range(3)]
    assert len(whole) == len(queries) // 6
    for m in range(len(whole)):
        item = whole[m]
        assert item["query_ids"] == again[m]["query_ids"] and item["negatives"] == again[m]["negatives"]
        assert torch.equal(item["inputs"]["vis_feats"], again[m]["inputs"]["vis_feats"])
        shards = [r[m] for r in ranks]
        assert sum((s["query_ids"] for s in shards), []) == item["query_ids"]
        assert sum((s["negatives"] for s in shards), []) == item["negatives"]
    assert [whole[m]["query_ids"] for m in range(len(whole))] != \
        [other_epoch[m]["query_ids"] for m in range(len(whole))]
    by_id = {q.id: q for q in queries}
    for qid, negs in zip(whole[0]["query_ids"], whole[0]["negatives"]):
        assert len(negs) == 2 and set(negs) <= set(by_id[qid].hard_negatives)
    # collation = the query encoder's own collator (same token ids, padding, visual tokens)
    reference = QueryCollator.for_encoder(task.encoder, store)([by_id[i].question for i in whole[0]["query_ids"]],
                                                               [by_id[i].image for i in whole[0]["query_ids"]])
    assert reference.keys() == whole[0]["inputs"].keys()
    for key, value in reference.items():
        assert torch.equal(value, whole[0]["inputs"][key]), key
    assert sample_negatives(["a", "b"], -1, 0, 0, 0) == ["a", "b"] and sample_negatives(["a"], 0, 0, 0, 0) == []
    with pytest.raises(ValueError, match="divisible"):
        EpochBatches(queries, store, tok, inputs, 6, 2, seed=0, epoch=0, rank=0, world_size=4)


def test_every_field_is_a_flag_with_a_unique_plain_alias(data: dict[str, Path], tmp_path: Path) -> None:
    names = [f.name for _, f, _ in config_leaves(TrainConfig)]
    assert len(names) == len(set(names))
    add_config_flags(argparse.ArgumentParser(), TrainConfig)  # raises on a clash of plain names
    args = train_args(data, tmp_path / "run")
    cfg = parse_config(args + ["--optim.lr_head", "0.002", "--recall-at", "1", "3", "--pool-grid-to", "none",
                               "--learn-temperature", "--loop.resume", "--model.adapter.method", "lora",
                               "--lora-r", "3", "--unfreeze-at", "backbone@epoch:1", "head@step:2"])
    assert cfg.optim.lr_head == 0.002 and cfg.eval.recall_at == (1, 3) and cfg.model.inputs.pool_grid_to is None
    assert cfg.optim.learn_temperature and cfg.loop.resume == "yes" and cfg.model.d_model == 24
    assert cfg.model.adapter.method == "lora" and cfg.model.adapter.lora_r == 3
    assert cfg.optim.unfreeze_at == ("backbone@epoch:1", "head@step:2")
    cfg.save(tmp_path / "config.json")
    assert TrainConfig.load(tmp_path / "config.json") == cfg
    again = parse_config(["--config", str(tmp_path / "config.json"), "--lr-head", "0.005"])
    assert again.optim.lr_head == 0.005 and again.data == cfg.data and again.model == cfg.model
    for bad, message in [(["--lr-head", "fast"], "expects float"), (["--kb-side", "audio"], "invalid choice"),
                         (["--no-such-flag", "1"], "unrecognized"), (["--batch-size", "0"], "batch_size"),
                         (["--init", "bert:x"], "model.init"), (["--freeze-at", "head"], "GROUP@epoch:N")]:
        with pytest.raises(UsageError, match=message):
            parse_config(args + bad)


def test_a_format_1_config_with_a_flat_model_section_loads_nested(tmp_path: Path) -> None:
    old = {"format_version": 1, "data": {"kb": "kb.jsonl", "kb_features": "kb.h5", "train_queries": "t.jsonl",
                                         "query_features": "q.h5"},
           "model": {"tokenizer": "tok", "fc_token": True, "boxes": "grid_cells", "pool_grid_to": 2,
                     "adapters": "houlsby", "adapter_reduction": 4, "lora_r": 2}}
    cfg = TrainConfig.from_dict(old)
    assert cfg.model.inputs.fc_token and cfg.model.inputs.boxes == "grid_cells" and cfg.model.inputs.pool_grid_to == 2
    assert cfg.model.adapter.method == "houlsby" and cfg.model.adapter.reduction == 4 and cfg.model.adapter.lora_r == 2
    assert cfg.to_dict()["format_version"] == 2 and "fc_token" not in cfg.to_dict()["model"]
