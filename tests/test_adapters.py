"""Adapters (Houlsby, LoRA, prompt tuning), freezing policies and parameter groups."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from vlt5_fixtures import load_parity_encoder, run_regime

from adapters import (AdapterError, HoulsbyConfig, LoRAConfig, PromptConfig, adapter_state_dict, config_from_dict,
                      config_to_dict, inject, is_adapter_param, load_adapter_state_dict, mark_only_adapters_trainable)
from adapters.houlsby import HoulsbyAdapter, HoulsbyFeedForward, HoulsbySelfAttention
from adapters.lora import LoRALinear
from adapters.policy import PolicyError, apply_policy, param_group_of, param_groups, trainable_names
from adapters.prompt import prompt_length
from vlt5.query_encoder import QueryEncoder, QueryEncoderConfig
from vlt5.tiny import tiny_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIGS = [HoulsbyConfig(reduction_factor=8), HoulsbyConfig(reduction_factor=4, layer_norm=True),
           LoRAConfig(r=4, alpha=8), LoRAConfig(r=2, targets=("k", "o", "wi"))]


def perturb_adapters(model: nn.Module) -> None:
    with torch.no_grad():
        for name, param in model.named_parameters():
            if is_adapter_param(name):
                param.add_(torch.randn_like(param) * 0.1)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: repr(c))
def test_injected_model_equals_base_at_init(cfg: HoulsbyConfig | LoRAConfig, reference: dict) -> None:
    base = load_parity_encoder()
    adapted = load_parity_encoder()
    base_names = set(adapted.state_dict())
    added = inject(adapted, cfg)
    assert added and base_names <= set(adapted.state_dict())  # no base parameter renamed
    for regime in ("detector_boxes", "all_explicit"):
        assert torch.equal(run_regime(adapted, reference[regime])[0], run_regime(base, reference[regime])[0])
    perturb_adapters(adapted)
    diff = (run_regime(adapted, reference["detector_boxes"])[0] - run_regime(base, reference["detector_boxes"])[0])
    assert diff.abs().max() > 1e-4  # and the adapters are on the path


def test_houlsby_sits_on_the_sublayer_output_before_the_residual() -> None:
    enc = load_parity_encoder().eval()
    inject(enc, HoulsbyConfig(reduction_factor=4, sublayers=("feed_forward",), blocks=(1,)))
    perturb_adapters(enc)
    layer = enc.encoder.block[1].layer[-1]
    h = torch.randn(2, 3, 32)
    with torch.no_grad():
        y = layer.DenseReluDense.__class__.forward(layer.DenseReluDense, layer.layer_norm(h))  # sublayer output
        expected = h + y + layer.adapter.up(layer.adapter.act(layer.adapter.down(y)))  # h + (y + up(act(down(y))))
        assert torch.allclose(layer(h), expected, atol=1e-6)
    assert not hasattr(enc.encoder.block[0].layer[-1], "adapter")
    assert not hasattr(enc.encoder.block[1].layer[0], "adapter")


def test_houlsby_bottleneck_size_and_double_injection() -> None:
    enc = load_parity_encoder()
    added = inject(enc, HoulsbyConfig(reduction_factor=8))
    assert len(added) == 2 * enc.config.num_layers
    adapter = enc.encoder.block[0].layer[0].adapter
    assert isinstance(adapter, HoulsbyAdapter) and adapter.down.out_features == 32 // 8
    with pytest.raises(AdapterError, match="already has an adapter"):
        inject(enc, HoulsbyConfig())


def test_lora_scale_and_targets() -> None:
    enc = load_parity_encoder()
    replaced = inject(enc, LoRAConfig(r=4, alpha=12))
    assert sorted(replaced) == sorted(f"encoder.block.{i}.layer.0.SelfAttention.{t}" for i in (0, 1) for t in "qv")
    q = enc.encoder.block[0].layer[0].SelfAttention.q
    assert isinstance(q, LoRALinear) and q.scaling == 3.0 and not q.lora_B.any() and q.lora_A.abs().sum() > 0
    x = torch.randn(5, 32)
    with torch.no_grad():
        q.lora_B.normal_()
        assert torch.allclose(q(x), x @ q.weight.T + 3.0 * (x @ q.lora_A.T @ q.lora_B.T), atol=1e-5)
    with pytest.raises(AdapterError, match="match no nn.Linear"):
        inject(enc, LoRAConfig(targets=("nope",)))


def test_prompt_prefix_grows_the_text_and_trains(reference: dict) -> None:
    enc = load_parity_encoder()
    inject(enc, PromptConfig(length=3, mid_dim=7))
    assert prompt_length(enc) == 3
    regime = {k: v for k, v in reference["padded_text_implicit_mask"].items() if k != "last_hidden_state"}
    out = enc(**regime)
    L = regime["input_ids"].shape[1]
    assert out.last_hidden_state.shape[1] == 3 + L + 5 and out.text_length == 3 + L
    assert out.attention_mask[:, :3].eq(1).all()
    mark_only_adapters_trainable(enc)
    out.last_hidden_state.sum().backward()
    assert enc.prompt.embedding.weight.grad is not None and enc.prompt.mlp[0].weight.grad.abs().sum() > 0
    assert enc.shared.weight.grad is None


def test_adapter_only_state_dict_round_trip(tmp_path: Path, reference: dict) -> None:
    trained = load_parity_encoder()
    for cfg in (HoulsbyConfig(), LoRAConfig(r=2), PromptConfig(length=2, mid_dim=5)):
        inject(trained, cfg)
    perturb_adapters(trained)
    path = tmp_path / "adapters.safetensors"
    save_file({k: v.contiguous() for k, v in adapter_state_dict(trained).items()}, str(path))
    saved = load_file(str(path))
    assert saved and all(is_adapter_param(k) for k in saved)
    assert set(saved) == {n for n, _ in trained.named_parameters() if is_adapter_param(n)}

    fresh = load_parity_encoder()
    for cfg in (HoulsbyConfig(), LoRAConfig(r=2), PromptConfig(length=2, mid_dim=5)):
        inject(fresh, cfg)
    load_adapter_state_dict(fresh, saved)
    assert torch.equal(run_regime(fresh, reference["two_images"])[0], run_regime(trained, reference["two_images"])[0])
    with pytest.raises(AdapterError, match="not adapter keys"):
        load_adapter_state_dict(fresh, {**saved, "shared.weight": fresh.shared.weight})
    with pytest.raises(AdapterError, match="missing"):
        load_adapter_state_dict(fresh, {k: v for k, v in saved.items() if "lora" not in k})


ALL_THREE = (HoulsbyConfig(layer_norm=True), LoRAConfig(r=2), PromptConfig(length=2, mid_dim=5))


def test_adapters_are_modules_you_can_see_and_no_hooks() -> None:
    """litgpt-style wrappers: ``print(model)`` shows every adapter; no forward hooks, no hidden module references."""
    enc = load_parity_encoder()
    for cfg in ALL_THREE:
        inject(enc, cfg)
    text = repr(enc)
    assert text.count("HoulsbySelfAttention(") == 2 and text.count("HoulsbyFeedForward(") == 2
    assert text.count("(adapter): HoulsbyAdapter(") == 4
    assert text.count("LoRALinear(") == 4 and "r=2, scaling=8" in text  # q and v of 2 blocks; 16 / 2
    assert "(prompt): PromptPrefix(" in text
    for layer in enc.encoder.block[0].layer:
        assert isinstance(layer, HoulsbySelfAttention | HoulsbyFeedForward)
    for name, module in enc.named_modules():
        assert not module._forward_hooks and not module._forward_pre_hooks, name
        hidden = [k for k, v in vars(module).items() if isinstance(v, nn.Module)]  # object.__setattr__ refs
        assert not hidden, f"{name}: modules outside _modules: {hidden}"
    assert not nn.modules.module._global_forward_hooks and not nn.modules.module._global_forward_pre_hooks


def test_adapter_key_names_are_those_of_existing_checkpoints() -> None:
    """Adapter-only checkpoints written before the wrappers (hooks) keep loading: the key names did not change,
    so no key mapping is needed. These literal names are the checkpoint format."""
    enc = load_parity_encoder()
    for cfg in ALL_THREE:
        inject(enc, cfg)
    houlsby = {f"encoder.block.{b}.layer.{s}.adapter.{m}.{p}" for b in (0, 1) for s in (0, 1)
               for m in ("pre_norm", "down", "up", "post_norm") for p in ("weight", "bias")}
    lora = {f"encoder.block.{b}.layer.0.SelfAttention.{t}.lora_{ab}" for b in (0, 1) for t in "qv" for ab in "AB"}
    prompt = {"prompt.embedding.weight", "prompt.mlp.0.weight", "prompt.mlp.0.bias", "prompt.mlp.2.weight",
              "prompt.mlp.2.bias"}
    assert set(adapter_state_dict(enc)) == houlsby | lora | prompt
    assert set(load_parity_encoder().state_dict()) <= set(enc.state_dict())  # base names unchanged too


def test_adapter_configs_round_trip_as_dicts() -> None:
    for cfg in (HoulsbyConfig(blocks=(0,)), LoRAConfig(targets=("q",)), PromptConfig(length=4)):
        assert config_from_dict(config_to_dict(cfg)) == cfg
    with pytest.raises(AdapterError, match="method"):
        config_from_dict({"method": "ia3"})


# -- policies -------------------------------------------------------------------------------------------------------
def query_encoder_with_adapters() -> QueryEncoder:
    qe = QueryEncoder(QueryEncoderConfig(model=tiny_config(), proj_dim=12, pooling="attention"))
    qe.add_adapter(HoulsbyConfig())
    qe.add_adapter(LoRAConfig(r=2))
    return qe


def names_where(qe: QueryEncoder, pred) -> set[str]:  # type: ignore[no-untyped-def]
    return {n for n, _ in qe.named_parameters() if pred(n)}


@pytest.mark.parametrize("policy", ["adapters+visual+head", "head", "last_n_blocks:1", "full", "adapters+norms"])
def test_trainable_set_is_exactly_the_policys(policy: str) -> None:
    qe = query_encoder_with_adapters()
    trainable = apply_policy(qe, policy)
    actual = {n for n, p in qe.named_parameters() if p.requires_grad}
    assert set(trainable) == actual
    head = names_where(qe, lambda n: n.startswith(("head.", "pooler.")))
    adapters = names_where(qe, is_adapter_param)
    visual = names_where(qe, lambda n: n.startswith("joint.encoder.visual_embedding."))
    expected = {
        "adapters+visual+head": adapters | visual | head,
        "head": head,
        "last_n_blocks:1": head | names_where(qe, lambda n: (n.startswith("joint.encoder.block.1.")
                                                              and not is_adapter_param(n))
                                              or n == "joint.encoder.final_layer_norm.weight"),
        "full": names_where(qe, lambda n: True),
        "adapters+norms": adapters | names_where(qe, lambda n: n.endswith("layer_norm.weight")
                                                  and "visual_embedding" not in n),
    }[policy]
    assert actual == expected
    assert "joint.shared.weight" not in actual or policy == "full"  # obj-order table stays frozen (VL-Adapter)


def test_param_groups_have_their_own_learning_rates() -> None:
    qe = query_encoder_with_adapters()
    apply_policy(qe, "full")
    groups = param_groups(qe, {"head": 1e-3, "adapters": 5e-4, "visual": 1e-4, "backbone": 1e-5}, weight_decay=0.01)
    assert [g["name"] for g in groups] == ["head", "adapters", "visual", "backbone"]
    assert [g["lr"] for g in groups] == [1e-3, 5e-4, 1e-4, 1e-5]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(qe.parameters()))
    torch.optim.AdamW(groups)  # accepted as is
    apply_policy(qe, "adapters+visual+head")
    assert [g["name"] for g in param_groups(qe, {"default": 1e-3})] == ["head", "adapters", "visual"]
    with pytest.raises(PolicyError, match="no learning rate for trainable group 'visual'"):
        param_groups(qe, {"head": 1e-3, "adapters": 1e-3})
    with pytest.raises(PolicyError, match="unknown policy part"):
        trainable_names(qe, "adapters+everything")
    with pytest.raises(PolicyError, match="has 2 blocks"):
        trainable_names(qe, "last_n_blocks:3")


def test_group_names() -> None:
    assert param_group_of("joint.encoder.block.0.layer.0.adapter.up.weight") == "adapters"
    assert param_group_of("joint.encoder.block.0.layer.0.SelfAttention.q.lora_A") == "adapters"
    assert param_group_of("joint.prompt.embedding.weight") == "adapters"
    assert param_group_of("joint.encoder.visual_embedding.img_order_embedding.weight") == "visual"
    assert param_group_of("head.weight") == "head" and param_group_of("pooler.score.bias") == "head"
    assert param_group_of("joint.encoder.block.0.layer.0.SelfAttention.q.weight") == "backbone"
