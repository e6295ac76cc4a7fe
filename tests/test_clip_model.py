"""CLIP-family model: configs, variants and locking, the seven image input kinds, save/load, OpenAI .pt export."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clip_family.config import named_config, named_configs, tiny_config
from clip_family.export import export_openai
from clip_family.model import CLIP, BaselineCLIP, ClipFamilyModel, LiT, SigLIP, build
from foundations.errors import UserError


def test_named_openai_configs() -> None:
    names = named_configs()
    for name in ("RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B/32", "ViT-B/16", "ViT-L/14",
                 "ViT-L/14@336px"):
        assert name in names
        named_config(name)
    cfg = named_config("ViT-L/14@336px")
    assert (cfg.image.image_resolution, cfg.image.patch_size, cfg.embed_dim) == (336, 14, 768)
    assert named_config("RN50").image.layers == (3, 4, 6, 3)
    with pytest.raises(UserError, match="unknown model name"):
        named_config("RN51")


def test_variants_lock_and_init() -> None:
    torch.manual_seed(0)
    clip_model, sig, lit, siglit = (build("tiny", v) for v in ("CLIP", "SigLIP", "LiT", "SigLiT"))
    assert float(clip_model.logit_scale.detach()) == pytest.approx(math.log(1 / 0.07)) and clip_model.logit_bias is None
    assert float(sig.logit_scale.detach()) == pytest.approx(math.log(10)) and float(sig.logit_bias.detach()) == -10.0
    assert all(p.requires_grad for p in clip_model.parameters())
    for model in (lit, siglit):
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        expected = {n for n, _ in model.named_parameters() if not n.startswith("visual.")}
        assert trainable == expected
        model.train()
        assert not model.visual.training and model.text.training
    assert siglit.config.loss == "siglip" and lit.config.loss == "clip"


def test_encode_image_seven_input_kinds(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build("tiny", "CLIP").eval()
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 255, (40, 48, 3), dtype=np.uint8) for _ in range(3)]
    folder = tmp_path / "imgs"
    folder.mkdir()
    paths = []
    for i, a in enumerate(arrays):
        paths.append(folder / f"im{i}.png")
        Image.fromarray(a).save(paths[-1])
    pils = [Image.open(p) for p in paths]
    reference = model.encode_image(paths)  # list of paths
    pixels = torch.stack([model.processor(Image.fromarray(a)) for a in arrays])
    kinds = {"path": model.encode_image(str(paths[0])), "folder": model.encode_image(folder),
             "pil": model.encode_image(pils[0]), "pil list": model.encode_image(pils),
             "hwc": model.encode_image(arrays[0]), "nhwc": model.encode_image(np.stack(arrays)),
             "chw": model.encode_image(pixels[0]), "nchw": model.encode_image(pixels)}
    for name, out in kinds.items():
        expected = reference[:1] if len(out) == 1 else reference
        assert torch.allclose(out, expected, atol=1e-6), name
    normed = model.encode_image(paths, normalize=True)
    assert torch.allclose(normed.norm(dim=-1), torch.ones(3), atol=1e-5)
    with pytest.raises(UserError, match="missing.png"):
        model.encode_image([paths[0], folder / "missing.png"])
    text = model.encode_text(["a cat", "a dog"])
    assert text.shape == (2, 24)
    assert torch.allclose(model.encode_text("a cat"), text[:1], atol=1e-6)


def test_save_load_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = SigLIP(tiny_config()).eval()
    model.save_pretrained(tmp_path / "m")
    again = ClipFamilyModel.from_pretrained(tmp_path / "m").eval()
    assert again.config == model.config
    assert torch.equal(model.encode_text(["x y"]), again.encode_text(["x y"]))
    pix = torch.randn(2, 3, 32, 32)
    assert torch.equal(model.encode_image(pix), again.encode_image(pix))
    lit = LiT(str(tmp_path / "m"))  # a pretrained dir as a LiT start: weights kept, image tower locked
    assert torch.equal(lit.encode_image(pix), model.encode_image(pix)) and lit.logit_bias is None
    assert BaselineCLIP(str(tmp_path / "m")).config.lock_text


def _round_like_openai(model: ClipFamilyModel) -> None:
    """Make the weights fp16-representable where clip.load stores them in fp16 (so the comparison is exact)."""
    from clip.model import convert_weights

    convert_weights(model.visual)
    convert_weights(model.text)
    model.text_projection.half()
    model.float()


@pytest.mark.parametrize("resnet", [False, True])
def test_export_openai_pt_loads_in_clip(tmp_path: Path, resnet: bool) -> None:
    import clip

    torch.manual_seed(2)
    model = CLIP(tiny_config(resnet=resnet))
    _round_like_openai(model)
    model.eval()
    path = export_openai(model, tmp_path / "exported.pt")
    loaded, _ = clip.load(str(path), device="cpu", jit=False)
    size = model.config.image.image_resolution
    pixels = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert torch.allclose(loaded.encode_image(pixels), model.encode_image(pixels), atol=1e-5)
        tokens = clip.tokenize(["a handwritten seven", "a cat"], context_length=model.config.text.context_length)
        assert torch.allclose(loaded.encode_text(tokens), model.encode_text(["a handwritten seven", "a cat"]),
                              atol=1e-5)
    back = ClipFamilyModel.from_openai(path).eval()
    assert torch.allclose(back.encode_image(pixels), model.encode_image(pixels), atol=1e-6)


@pytest.mark.slow
def test_exported_pt_feeds_feature_extraction(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = CLIP(tiny_config()).eval()
    _round_like_openai(model)
    path = export_openai(model, tmp_path / "exported.pt")
    images = tmp_path / "imgs"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(images / f"im{i}.png")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-m", "vlt5r", "extract", "--images", str(images), "--out",
                          str(tmp_path / "f.h5"), "--backbone", str(path), "--device", "cpu"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    import h5py

    with h5py.File(tmp_path / "f.h5", "r") as f:
        ids = [i.decode() if isinstance(i, bytes) else i for i in f["ids"][:]]
        fc = f["fc"][:]
    assert len(ids) == 3
    order = np.argsort(ids)
    expected = model.encode_image(sorted(images.glob("*.png"))).numpy()
    assert np.allclose(fc[order].astype(np.float32), expected, rtol=2e-3, atol=2e-3)  # stored as fp16


@pytest.mark.parametrize("resnet", [False, True])
def test_gradient_checkpointing_same_gradients(resnet: bool) -> None:
    from clip_family.losses import clip_loss

    torch.manual_seed(4)
    model = CLIP(tiny_config(resnet=resnet)).eval()  # eval: BatchNorm uses running stats, so both passes agree
    for module in model.modules():
        module.training = not isinstance(module, torch.nn.BatchNorm2d)
    size = model.config.image.image_resolution
    pixels = torch.randn(4, 3, size, size)
    tokens = model.tokenize(["a", "b c", "d e f", "g"])

    def grads() -> dict[str, torch.Tensor]:
        model.zero_grad()
        image, text, scale, _ = model(pixels, tokens)
        clip_loss(image, text, scale).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    names = [n for n, _ in model.named_parameters()]
    model.set_gradient_checkpointing(True)
    assert [n for n, _ in model.named_parameters()] == names
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys()
    assert all(torch.allclose(plain[k], checkpointed[k], atol=1e-6) for k in plain)


def test_transformers_towers_from_directories(tmp_path: Path) -> None:
    from clip_family.config import ImageTowerConfig, ModelConfig, TextTowerConfig
    from feature_extraction.tiny import make_hf_clip

    hf = make_hf_clip(tmp_path / "hf")
    cfg = ModelConfig(embed_dim=20, image=ImageTowerConfig(kind="hf", path=str(hf)),
                      text=TextTowerConfig(kind="hf", path=str(hf), pooling="cls", context_length=16))
    torch.manual_seed(5)
    model = LiT(cfg).eval()
    assert isinstance(model.text_projection, torch.nn.Linear) and model.text_projection.out_features == 20
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"image_projection", "text", "text_projection", "logit_scale"}
    image = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    emb = model.encode_image(image, normalize=True)
    assert emb.shape == (1, 20)
    model.save_pretrained(tmp_path / "saved")
    again = ClipFamilyModel.from_pretrained(tmp_path / "saved").eval()
    assert torch.allclose(again.encode_image(image, normalize=True), emb, atol=1e-6)
    assert torch.allclose(again.encode_text(["a cat"]), model.encode_text(["a cat"]), atol=1e-6)


def test_a_corrupt_weights_file_is_one_line_naming_it(tmp_path: Path) -> None:
    """A truncated ``model.safetensors`` (resume, ``from_pretrained``) is a UserError naming the file, not a trace."""
    model = ClipFamilyModel(tiny_config())
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"\x00" * 7)
    with pytest.raises(UserError, match=r"model\.safetensors: not a readable safetensors file"):
        model.load_weights(weights)
