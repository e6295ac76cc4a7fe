"""The retrieval query encoder: pooling, encoding on a feature file (retrieval.querying.features), save/load round
trips (full, adapter-only, adapter-only with a moved base), and loading that never touches requires_grad."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from vlt5_fixtures import FC_DIM, FEATURE_IDS

from adapters import HoulsbyConfig, LoRAConfig, PromptConfig, is_adapter_param
from adapters.policy import apply_policy
from retrieval.querying.features import QueryCollator, encode_with_features
from vlt5 import CheckpointError, ConfigError, JointEncoder, QueryEncoder, QueryEncoderConfig, VisualInputConfig
from vlt5.query_encoder import NEW_ROWS_KEY, AttentionPooler, MeanPooler

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUESTIONS = ["who designed this building?", "what is the red bus near the lake", "which animal is here?"]
IMAGES = ["img_b", "img_d", "img_b"]


def build(pth: Path, tok: Path, pooling: str = "mean", **inputs: object) -> QueryEncoder:
    qe, report = QueryEncoder.from_vlt5_checkpoint(
        pth, tok, proj_dim=10, pooling=pooling,
        inputs=VisualInputConfig(prefix="vqa: ", **inputs),  # type: ignore[arg-type]
        visual={"fc_dim": FC_DIM} if inputs.get("fc_token") else {})
    assert report.ok
    return qe


def encode(qe: QueryEncoder, feats: Path, questions: list[str] = QUESTIONS, images: list[str] = IMAGES,
           batch_size: int = 64) -> np.ndarray:
    return encode_with_features(qe, feats, questions, images, batch_size=batch_size)


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
    qe = build(tiny_vlt5_pth, tiny_tok_dir, pooling, fc_token=True, boxes="grid_cells")
    qe.train()
    vecs = encode(qe, tiny_feature_file)
    assert qe.training  # the caller's mode is restored
    assert vecs.shape == (3, 10) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=-1), np.ones(3), atol=1e-5)
    assert not np.allclose(vecs[0], vecs[2])  # same image, different question
    one_by_one = encode(qe, tiny_feature_file, batch_size=1)
    np.testing.assert_allclose(vecs, one_by_one, atol=1e-5)  # padding in a batch changes nothing
    # = the module itself on the collated batch, in eval mode (the reference the helper must reproduce)
    qe.eval()
    with torch.no_grad():
        direct = qe(**QueryCollator.for_encoder(qe, tiny_feature_file)(QUESTIONS, IMAGES)).numpy()
    np.testing.assert_array_equal(vecs, direct)
    assert encode(qe, tiny_feature_file, [], []).shape == (0, 10)


def test_forward_trains_through_the_collator(tiny_vlt5_pth: Path, tiny_tok_dir: Path, tiny_feature_file: Path) -> None:
    qe = build(tiny_vlt5_pth, tiny_tok_dir)
    qe.add_adapter(HoulsbyConfig())
    apply_policy(qe, "adapters+visual+head")
    batch = QueryCollator.for_encoder(qe, tiny_feature_file)(QUESTIONS, IMAGES)
    loss = qe(**batch).sum()
    loss.backward()
    assert qe.head.weight.grad is not None and qe.joint.shared.weight.grad is None


def assert_same(a: QueryEncoder, b: QueryEncoder, feats: Path) -> None:
    assert a.config == b.config
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    np.testing.assert_array_equal(encode(a, feats), encode(b, feats))


def all_trainable(model: torch.nn.Module) -> bool:
    return all(p.requires_grad for p in model.parameters())


def test_full_save_load_is_bit_exact(tiny_vlt5_pth: Path, tiny_tok_dir: Path, tiny_feature_file: Path,
                                     tmp_path: Path) -> None:
    qe = build(tiny_vlt5_pth, tiny_tok_dir, "attention", fc_token=True)
    qe.add_adapter(LoRAConfig(r=2))
    qe.add_adapter(PromptConfig(length=2, mid_dim=5))
    with torch.no_grad():
        for p in qe.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # "trained"
    directory = qe.save_pretrained(tmp_path / "qe")
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= \
        {p.name for p in directory.iterdir()}
    loaded = QueryEncoder.from_pretrained(directory)
    assert_same(qe, loaded, tiny_feature_file)
    assert len(loaded.tokenizer) == len(qe.tokenizer)


def test_adapter_only_save_holds_only_the_delta(tiny_vlt5_pth: Path, tiny_tok_dir: Path, tiny_feature_file: Path,
                                                tmp_path: Path) -> None:
    qe = build(tiny_vlt5_pth, tiny_tok_dir)
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
    loaded = QueryEncoder.from_pretrained(directory)
    assert_same(qe, loaded, tiny_feature_file)
    assert all_trainable(loaded)  # loading freezes nothing; the saved policy reproduces training's freezing
    assert apply_policy(loaded, loaded.config.policy) == trainable


def test_adapter_only_on_a_t5_base_keeps_the_new_vocabulary_rows(tiny_t5_dir: Path, tiny_feature_file: Path,
                                                                 tmp_path: Path) -> None:
    qe = QueryEncoder.from_t5(tiny_t5_dir, proj_dim=10, feat_dim=16)
    qe.add_adapter(LoRAConfig(r=2))
    apply_policy(qe, "adapters+visual+head")
    directory = qe.save_pretrained(tmp_path / "t5delta", adapter_only=True)
    saved = load_file(str(directory / "model.safetensors"))
    t5_rows = qe.config.base.t5_rows  # type: ignore[union-attr]
    assert saved[NEW_ROWS_KEY].shape == (qe.config.model.vocab_size - t5_rows, 32)
    assert_same(qe, QueryEncoder.from_pretrained(directory), tiny_feature_file)


def test_loading_errors_name_the_problem(tiny_vlt5_pth: Path, tiny_tok_dir: Path, tiny_feature_file: Path,
                                         tmp_path: Path) -> None:
    qe = build(tiny_vlt5_pth, tiny_tok_dir)
    directory = qe.save_pretrained(tmp_path / "qe", adapter_only=True)
    with pytest.raises(CheckpointError, match="not found"):
        QueryEncoder.from_pretrained(directory, base_path=tmp_path / "moved.pth")
    data = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**data, "temperature": 0.05}))
    with pytest.raises(ConfigError, match="unknown key.*temperature"):
        QueryEncoder.from_pretrained(directory)
    with pytest.raises(CheckpointError, match="missing config.json"):
        QueryEncoder.from_pretrained(tmp_path / "empty")


@pytest.mark.parametrize("base", ["vlt5_checkpoint", "t5_dir"])
def test_adapter_only_with_a_moved_base_round_trips_bit_exactly(base: str, tiny_vlt5_pth: Path, tiny_tok_dir: Path,
                                                                tiny_t5_dir: Path, tiny_feature_file: Path,
                                                                tmp_path: Path) -> None:
    """``from_pretrained(dir, base_path=...)``: the base recorded in config.json is gone, the copy elsewhere is used."""
    if base == "vlt5_checkpoint":
        original = tmp_path / "orig" / "Epoch30.pth"
        original.parent.mkdir()
        shutil.copy(tiny_vlt5_pth, original)
        qe = build(original, tiny_tok_dir, "attention")
    else:
        original = tmp_path / "orig_t5"
        shutil.copytree(tiny_t5_dir, original)
        qe = QueryEncoder.from_t5(original, proj_dim=10, feat_dim=16, inputs=VisualInputConfig(prefix="vqa: "))
    qe.add_adapter(HoulsbyConfig(reduction_factor=4))
    qe.add_adapter(LoRAConfig(r=2))
    trainable = apply_policy(qe, "adapters+visual+head")
    with torch.no_grad():
        for name, p in qe.named_parameters():
            if name in trainable:
                p.add_(torch.randn_like(p) * 0.05)  # "trained"
    directory = qe.save_pretrained(tmp_path / "delta", adapter_only=True)
    moved = tmp_path / "elsewhere" / original.name
    moved.parent.mkdir()
    shutil.move(str(original), moved)
    with pytest.raises(CheckpointError, match="not found"):
        QueryEncoder.from_pretrained(directory)  # the recorded base is gone
    loaded = QueryEncoder.from_pretrained(directory, base_path=moved)
    assert_same(qe, loaded, tiny_feature_file)
    assert json.loads((directory / "config.json").read_text())["base"]["path"] == str(original.resolve())


def test_loading_leaves_every_parameter_trainable(tiny_vlt5_pth: Path, tiny_tok_dir: Path, tiny_t5_dir: Path,
                                                  tmp_path: Path) -> None:
    """Freezing is the policy's job (adapters.policy.apply_policy), never a loader's."""
    qe = build(tiny_vlt5_pth, tiny_tok_dir)
    assert all_trainable(qe)
    assert all_trainable(QueryEncoder.from_t5(tiny_t5_dir, proj_dim=10, feat_dim=16))
    assert all_trainable(JointEncoder.from_vlt5_checkpoint(tiny_vlt5_pth)[0])
    assert all_trainable(JointEncoder.from_t5(tiny_t5_dir, feat_dim=16))
    qe.add_adapter(LoRAConfig(r=2))
    apply_policy(qe, "head")  # saved frozen ...
    assert not all_trainable(qe)
    for adapter_only in (False, True):
        directory = qe.save_pretrained(tmp_path / f"qe{adapter_only}", adapter_only=adapter_only)
        assert all_trainable(QueryEncoder.from_pretrained(directory))  # ... loaded untouched
    joint = JointEncoder.from_vlt5_checkpoint(tiny_vlt5_pth)[0]
    joint.shared.weight.requires_grad_(False)
    assert all_trainable(JointEncoder.from_pretrained(joint.save_pretrained(tmp_path / "joint")))


def test_encoding_needs_a_tokenizer(tiny_vlt5_pth: Path, tiny_feature_file: Path) -> None:
    joint, _ = JointEncoder.from_vlt5_checkpoint(tiny_vlt5_pth)
    qe = QueryEncoder(QueryEncoderConfig(model=joint.config, proj_dim=10), joint)  # no tokenizer
    with pytest.raises(ValueError, match="no tokenizer"):
        encode_with_features(qe, tiny_feature_file, ["q"], [FEATURE_IDS[0]])


def test_encode_on_the_extraction_scripts_output(tiny_vit_pt: Path, tiny_t5_dir: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """End to end: images -> clip_prepro_feats.py (tiny ViT CLIP: 4x4 grid of width 128, fc 48) -> encode."""
    from feature_extraction import clip_prepro_feats
    from feature_extraction.readers import open_features
    from feature_extraction.tiny import make_image_folder

    make_image_folder(tmp_path / "imgs", 3, size=(60, 40))
    code = clip_prepro_feats.main(["--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "feats.h5"),
                                   "--backbone", str(tiny_vit_pt), "--num-workers", "0", "--device", "cpu",
                                   "--no-progress", "--quiet"])
    assert code == 0, capsys.readouterr().err
    store = open_features(tmp_path / "feats.h5")
    assert store.attrs["grid_hw"] == [4, 4]
    qe = QueryEncoder.from_t5(tiny_t5_dir, proj_dim=48, feat_dim=128, visual={"fc_dim": 48, "pool_grid_to": 3},
                              inputs=VisualInputConfig(fc_token=True, boxes="grid_cells", prefix="vqa: "))
    vecs = encode_with_features(qe, store, ["who built this?", "what is shown?", "where is it?"], store.ids)
    assert vecs.shape == (3, 48)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=-1), np.ones(3), atol=1e-5)
    batch = QueryCollator.for_encoder(qe, store)(["q"], store.ids[:1])
    out = qe.joint(**batch)
    assert out.last_hidden_state.shape[1] == batch["input_ids"].shape[1] + 3 * 3 + 1  # pooled 4x4 -> 3x3, + fc
