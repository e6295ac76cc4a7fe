"""Checkpoint surgery and the load report (DESIGN.md §4.1), plain T5 directories, configs."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import T5EncoderModel
from vlt5_fixtures import PARITY_PTH, load_parity_encoder, run_regime

from vlt5 import CheckpointError, ConfigError, JointEncoder, VLT5Config
from vlt5.tiny import TINY_SP_PIECES, TINY_VOCAB, tiny_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ENCODER_TENSORS = 26  # shared 1 + block 0: 9 (incl. relative bias) + block 1: 8 + final norm 1 + visual 7


def raw_state() -> dict[str, torch.Tensor]:
    return torch.load(PARITY_PTH, map_location="cpu", weights_only=True)


def save_state(state: dict[str, torch.Tensor], path: Path) -> Path:
    torch.save(state, path)
    return path


def test_report_of_the_epoch30_style_checkpoint() -> None:
    enc, report = JointEncoder.from_vlt5_checkpoint(PARITY_PTH)
    assert report.ok and report.prefix_stripped == "module."
    assert len(report.kept) == len(enc.state_dict()) == ENCODER_TENSORS
    assert sorted(report.tied) == sorted(["encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
                                          "encoder.visual_embedding.obj_order_embedding.weight"])
    assert report.ignored["lm_head.weight"].startswith("lm_head")
    assert report.ignored["encoder.visual_embedding.layer_norm.weight"].startswith("stray")
    decoder = [k for k in raw_state() if k.startswith("module.decoder.") and "embed_tokens" not in k]
    assert sorted(k for k, why in report.ignored.items() if why.startswith("decoder")) == \
        sorted(k[len("module."):] for k in decoder)
    assert not (report.missing or report.unexpected or report.mismatched or report.new)
    text = str(report)
    assert "lm_head" in text and "missing: none" in text and '"feat_dim": 16' in text
    assert enc.config == tiny_config()  # every shape-inferable field recovered


def test_missing_and_extra_keys_are_errors_that_name_them(tmp_path: Path) -> None:
    state = raw_state()
    del state["module.encoder.block.1.layer.1.DenseReluDense.wo.weight"]
    state["module.encoder.block.0.layer.0.SelfAttention.adapter_thing.weight"] = torch.zeros(3)
    state["module.visual_head.bias"] = torch.zeros(2)
    state["module.answer_head.0.weight"] = torch.zeros(2)  # a fine-tuned VQA classifier: ignored, not unexpected
    path = save_state(state, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError) as info:
        JointEncoder.from_vlt5_checkpoint(path)
    message = str(info.value)
    assert "encoder.block.1.layer.1.DenseReluDense.wo.weight" in message
    assert "adapter_thing" in message and "visual_head.bias" in message
    report = info.value.report
    assert report.missing == ["encoder.block.1.layer.1.DenseReluDense.wo.weight"]
    assert sorted(report.unexpected) == ["encoder.block.0.layer.0.SelfAttention.adapter_thing.weight",
                                         "visual_head.bias"]
    assert len(report.kept) == ENCODER_TENSORS - 1
    assert report.ignored["answer_head.0.weight"].startswith("answer_head")

    enc, lenient = JointEncoder.from_vlt5_checkpoint(path, strict=False)
    assert lenient.missing == report.missing and lenient.unexpected == report.unexpected
    kept = enc.state_dict()["encoder.block.0.layer.1.DenseReluDense.wo.weight"]
    assert torch.equal(kept, state["module.encoder.block.0.layer.1.DenseReluDense.wo.weight"])


def test_shape_mismatch_names_the_key(tmp_path: Path) -> None:
    state = raw_state()
    state["module.encoder.block.1.layer.1.DenseReluDense.wi.weight"] = torch.zeros(40, 32)
    with pytest.raises(CheckpointError, match=r"block\.1\.layer\.1\.DenseReluDense\.wi\.weight checkpoint \(40, 32\)"):
        JointEncoder.from_vlt5_checkpoint(save_state(state, tmp_path / "bad.pth"))


def test_tied_copy_that_differs_is_an_error(tmp_path: Path) -> None:
    state = raw_state()
    state["module.encoder.embed_tokens.weight"] = state["module.shared.weight"] + 1.0
    with pytest.raises(CheckpointError, match="differ from shared.weight"):
        JointEncoder.from_vlt5_checkpoint(save_state(state, tmp_path / "untied.pth"))


@pytest.mark.parametrize("variant", ["no_prefix", "legacy_vis_encoder", "safetensors", "wrapped"])
def test_checkpoint_variants_load_the_same_model(variant: str, tmp_path: Path, reference: dict) -> None:
    state = {k[len("module."):]: v.clone() for k, v in raw_state().items()}  # clone: untie for safetensors
    if variant == "legacy_vis_encoder":
        state = {("vis_encoder." + k[len("encoder."):] if k.startswith("encoder.") else k): v
                 for k, v in state.items()}
    if variant == "safetensors":
        path = tmp_path / "ckpt.safetensors"
        save_file(state, str(path))
    else:
        path = save_state({"state_dict": state} if variant == "wrapped" else state, tmp_path / "ckpt.pth")
    enc, report = JointEncoder.from_vlt5_checkpoint(path)
    assert report.ok and report.prefix_stripped is None
    assert report.renamed_legacy == (len([k for k in state if k.startswith("vis_encoder.")]))
    ours, theirs = run_regime(enc, reference["detector_boxes"])
    assert (ours - theirs).abs().max().item() <= 1e-5


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "pickle.pth"
    torch.save({"args": argparse.Namespace(lr=1.0), "w": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        JointEncoder.from_vlt5_checkpoint(path)


def test_overrides_win_and_unknown_fields_raise() -> None:
    enc = load_parity_encoder(dropout_rate=0.0, visual={"pool_grid_to": 6})
    assert enc.config.dropout_rate == 0.0 and enc.config.visual.pool_grid_to == 6
    assert enc.config.visual.feat_dim == 16
    with pytest.raises(CheckpointError, match="unknown key"):
        JointEncoder.from_vlt5_checkpoint(PARITY_PTH, hidden_size=3)


def test_fc_projection_is_reported_new_not_missing() -> None:
    enc, report = JointEncoder.from_vlt5_checkpoint(PARITY_PTH, visual={"fc_dim": 12})
    assert report.ok and report.new == ["encoder.visual_embedding.fc_embedding.0.bias",
                                        "encoder.visual_embedding.fc_embedding.0.weight",
                                        "encoder.visual_embedding.fc_embedding.1.weight"]


# -- plain T5 ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_from_t5_reproduces_t5_encoder_without_visual_tokens(tiny_t5_dir: Path, attn: str) -> None:
    enc = JointEncoder.from_t5(tiny_t5_dir, feat_dim=16, attn_implementation=attn)
    t5 = T5EncoderModel.from_pretrained(tiny_t5_dir, attn_implementation=attn).eval()
    assert enc.config.vocab_size == TINY_VOCAB  # 99 pieces + 100 extra + 100 vis_extra, from the tokenizer files
    rows = t5.shared.weight.shape[0]
    assert torch.equal(enc.shared.weight[:rows], t5.shared.weight)
    ids = torch.randint(3, TINY_SP_PIECES, (3, 11))
    ids[:, -1] = 1
    ids[1, 6:] = 0  # padding: the implicit mask must match T5's
    ids[2, 3:] = 0
    with torch.no_grad():
        ours = enc(ids).last_hidden_state  # (B, L, d)
        theirs = t5(input_ids=ids, attention_mask=(ids != 0).long()).last_hidden_state
    assert torch.equal(ours, theirs)


def test_from_t5_explicit_vocab_and_config(tiny_t5_dir: Path) -> None:
    enc = JointEncoder.from_t5(tiny_t5_dir, feat_dim=24, vocab_size=TINY_VOCAB + 1, visual={"n_images": 3},
                               dropout_rate=0.0)
    assert enc.shared.weight.shape[0] == TINY_VOCAB + 1
    assert enc.config.visual.feat_dim == 24 and enc.config.visual.n_images == 3 and enc.config.dropout_rate == 0.0
    assert enc.config.d_ff == 37 and enc.config.num_heads == 3


def test_joint_encoder_save_load_round_trip(tmp_path: Path, reference: dict) -> None:
    enc = load_parity_encoder()
    loaded = JointEncoder.from_pretrained(enc.save_pretrained(tmp_path / "joint"))
    assert loaded.config == enc.config
    for key, value in enc.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    assert torch.equal(run_regime(enc, reference["two_images"])[0], run_regime(loaded, reference["two_images"])[0])


# -- config -------------------------------------------------------------------------------------------------------
def test_config_is_strict_and_validated(tmp_path: Path) -> None:
    cfg = tiny_config()
    cfg.save(tmp_path / "config.json")
    assert VLT5Config.load(tmp_path / "config.json") == cfg
    data = cfg.to_dict()
    with pytest.raises(ConfigError, match="unknown key.*n_layers"):
        VLT5Config.from_dict({**data, "n_layers": 2})
    with pytest.raises(ConfigError, match=r"visual.*unknown key.*pos_dim"):
        VLT5Config.from_dict({**data, "visual": {**data["visual"], "pos_dim": 4}})
    with pytest.raises(ConfigError, match="d_ff"):
        VLT5Config.from_dict({**data, "d_ff": 0})
    with pytest.raises(ConfigError, match="feed_forward_proj"):
        VLT5Config.from_dict({**data, "feed_forward_proj": "swiglu"})


def test_t5_config_is_fresh_each_time() -> None:
    cfg = tiny_config()
    a, b = cfg.to_t5_config(), cfg.to_t5_config()
    assert a is not b and a.pad_token_id == 0 and a.eos_token_id == 1 and a.decoder_start_token_id == 0
