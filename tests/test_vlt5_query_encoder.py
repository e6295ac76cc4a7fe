"""The retrieval query encoder: pooling, encode() on a feature file, save/load round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from vlt5_fixtures import FC_DIM, FEATURE_IDS

from adapters import HoulsbyConfig, LoRAConfig, PromptConfig, is_adapter_param
from adapters.policy import apply_policy
from vlt5 import CheckpointError, ConfigError, QueryEncoder, VisualInputConfig
from vlt5.query_encoder import NEW_ROWS_KEY, AttentionPooler, MeanPooler

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUESTIONS = ["who designed this building?", "what is the red bus near the lake", "which animal is here?"]
IMAGES = ["img_b", "img_d", "img_b"]


def build(pth: Path, tok: Path, feats: Path, pooling: str = "mean", **inputs: object) -> QueryEncoder:
    qe, report = QueryEncoder.from_vlt5_checkpoint(
        pth, tok, proj_dim=10, pooling=pooling,
        inputs=VisualInputConfig(prefix="vqa: ", **inputs),  # type: ignore[arg-type]
        visual={"fc_dim": FC_DIM} if inputs.get("fc_token") else {})
    assert report.ok
    return qe.attach_features(feats)


def test_poolers_ignore_masked_positions() -> None:
    hidden = torch.randn(2, 4, 6)
    mask = torch.tensor([[1.0, 1, 0, 0], [1, 1, 1, 1]])
    mean = MeanPooler()(hidden, mask)
    assert torch.allclose(mean[0], hidden[0, :2].mean(0)) and torch.allclose(mean[1], hidden[1].mean(0))
    attn = AttentionPooler(6)
    changed = hidden.clone()
    changed[0, 2:] = 100.0  # masked rows must not matter
    assert torch.allclose(attn(hidden, mask), attn(changed, mask))


@pytest.mark.parametrize("pooling", ["mean", "first", "attention"])
def test_encode_on_a_tiny_feature_file(tiny_vlt5_pth: Path, tiny_tok_dir: Path, tiny_feature_file: Path,
                                       pooling: str) -> None:
    qe = build(tiny_vlt5_pth, tiny_tok_dir, tiny_feature_file, pooling, fc_token=True, boxes="grid_cells")
    vecs = qe.encode(QUESTIONS, IMAGES)
    assert vecs.shape == (3, 10) and torch.allclose(vecs.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert not torch.allclose(vecs[0], vecs[2])  # same image, different question
    one_by_one = torch.cat([qe.encode([q], [i]) for q, i in zip(QUESTIONS, IMAGES, strict=True)])
    assert torch.allclose(vecs, one_by_one, atol=1e-5)  # padding in a batch changes nothing
    assert qe.encode([], []).shape == (0, 10)


def test_forward_trains_through_the_collator(tiny_vlt5_pth: Path, tiny_tok_dir: Path, tiny_feature_file: Path) -> None:
    qe = build(tiny_vlt5_pth, tiny_tok_dir, tiny_feature_file)
    qe.add_adapter(HoulsbyConfig())
    apply_policy(qe, "adapters+visual+head")
    batch = qe.collator()(QUESTIONS, IMAGES)
    loss = qe(**batch).sum()
    loss.backward()
    assert qe.head.weight.grad is not None and qe.joint.shared.weight.grad is None


def assert_same(a: QueryEncoder, b: QueryEncoder) -> None:
    assert a.config == b.config
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    assert torch.equal(a.encode(QUESTIONS, IMAGES), b.encode(QUESTIONS, IMAGES))


def test_full_save_load_is_bit_exact(tiny_vlt5_pth: Path, tiny_tok_dir: Path, tiny_feature_file: Path,
                                     tmp_path: Path) -> None:
    qe = build(tiny_vlt5_pth, tiny_tok_dir, tiny_feature_file, "attention", fc_token=True)
    qe.add_adapter(LoRAConfig(r=2))
    qe.add_adapter(PromptConfig(length=2, mid_dim=5))
    with torch.no_grad():
        for p in qe.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # "trained"
    directory = qe.save_pretrained(tmp_path / "qe")
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= \
        {p.name for p in directory.iterdir()}
    loaded = QueryEncoder.from_pretrained(directory).attach_features(tiny_feature_file)
    assert_same(qe, loaded)
    assert len(loaded.tokenizer) == len(qe.tokenizer)


def test_adapter_only_save_holds_only_the_delta(tiny_vlt5_pth: Path, tiny_tok_dir: Path, tiny_feature_file: Path,
                                                tmp_path: Path) -> None:
    qe = build(tiny_vlt5_pth, tiny_tok_dir, tiny_feature_file)
    qe.add_adapter(HoulsbyConfig(layer_norm=True))
    trainable = apply_policy(qe, "adapters+visual+head")
    with torch.no_grad():
        for p in qe.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.01)
    directory = qe.save_pretrained(tmp_path / "delta", adapter_only=True)
    saved = load_file(str(directory / "model.safetensors"))
    assert set(saved) == set(trainable)
    assert any(is_adapter_param(k) for k in saved) and "joint.shared.weight" not in saved
    config = json.loads((directory / "config.json").read_text())
    assert config["weights"] == "delta" and config["base"]["kind"] == "vlt5_checkpoint"
    loaded = QueryEncoder.from_pretrained(directory).attach_features(tiny_feature_file)
    assert_same(qe, loaded)
    assert {n for n, p in loaded.named_parameters() if p.requires_grad} == set(trainable)


def test_adapter_only_on_a_t5_base_keeps_the_new_vocabulary_rows(tiny_t5_dir: Path, tiny_feature_file: Path,
                                                                 tmp_path: Path) -> None:
    qe = QueryEncoder.from_t5(tiny_t5_dir, proj_dim=10, feat_dim=16).attach_features(tiny_feature_file)
    qe.add_adapter(LoRAConfig(r=2))
    apply_policy(qe, "adapters+visual+head")
    directory = qe.save_pretrained(tmp_path / "t5delta", adapter_only=True)
    saved = load_file(str(directory / "model.safetensors"))
    t5_rows = qe.config.base.t5_rows  # type: ignore[union-attr]
    assert saved[NEW_ROWS_KEY].shape == (qe.config.model.vocab_size - t5_rows, 32)
    assert_same(qe, QueryEncoder.from_pretrained(directory).attach_features(tiny_feature_file))


def test_loading_errors_name_the_problem(tiny_vlt5_pth: Path, tiny_tok_dir: Path, tiny_feature_file: Path,
                                         tmp_path: Path) -> None:
    qe = build(tiny_vlt5_pth, tiny_tok_dir, tiny_feature_file)
    directory = qe.save_pretrained(tmp_path / "qe", adapter_only=True)
    with pytest.raises(CheckpointError, match="not found"):
        QueryEncoder.from_pretrained(directory, base_path=tmp_path / "moved.pth")
    data = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**data, "temperature": 0.05}))
    with pytest.raises(ConfigError, match="unknown key.*temperature"):
        QueryEncoder.from_pretrained(directory)
    with pytest.raises(CheckpointError, match="missing config.json"):
        QueryEncoder.from_pretrained(tmp_path / "empty")


def test_encode_needs_features(tiny_vlt5_pth: Path, tiny_tok_dir: Path) -> None:
    qe, _ = QueryEncoder.from_vlt5_checkpoint(tiny_vlt5_pth, tiny_tok_dir, proj_dim=10)
    with pytest.raises(ValueError, match="attach_features"):
        qe.encode(["q"], [FEATURE_IDS[0]])


def test_encode_on_the_extraction_scripts_output(tiny_vit_pt: Path, tiny_t5_dir: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """End to end: images -> clip_prepro_feats.py (tiny ViT CLIP: 4x4 grid of width 128, fc 48) -> encode."""
    from feature_extraction import clip_prepro_feats
    from feature_extraction.store import FeatureStore
    from feature_extraction.tiny import make_image_folder

    make_image_folder(tmp_path / "imgs", 3, size=(60, 40))
    code = clip_prepro_feats.main(["--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "feats.h5"),
                                   "--backbone", str(tiny_vit_pt), "--num-workers", "0", "--device", "cpu",
                                   "--no-progress", "--quiet"])
    assert code == 0, capsys.readouterr().err
    store = FeatureStore.open(tmp_path / "feats.h5")
    assert store.attrs["grid_hw"] == [4, 4]
    qe = QueryEncoder.from_t5(tiny_t5_dir, proj_dim=48, feat_dim=128, visual={"fc_dim": 48, "pool_grid_to": 3},
                              inputs=VisualInputConfig(fc_token=True, boxes="grid_cells", prefix="vqa: "))
    vecs = qe.encode(["who built this?", "what is shown?", "where is it?"], store.ids, store=store)
    assert vecs.shape == (3, 48) and torch.allclose(vecs.norm(dim=-1), torch.ones(3), atol=1e-5)
    batch = qe.collator(store)(["q"], store.ids[:1])
    out = qe.joint(**batch)
    assert out.last_hidden_state.shape[1] == batch["input_ids"].shape[1] + 3 * 3 + 1  # pooled 4x4 -> 3x3, + fc
