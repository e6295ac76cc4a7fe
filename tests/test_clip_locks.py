"""Partial tower locking (open_clip's ``lock_image_tower(unlocked_groups)`` / ``lock_text_tower(unlocked_layers)``):
the trainable parameter set for every N equals open_clip's own lock on an equivalent open_clip model (OpenAI ViT,
OpenAI text transformer, a transformers XLM-R text tower), or a hand list where open_clip has none (ModifiedResNet,
transformers CLIP towers); locked groups stay in eval mode; the flags of ``vlt5r clip-train``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from clip_family.config import ImageTowerConfig, ModelConfig, TextTowerConfig, tiny_config, with_variant
from clip_family.model import ClipFamilyModel
from feature_extraction.tiny import make_hf_text_encoder
from test_clip_train import config, small, weights  # noqa: F401  (small: the 48-scan digits fixture)


def trainable(module: nn.Module) -> set[str]:
    return {n for n, p in module.named_parameters() if p.requires_grad}


def vit_config(variant: str) -> ModelConfig:
    """The tests' tiny ViT with three blocks in each tower (a first, a middle and a last block)."""
    cfg = tiny_config(variant)
    return dataclasses.replace(cfg, image=dataclasses.replace(cfg.image, layers=(3,)),
                               text=dataclasses.replace(cfg.text, layers=3))


def open_clip_twin(cfg: ModelConfig) -> nn.Module:
    """open_clip's own CLIP of the same OpenAI shapes (QuickGELU, as OpenAI's)."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    vision = CLIPVisionCfg(layers=cfg.image.layers[0], width=cfg.image.width, patch_size=cfg.image.patch_size,
                           image_size=cfg.image.image_resolution)
    text = CLIPTextCfg(context_length=cfg.text.context_length, vocab_size=cfg.text.vocab_size, width=cfg.text.width,
                       heads=cfg.text.heads, layers=cfg.text.layers)
    return CLIP(cfg.embed_dim, vision, text, quick_gelu=True)


def test_vit_image_groups_equal_open_clip() -> None:
    ours, theirs = ClipFamilyModel(vit_config("LiT")), open_clip_twin(vit_config("LiT"))
    assert {n for n, _ in ours.visual.named_parameters()} == {n for n, _ in theirs.visual.named_parameters()}
    for n in range(8):  # 5 groups: [stem], block 0, block 1, [block 2, ln_post], [proj]; more = all
        ours.lock_image_tower(n)
        theirs.lock_image_tower(unlocked_groups=n)
        assert trainable(ours.visual) == trainable(theirs.visual), n
        assert trainable(ours.text) == {n for n, _ in ours.text.named_parameters()}  # the text tower untouched
    ours.lock_image_tower(2)
    assert trainable(ours.visual) == {"proj", "ln_post.weight", "ln_post.bias"} | {
        n for n, _ in ours.visual.named_parameters() if n.startswith("transformer.resblocks.2.")}
    ours.lock_image_tower(0)
    assert trainable(ours.visual) == set()


def test_openai_text_groups_equal_open_clip() -> None:
    from open_clip.transformer import lock_text_tower

    ours, theirs = ClipFamilyModel(vit_config("CLIP")), open_clip_twin(vit_config("CLIP"))
    text_names = ("token_embedding", "positional_embedding", "transformer.", "ln_final", "text_projection")

    def theirs_trainable() -> set[str]:
        return {n for n in trainable(theirs) if n.startswith(text_names)}

    def ours_trainable() -> set[str]:
        renamed = {"text_projection.weight": "text_projection"}
        return {renamed.get(n, n.removeprefix("text.")) for n in trainable(ours)
                if n.startswith(("text.", "text_projection"))}

    for n in range(8):  # 5 groups: [embeddings], block 0, block 1, [block 2, ln_final], [projection]
        ours.lock_text_tower(n)
        theirs.requires_grad_(True)
        lock_text_tower(theirs, n)
        assert ours_trainable() == theirs_trainable(), n
        assert trainable(ours.visual) == {n for n, _ in ours.visual.named_parameters()}  # the image tower untouched
    ours.lock_text_tower(1)
    assert ours_trainable() == {"text_projection"}
    ours.lock_text_tower(0, freeze_layer_norm=False)  # an extension: open_clip refuses it for OpenAI towers
    assert ours_trainable() == {n for n, _ in ours.text.named_parameters() if ".ln_" in n or n.startswith("ln_final")}


def test_modified_resnet_groups_by_hand() -> None:
    model = ClipFamilyModel(tiny_config("LiT", resnet=True))
    names = {n for n, _ in model.visual.named_parameters()}
    order = ["attnpool.", "layer4.", "layer3.", "layer2.", "layer1."]
    for n in range(6):
        model.lock_image_tower(n)
        assert trainable(model.visual) == {p for p in names if p.startswith(tuple(order[:n]))}, n
    stem = {p for p in names if not p.startswith(tuple(order))}
    assert stem == {f"{m}.{w}" for m in ("conv1", "conv2", "conv3") for w in ("weight",)} | {
        f"{m}.{w}" for m in ("bn1", "bn2", "bn3") for w in ("weight", "bias")}
    for n in (6, 9):
        model.lock_image_tower(n)
        assert trainable(model.visual) == names

    model.lock_image_tower(2)  # attnpool + layer4 train; layer1-3 and the stem keep their BatchNorm statistics
    model.train()
    modes = {name: m.training for name, m in model.visual.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert modes and all(modes[name] == name.startswith("layer4.") for name in modes)
    model.lock_image_tower(0)
    model.train()
    assert not model.visual.training and model.text.training


def test_transformers_text_tower_groups_equal_open_clip(tmp_path: Path) -> None:
    from open_clip.hf_model import HFTextEncoder
    from transformers import AutoConfig

    xlmr = make_hf_text_encoder(tmp_path / "xlmr", ["a red ring"], layers=3)  # an XLM-R open_clip knows
    cfg = with_variant(ModelConfig(embed_dim=24, image=tiny_config().image,
                                   text=TextTowerConfig(kind="hf", path=str(xlmr), context_length=16)), "CLIP")
    ours = ClipFamilyModel(cfg)
    theirs = HFTextEncoder(str(xlmr), output_dim=24, config=AutoConfig.from_pretrained(xlmr),
                           pooler_type="mean_pooler", proj_type="linear")
    assert {n for n, _ in ours.text.encoder.named_parameters()} == {n for n, _ in theirs.transformer.named_parameters()}
    seen = set()
    for n in range(7):  # [embeddings], layer 0, layer 1, [layer 2 + pooler]
        for freeze_layer_norm in (True, False):
            ours.lock_text_tower(n, freeze_layer_norm)
            theirs.requires_grad_(True)
            theirs.lock(n, freeze_layer_norm)
            mine = trainable(ours.text.encoder)
            assert mine == trainable(theirs.transformer), (n, freeze_layer_norm)
            assert ours.text_projection.weight.requires_grad  # a transformers tower's projection always trains
            seen.add(frozenset(mine))
    assert len(seen) == 9  # every N and both LayerNorm choices made a different set (4 groups x 2, + all)
    ours.lock_text_tower(1)
    assert trainable(ours.text.encoder) == {n for n, _ in ours.text.encoder.named_parameters()
                                            if n.startswith(("encoder.layer.2.", "pooler."))}
    assert ours.encode_text(["a red ring"]).shape == (1, 24)  # the tokenizer and tower work as configured


def test_transformers_clip_towers_groups_by_hand(tiny_hf_clip_dir: Path) -> None:
    hf = str(tiny_hf_clip_dir)
    cfg = ModelConfig(embed_dim=20, image=ImageTowerConfig(kind="hf", path=hf),
                      text=TextTowerConfig(kind="hf", path=hf, pooling="cls", context_length=16))
    model = ClipFamilyModel(with_variant(cfg, "LiT"))
    model.lock_image_tower(1)
    assert trainable(model.visual) == {n for n, _ in model.visual.named_parameters()
                                       if n.startswith(("encoder.encoder.layers.1.", "encoder.post_layernorm."))}
    assert model.image_projection.weight.requires_grad
    model.lock_image_tower(2)
    assert trainable(model.visual) == {n for n, _ in model.visual.named_parameters()
                                       if n.startswith("encoder.encoder.layers.")} | {
        "encoder.post_layernorm.weight", "encoder.post_layernorm.bias"}
    model.lock_text_tower(1)
    assert trainable(model.text) == {n for n, _ in model.text.named_parameters()
                                     if n.startswith(("encoder.encoder.layers.1.", "encoder.final_layer_norm."))}
    model.lock_image_tower(1)
    model.train()  # the locked groups in eval mode (dropout off), the unlocked ones training
    assert not model.visual.encoder.encoder.layers[0].training and model.visual.encoder.encoder.layers[1].training
    assert not model.visual.encoder.embeddings.training and model.visual.encoder.post_layernorm.training


def test_clip_train_flags_train_exactly_the_unlocked_groups(tmp_path: Path, small: tuple[Path, Path],
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from vlt5r.main import main

    flags = ["clip-train", "--train-data", str(small[0]), "--batch-size", "8",
             "--max-steps", "1", "--cache-images", "--no-progress", "--no-tensorboard", "--no-curves",
             "--threads", "1", "--lr", "1e-3"]
    tiny = ["--model-name", "tiny"]
    assert main([*flags, *tiny, "--variant", "LiT", "--lock-image-unlocked-groups", "1", "--lock-text",
                 "--lock-text-unlocked-layers", "1", "--out", str(tmp_path / "run")]) == 0
    before, after = weights(tmp_path / "run/init"), weights(tmp_path / "run/last")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"visual.proj", "text_projection.weight", "logit_scale"}
    saved = ClipFamilyModel.from_pretrained(tmp_path / "run/last").config
    assert (saved.lock_image_unlocked_groups, saved.lock_text, saved.lock_text_unlocked_layers) == (1, True, 1)
    # go on from it without the lock flags: this run's flags decide, the saved locks are not kept
    assert main([*flags, "--model-name", str(tmp_path / "run/last"), "--variant", "LiT", "--out",
                 str(tmp_path / "again")]) == 0
    before, after = weights(tmp_path / "again/init"), weights(tmp_path / "again/last")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("text.transformer.") for k in changed) and not any(k.startswith("visual.") for k in changed)

    capsys.readouterr()
    assert main([*flags, *tiny, "--lock-image-unlocked-groups", "1", "--out", str(tmp_path / "bad")]) == 2  # CLIP
    assert main([*flags, *tiny, "--lock-text-unlocked-layers", "2", "--out", str(tmp_path / "bad")]) == 2
    assert main([*flags, *tiny, "--variant", "LiT", "--lock-image-unlocked-groups", "1", "--pre-embed", "--out",
                 str(tmp_path / "bad")]) == 1  # the stored tower output would not be the tower's any more
    errors = [line.split(" ")[1] for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == ["model.lock_image_unlocked_groups", "model.lock_text_unlocked_layers", "--pre-embed"]
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("bad", [{"lock_image_unlocked_groups": -1}, {"lock_text_unlocked_layers": -2}])
def test_negative_unlocked_counts_are_config_errors(bad: dict[str, int]) -> None:
    from foundations.errors import ConfigError

    with pytest.raises(ConfigError, match="must be >= 0"):
        dataclasses.replace(tiny_config("LiT"), **bad)
