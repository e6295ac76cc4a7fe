"""``fc`` and ``grid`` in the written file equal the same quantities computed directly from the model
(``clip.load(path)`` for OpenAI-format ViT and ResNet, ``CLIPModel`` for ``hf:`` dirs), in float32 to 1e-5;
text mode equals ``encode_text`` / ``get_text_features``; ``--image-size`` interpolates positional embeddings.
With ``--precision bf16`` the same references computed under ``torch.autocast(bfloat16)`` are matched (and the
result really differs from fp32)."""

from __future__ import annotations

import json

import contextlib

import clip
import numpy as np
import pytest
import torch
from helpers_extract import extract_with, read_all
from PIL import Image

from feature_extraction.backbones import clip_transform, resize_pos_embed
from feature_extraction.tiny import make_image_folder

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")  # clip.load

TOL = 1e-5
PRECISIONS = ["fp32", "bf16"]


def reference_precision(precision: str) -> contextlib.AbstractContextManager:
    """The arithmetic ``--precision`` promises, applied to the reference computation."""
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def assert_really_reduced(precision: str, got: np.ndarray, fp32: torch.Tensor) -> None:
    """A bf16 run that silently computed in fp32 would pass the parity checks against a loose reference."""
    if precision == "bf16":
        assert np.abs(got - fp32.numpy()).max() > 1e-5


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    make_image_folder(folder, 7, size=(120, 90), subdirs=2)
    return folder


def _pil(folder, ids):
    return [Image.open(folder / f"{i}.jpg").convert("RGB") for i in ids]


def openai_reference(model: clip.model.CLIP, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fc and grid recomputed from the model's submodules, step by step as ``clip.model`` defines them."""
    v = model.visual
    x = pixels.type(model.dtype)
    if isinstance(v, clip.model.VisionTransformer):
        x = v.conv1(x).flatten(2).permute(0, 2, 1)  # (N, h*w, C)
        cls = v.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
        x = v.ln_pre(torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype))
        x = v.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)  # (N, 1 + h*w, C)
        return v.ln_post(x[:, 0, :]) @ v.proj, x[:, 1:, :]
    x = v.relu1(v.bn1(v.conv1(x)))
    x = v.relu2(v.bn2(v.conv2(x)))
    x = v.avgpool(v.relu3(v.bn3(v.conv3(x))))
    x = v.layer4(v.layer3(v.layer2(v.layer1(x))))  # (N, C, h, w)
    return v.attnpool(x), x.flatten(2).transpose(1, 2)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("which", ["tiny_vit_pt", "tiny_resnet_pt"])
def test_openai_fc_and_grid_equal_the_model(which, precision, photos, tmp_path, request):
    path = request.getfixturevalue(which)
    summary = extract_with(tmp_path / "f.h5", path, images=photos, batch_size=3, precision=precision)
    ids, fc, grid, attrs = read_all(tmp_path / "f.h5")
    assert summary.written == 7 and len(ids) == 7
    model, preprocess = clip.load(str(path), device="cpu", jit=False)
    pixels = torch.stack([preprocess(im) for im in _pil(photos, ids)])
    assert torch.equal(pixels, torch.stack([clip_transform(model.visual.input_resolution)(im)
                                            for im in _pil(photos, ids)]))
    with torch.no_grad():
        with reference_precision(precision):
            ref_fc, ref_grid = openai_reference(model, pixels)
            direct = model.encode_image(pixels)
        fp32 = model.encode_image(pixels)
    np.testing.assert_allclose(fc, direct.float().numpy(), atol=TOL, rtol=0)
    np.testing.assert_allclose(fc, ref_fc.float().numpy(), atol=TOL, rtol=0)
    np.testing.assert_allclose(grid, ref_grid.float().numpy(), atol=TOL, rtol=0)
    assert_really_reduced(precision, fc, fp32)
    assert attrs["precision"] == precision
    h, w = attrs["grid_hw"]
    assert grid.shape == (7, h * w, attrs["grid_dim"]) and fc.shape == (7, attrs["fc_dim"])
    assert attrs["backbone_arch"] == ("vit" if which == "tiny_vit_pt" else "resnet")
    assert (h, w) == ((4, 4) if which == "tiny_vit_pt" else (3, 3))


@pytest.mark.parametrize("precision", PRECISIONS)
def test_hf_fc_and_grid_equal_the_model(precision, tiny_hf_clip_dir, photos, tmp_path):
    from transformers import CLIPImageProcessor, CLIPModel

    extract_with(tmp_path / "f.h5", f"hf:{tiny_hf_clip_dir}", images=photos, batch_size=3, num_workers=2,
                 precision=precision)
    ids, fc, grid, attrs = read_all(tmp_path / "f.h5")
    model = CLIPModel.from_pretrained(tiny_hf_clip_dir).eval()
    pixels = CLIPImageProcessor.from_pretrained(tiny_hf_clip_dir)(images=_pil(photos, ids),
                                                                   return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        with reference_precision(precision):
            vision = model.vision_model(pixel_values=pixels)
            ref_fc = model.visual_projection(vision.pooler_output)
        fp32 = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
    np.testing.assert_allclose(fc, ref_fc.float().numpy(), atol=TOL, rtol=0)
    np.testing.assert_allclose(grid, vision.last_hidden_state[:, 1:].float().numpy(), atol=TOL, rtol=0)
    assert_really_reduced(precision, fc, fp32)
    assert attrs["grid_hw"] == [4, 4] and attrs["backbone_family"] == "hf-clip"


def _texts(tmp_path):
    records = [{"id": f"t{i}", "text": t} for i, t in enumerate(
        ["a photo of a cat", "the Eiffel Tower at night", "x", "a very long passage " * 40, "dog"])]
    (tmp_path / "kb.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return [r["text"] for r in records]


@pytest.mark.parametrize("precision", PRECISIONS)
def test_openai_text_mode_equals_encode_text(precision, tiny_vit_pt, tmp_path):
    texts = _texts(tmp_path)
    extract_with(tmp_path / "kb.h5", tiny_vit_pt, texts=tmp_path / "kb.jsonl", batch_size=2, precision=precision)
    ids, fc, grid, attrs = read_all(tmp_path / "kb.h5")
    model, _ = clip.load(str(tiny_vit_pt), device="cpu", jit=False)
    tokens = clip.tokenize(texts, truncate=True)
    with torch.no_grad():
        with reference_precision(precision):
            ref = model.encode_text(tokens)
        fp32 = model.encode_text(tokens)
    assert ids == [f"t{i}" for i in range(5)] and grid is None and attrs["modality"] == "text"
    np.testing.assert_allclose(fc, ref.float().numpy(), atol=TOL, rtol=0)
    assert_really_reduced(precision, fc, fp32)
    assert attrs["precision"] == precision and "decode" not in attrs


def test_hf_text_mode_equals_get_text_features(tiny_hf_clip_dir, tmp_path):
    from transformers import AutoTokenizer, CLIPModel

    texts = _texts(tmp_path)
    extract_with(tmp_path / "kb.h5", f"hf:{tiny_hf_clip_dir}", texts=tmp_path / "kb.jsonl", batch_size=5)
    _, fc, _, _ = read_all(tmp_path / "kb.h5")
    model = CLIPModel.from_pretrained(tiny_hf_clip_dir).eval()
    tokens = AutoTokenizer.from_pretrained(tiny_hf_clip_dir)(texts, padding=True, truncation=True, max_length=77,
                                                             return_tensors="pt")
    with torch.no_grad():
        ref = model.get_text_features(**tokens).pooler_output
    np.testing.assert_allclose(fc, ref.numpy(), atol=TOL, rtol=0)


def test_image_size_interpolates_and_native_size_is_identity(tiny_vit_pt, tiny_hf_clip_dir, photos, tmp_path):
    from transformers import CLIPImageProcessor, CLIPModel

    extract_with(tmp_path / "native.h5", tiny_vit_pt, images=photos)
    extract_with(tmp_path / "explicit.h5", tiny_vit_pt, images=photos, image_size=32)
    assert np.array_equal(read_all(tmp_path / "native.h5")[1], read_all(tmp_path / "explicit.h5")[1])
    extract_with(tmp_path / "big.h5", tiny_vit_pt, images=photos, image_size=48)
    _, _, grid, attrs = read_all(tmp_path / "big.h5")
    assert attrs["grid_hw"] == [6, 6] and grid.shape[1] == 36 and attrs["pos_embed_interpolated"]

    extract_with(tmp_path / "hf48.h5", f"hf:{tiny_hf_clip_dir}", images=photos, image_size=48)
    ids, fc, grid, attrs = read_all(tmp_path / "hf48.h5")
    processor = CLIPImageProcessor.from_pretrained(tiny_hf_clip_dir, size={"shortest_edge": 48},
                                                   crop_size={"height": 48, "width": 48})
    pixels = processor(images=_pil(photos, ids), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = CLIPModel.from_pretrained(tiny_hf_clip_dir).eval().get_image_features(
            pixel_values=pixels, interpolate_pos_encoding=True)
    np.testing.assert_allclose(fc, out.pooler_output.numpy(), atol=TOL, rtol=0)
    np.testing.assert_allclose(grid, out.last_hidden_state[:, 1:].numpy(), atol=TOL, rtol=0)
    assert attrs["image_size"] == 48 and attrs["native_image_size"] == 32


def test_resize_pos_embed_keeps_cls_and_constant_grids():
    pos = torch.cat([torch.full((1, 5), 3.0), torch.full((16, 5), 0.25)])  # CLS + a constant 4x4 grid
    out = resize_pos_embed(pos, 6)
    assert out.shape == (37, 5) and torch.equal(out[0], pos[0])
    torch.testing.assert_close(out[1:], torch.full((36, 5), 0.25))
    assert resize_pos_embed(pos, 4) is pos


def test_float16_on_cpu_stores_fp32_results_rounded_and_no_grid_drops_the_grid(tiny_vit_pt, photos, tmp_path):
    extract_with(tmp_path / "f32.h5", tiny_vit_pt, images=photos)
    extract_with(tmp_path / "f16.h5", tiny_vit_pt, images=photos, dtype="float16")
    extract_with(tmp_path / "fc_only.h5", tiny_vit_pt, images=photos, grid=False)
    _, fc32, grid32, _ = read_all(tmp_path / "f32.h5")
    _, fc16, grid16, attrs = read_all(tmp_path / "f16.h5")
    assert fc16.dtype == np.float16 and attrs["dtype"] == "float16"
    assert np.array_equal(fc16, fc32.astype(np.float16)) and np.array_equal(grid16, grid32.astype(np.float16))
    _, fc_only, no_grid, attrs = read_all(tmp_path / "fc_only.h5")
    assert no_grid is None and not attrs["has_grid"] and np.array_equal(fc_only, fc32)
