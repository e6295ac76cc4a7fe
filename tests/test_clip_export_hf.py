"""Export to a transformers CLIP directory: ``CLIPModel.from_pretrained`` gives our embeddings (≤ 1e-5, fp32), the
tokenizer files give ``clip.tokenize``'s ids, ``vlt5r extract --backbone hf:DIR`` gives our ``encode_image``; the
refusals (ResNet, transformers text tower, an existing directory) and SigLIP's dropped bias."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clip_family.config import ImageTowerConfig, ModelConfig, TextTowerConfig, tiny_config
from clip_family.export_hf import export_transformers
from clip_family.model import CLIP, SigLIP, build
from foundations.errors import UserError

CAPTIONS = ["a handwritten seven", "A Cat, on the mat!", "  two   spaces ", "digits 0 1 2 and 42",
            "one two three four five six seven eight nine ten eleven twelve thirteen fourteen"]  # the last: truncated


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path]:
    torch.manual_seed(7)
    model = CLIP(tiny_config()).eval()
    with torch.no_grad():
        model.logit_scale.fill_(3.3)
    return model, export_transformers(model, tmp_path_factory.mktemp("hf") / "clip")


def test_clip_model_from_pretrained_equals_ours(exported: tuple) -> None:
    from transformers import CLIPModel

    model, directory = exported
    for name in ("config.json", "model.safetensors", "vocab.json", "merges.txt", "tokenizer_config.json",
                 "preprocessor_config.json"):
        assert (directory / name).is_file(), name
    hf = CLIPModel.from_pretrained(directory).eval()
    assert hf.config.vision_config.hidden_act == hf.config.text_config.hidden_act == "quick_gelu"
    assert hf.config.vision_config.num_attention_heads == 2 and hf.config.projection_dim == 24
    assert float(hf.logit_scale.detach()) == pytest.approx(3.3)
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        image = hf.get_image_features(pixel_values=pixels).pooler_output  # (3, 24)
        assert torch.allclose(image, model.encode_image(pixels), atol=1e-5)
        from transformers import AutoTokenizer

        tokens = AutoTokenizer.from_pretrained(directory)(CAPTIONS, padding=True, truncation=True,
                                                          return_tensors="pt")
        text = hf.get_text_features(**tokens).pooler_output  # (5, 24)
        assert torch.allclose(text, model.encode_text(CAPTIONS), atol=1e-5)


def test_tokenizer_files_give_clip_tokenize_ids(exported: tuple) -> None:
    import clip
    from transformers import AutoTokenizer, CLIPTokenizer

    model, directory = exported
    context = model.config.text.context_length
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert isinstance(tokenizer, CLIPTokenizer) and tokenizer.model_max_length == context == 13
    assert len(tokenizer) == 49408
    reference = clip.tokenize(CAPTIONS, context_length=context, truncate=True)  # (5, 13), zero-padded
    for caption, row in zip(CAPTIONS, reference):
        expected = row[: int(row.argmax()) + 1].tolist()  # up to and including <|endoftext|>
        assert tokenizer(caption, truncation=True)["input_ids"] == expected, caption
    assert len(tokenizer(CAPTIONS[-1], truncation=True)["input_ids"]) == context  # truncated like clip's


def test_vlt5r_extract_reads_the_exported_directory(exported: tuple, tmp_path: Path) -> None:
    import h5py

    from vlt5r.main import main

    model, directory = exported
    images = tmp_path / "imgs"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):  # at the native 32 px: both preprocessings are then the same up to float rounding
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(images / f"im{i}.png")
    code = main(["extract", "--images", str(images), "--out", str(tmp_path / "f.h5"), "--backbone",
                 f"hf:{directory}", "--device", "cpu", "--dtype", "float32", "--no-progress", "--quiet"])
    assert code == 0
    with h5py.File(tmp_path / "f.h5", "r") as f:
        ids = [i.decode() if isinstance(i, bytes) else i for i in f["ids"][:]]
        fc = f["fc"][:]
    expected = model.encode_image(sorted(images.glob("*.png"))).numpy()
    assert np.allclose(fc[np.argsort(ids)], expected, atol=1e-5)


def test_refusals_and_overwrite(exported: tuple, tmp_path: Path) -> None:
    from clip_family.model import ClipFamilyModel

    model, _ = exported
    with pytest.raises(UserError, match="ResNet image tower cannot become .*--export-openai"):
        export_transformers(CLIP(tiny_config(resnet=True)), tmp_path / "resnet")
    from feature_extraction.tiny import make_hf_clip

    hf_dir = make_hf_clip(tmp_path / "hf_tiny")
    text = TextTowerConfig(kind="hf", path=str(hf_dir), context_length=16)
    hf_text = ClipFamilyModel(ModelConfig(embed_dim=24, image=tiny_config().image, text=text))
    with pytest.raises(UserError, match="transformers text tower cannot become"):
        export_transformers(hf_text, tmp_path / "hf_text")
    hf_image = ClipFamilyModel(ModelConfig(embed_dim=24, image=ImageTowerConfig(kind="hf", path=str(hf_dir)),
                                           text=tiny_config().text))
    with pytest.raises(UserError, match="transformers image tower cannot become"):
        export_transformers(hf_image, tmp_path / "hf_image")
    assert not any((tmp_path / name).exists() for name in ("resnet", "hf_text", "hf_image"))

    directory = export_transformers(model, tmp_path / "clip")
    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        export_transformers(model, directory)
    torch.manual_seed(8)
    other = build("tiny", "CLIP").eval()
    export_transformers(other, directory, overwrite=True)
    from transformers import CLIPModel

    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        again = CLIPModel.from_pretrained(directory).eval().get_image_features(pixel_values=pixels).pooler_output
    assert torch.allclose(again, other.encode_image(pixels), atol=1e-5)
    assert not torch.allclose(again, model.encode_image(pixels), atol=1e-3)
    assert not any((tmp_path / name).exists() for name in (".clip.tmp", ".clip.old"))


def test_siglip_bias_is_dropped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from transformers import CLIPModel

    torch.manual_seed(9)
    model = SigLIP(tiny_config()).eval()
    with caplog.at_level(logging.WARNING, logger="clip_family.export_hf"):
        export_transformers(model, tmp_path / "siglip")
    assert "no logit bias" in caplog.text
    hf = CLIPModel.from_pretrained(tmp_path / "siglip")
    assert float(hf.logit_scale.detach()) == pytest.approx(float(model.logit_scale.detach()))
