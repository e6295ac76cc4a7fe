"""Vision–language pre-training from two unimodal transformers towers (a tiny ViT and a tiny XLM-R) with peft:
the trainable parameters are exactly peft's, the merged export gives the unmerged embeddings, adapter-only
checkpoints reload (their tower folders are peft's own format), the CLI trains, resumes and exports, and
``--wandb offline`` writes a run directory while wandb is never required."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

peft = pytest.importorskip("peft")

from clip_family.config import ImageTowerConfig, ModelConfig, TextTowerConfig, with_variant  # noqa: E402
from clip_family.model import ClipFamilyModel  # noqa: E402
from clip_family.peft_towers import PeftSection, apply_peft, merge_adapters  # noqa: E402
from feature_extraction.tiny import make_hf_text_encoder, make_hf_vit  # noqa: E402
from foundations.errors import UserError  # noqa: E402

WORDS = ["a red square left of a blue circle", "a green circle left of a red square", "two blue squares"]
LORA = {"peft_method": "lora", "lora_r": 4, "lora_alpha": 8.0, "image_target_modules": ("q_proj", "v_proj")}


@pytest.fixture(scope="module")
def towers(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("towers")
    return make_hf_vit(root / "vit"), make_hf_text_encoder(root / "xlmr", WORDS, dropout=0.0)


def vlp(towers: tuple[Path, Path], variant: str = "CLIP") -> ClipFamilyModel:
    cfg = ModelConfig(embed_dim=20, image=ImageTowerConfig(kind="hf", path=str(towers[0])),
                      text=TextTowerConfig(kind="hf", path=str(towers[1]), context_length=16))
    return ClipFamilyModel(with_variant(cfg, variant))


def trainable(module: torch.nn.Module) -> set[str]:
    return {n for n, p in module.named_parameters() if p.requires_grad}


def pixels() -> torch.Tensor:
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def embeddings(model: ClipFamilyModel) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    return model.encode_image(pixels()), model.encode_text(WORDS)


def randomise_adapters(model: ClipFamilyModel) -> None:
    """LoRA's B starts at zero (adapted = base): give every adapter weight a value, as training would."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))


def test_trainable_parameters_are_exactly_peft_s(towers: tuple[Path, Path]) -> None:
    from transformers import AutoModel

    model = vlp(towers)
    section = PeftSection(**LORA)
    apply_peft(model, section)
    expected = {"image_projection.weight", "text_projection.weight", "logit_scale"}
    for tower, path, prefix in (("image", towers[0], "visual.encoder."), ("text", towers[1], "text.encoder.")):
        reference = peft.get_peft_model(AutoModel.from_pretrained(path), section.peft_config(tower))
        theirs = trainable(reference)
        assert theirs and all("lora_" in n for n in theirs)
        expected |= {prefix + n for n in theirs}
    assert trainable(model) == expected
    model.set_locks(lock_text=False)  # the lock logic turns requires_grad on everywhere, then back off for bases
    assert trainable(model) == expected
    assert "PeftModel" in repr(model)  # a wrapper you can see
    lit = vlp(towers, "LiT")
    with pytest.raises(UserError, match="image tower is locked"):
        apply_peft(lit, section)
    with pytest.raises(UserError, match="q_proj"):  # no default target modules for ViT: the error lists its layers
        apply_peft(vlp(towers), PeftSection(peft_method="lora", peft_towers=("image",)))
    ia3 = vlp(towers)
    apply_peft(ia3, PeftSection(peft_method="ia3", peft_towers=("text",), text_target_modules=("query", "value")))
    assert {n for n in trainable(ia3) if n.startswith("text.")} and all(
        "ia3_l" in n for n in trainable(ia3) if n.startswith("text."))


def test_merged_export_equals_the_unmerged_model(towers: tuple[Path, Path], tmp_path: Path) -> None:
    base = embeddings(vlp(towers))
    model = vlp(towers)
    apply_peft(model, PeftSection(**LORA))
    randomise_adapters(model)
    unmerged = embeddings(model)
    assert (unmerged[0] - base[0]).abs().max() > 1e-3 and (unmerged[1] - base[1]).abs().max() > 1e-3
    merged = merge_adapters(model)
    assert "PeftModel" not in repr(merged) and not any("lora_" in n for n, _ in merged.named_parameters())
    for a, b in zip(embeddings(merged), unmerged):
        assert (a - b).abs().max() <= 1e-5
    merged.save_pretrained(tmp_path / "full")
    assert (tmp_path / "full/model.safetensors").is_file()
    for a, b in zip(embeddings(ClipFamilyModel.from_pretrained(tmp_path / "full")), unmerged):
        assert (a - b).abs().max() <= 1e-5


def test_adapter_only_checkpoints_reload(towers: tuple[Path, Path], tmp_path: Path) -> None:
    from transformers import AutoModel

    model = vlp(towers)
    apply_peft(model, PeftSection(**LORA))
    randomise_adapters(model)
    with torch.no_grad():
        model.text_projection.weight.mul_(2.0)  # the rest (projections, scale) travels beside the adapters
    before = embeddings(model)
    model.save_pretrained(tmp_path / "ck")
    files = {p.relative_to(tmp_path / "ck").as_posix() for p in (tmp_path / "ck").rglob("*") if p.is_file()}
    assert {"adapters.json", "config.json", "rest.safetensors", "adapters/image/adapter_model.safetensors",
            "adapters/text/adapter_config.json"} <= files and "model.safetensors" not in files
    size = sum((tmp_path / "ck" / f).stat().st_size for f in files)
    assert size < sum(p.numel() * 4 for p in model.parameters()) / 3  # the towers' base weights are not in it
    loaded = ClipFamilyModel.from_pretrained(tmp_path / "ck")
    for a, b in zip(embeddings(loaded), before):
        assert (a - b).abs().max() <= 1e-6
    assert trainable(loaded) == trainable(model)
    # each tower folder is peft's own format: PeftModel.from_pretrained on the plain tower model reads it
    tower = peft.PeftModel.from_pretrained(AutoModel.from_pretrained(towers[0]), str(tmp_path / "ck/adapters/image"))
    with torch.no_grad():
        assert torch.allclose(tower(pixel_values=pixels()).pooler_output, model.visual(pixels()), atol=1e-6)
    fresh = vlp(towers)  # in place, as a resume does: a freshly adapted model takes the checkpoint's values
    apply_peft(fresh, PeftSection(**LORA))
    fresh.load_checkpoint(tmp_path / "ck")
    for a, b in zip(embeddings(fresh), before):
        assert (a - b).abs().max() <= 1e-6
    # adapters on a model loaded from a saved directory: that directory is their base
    vlp(towers).save_pretrained(tmp_path / "saved")
    on_saved = ClipFamilyModel.from_pretrained(tmp_path / "saved")
    apply_peft(on_saved, PeftSection(**LORA))
    randomise_adapters(on_saved)
    on_saved.save_pretrained(tmp_path / "ck2")
    for a, b in zip(embeddings(ClipFamilyModel.from_pretrained(tmp_path / "ck2")), embeddings(on_saved)):
        assert (a - b).abs().max() <= 1e-6


def caption_folder(root: Path, n: int = 8) -> Path:
    from PIL import Image

    (root / "img").mkdir(parents=True)
    (root / "txt").mkdir()
    for i in range(n):
        Image.new("RGB", (40, 40), (25 * i, 200 - 20 * i, 90)).save(root / "img" / f"s{i}.png")
        (root / "txt" / f"s{i}.txt").write_text(WORDS[i % len(WORDS)] + "\n")
    return root


def test_cli_trains_lora_towers_resumes_exports_and_logs_to_wandb_offline(towers: tuple[Path, Path], tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("wandb")
    from vlt5r.main import main

    data = caption_folder(tmp_path / "data")
    out = tmp_path / "run"
    argv = ["clip-train", "--image-tower", str(towers[0]), "--text-tower", str(towers[1]), "--embed-dim", "20",
            "--context-length", "16", "--train-data", str(data), "--val-data", str(data), "--batch-size", "4",
            "--epochs", "1", "--threads", "1", "--no-progress", "--no-tensorboard", "--no-curves",
            "--peft-method", "lora", "--lora-r", "4", "--image-target-modules", "q_proj", "v_proj",
            "--out", str(out), "--wandb", "offline", "--export-merged", str(tmp_path / "merged")]
    assert main(argv) == 0, capsys.readouterr().err[-2000:]
    runs = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0
    for name in ("init", "last", "best"):
        assert (out / name / "adapters.json").is_file() and not (out / name / "model.safetensors").exists()
    trained, start = ClipFamilyModel.from_pretrained(out / "last"), ClipFamilyModel.from_pretrained(out / "init")
    lora = [n for n, _ in trained.named_parameters() if "lora_B" in n]
    state, initial = trained.state_dict(), start.state_dict()
    assert lora and any((state[n] - initial[n]).abs().max() > 0 for n in lora)  # the adapters trained
    frozen = [n for n in state if ".base_layer." in n or n.endswith("embeddings.word_embeddings.weight")]
    assert frozen and all(torch.equal(state[n], initial[n]) for n in frozen)  # the towers' own weights did not
    merged = ClipFamilyModel.from_pretrained(tmp_path / "merged")
    for a, b in zip(embeddings(merged), embeddings(merge_adapters(trained))):
        assert (a - b).abs().max() <= 1e-5
    # a second epoch resumes from the adapter-only OUT/last (the first epoch made 2 steps of 4 pairs)
    resume = argv[:argv.index("--wandb")]
    resume[resume.index("--epochs") + 1] = "2"
    assert main(resume) == 0
    assert json.loads((out / "last/trainer_state.json").read_text())["global_step"] == 4
    assert "resuming with changed settings" in capsys.readouterr().err


def test_wandb_is_never_required(towers: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    from vlt5r.main import main

    monkeypatch.setitem(sys.modules, "wandb", None)  # as if it were not installed: `import wandb` fails
    data = caption_folder(tmp_path / "data")
    argv = ["clip-train", "--model-name", "tiny", "--train-data", str(data), "--batch-size", "4", "--epochs", "1",
            "--threads", "1", "--no-progress", "--no-tensorboard", "--no-curves", "--max-steps", "1"]
    assert main([*argv, "--out", str(tmp_path / "plain")]) == 0
    assert (tmp_path / "plain/last").is_dir() and not (tmp_path / "plain/wandb").exists()
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "asked"), "--wandb", "offline"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs the wandb package" in err[0]
    assert not (tmp_path / "asked").exists()  # refused before anything was written
