"""Distillation into an mCLIP: the teacher's text side equals its encode_text (OpenAI .pt and transformers CLIP);
the mCLIP keeps the teacher's image tower and round-trips through its directory; `vlt5r extract --backbone <mCLIP
dir>` gives its embeddings and feeds the retrieval trainer's KB loader; pre-computed teacher embeddings give the
same first-step loss as running the teacher, and a file from another teacher is refused; layer-wise distillation;
the CLI end to end; SIGKILL + resume and 2-process DDP (slow); the learning proof (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from clip_family.model import ClipFamilyModel
from feature_extraction.tiny import make_hf_text_encoder, make_openai_clip
from foundations.config import from_dict
from foundations.errors import UserError
from multilingual.config import DistillConfig
from multilingual.model import MCLIP
from multilingual.teacher import load_teacher
from multilingual.training import DistillTask, build_task, train
from test_clip_train import weights  # the one reader of a checkpoint's weights
from train_helpers import run_train
from vlt5r.main import main

PAIRS = [("a red ring", "ku tomo vela"), ("a blue ring", "ku tomo sira"), ("a red cross", "ku dari vela"),
         ("a green square", "ku pemo lunu"), ("a blue cross", "ku dari sira"), ("a green ring", "ku tomo lunu"),
         ("a red square", "ku pemo vela"), ("a blue square", "ku pemo sira")]


def write_pairs(path: Path, pairs: list[tuple[str, str]] = PAIRS, lang: str = "xx") -> Path:
    path.write_text("".join(json.dumps({"english": e, "foreign": f, "lang": lang}) + "\n" for e, f in pairs))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("distill")
    return {"pairs": write_pairs(root / "pairs.jsonl"), "val": write_pairs(root / "val.jsonl", PAIRS[:3]),
            "student": make_hf_text_encoder(root / "student", [f for _, f in PAIRS])}


def config(out: Path, world: dict[str, Path], teacher: Path | str, **sections: dict) -> DistillConfig:
    data = {"model": {"teacher": str(teacher), "student": str(world["student"])},
            "data": {"train_data": [str(world["pairs"])], "batch_size": 4},
            "optim": {"lr": 1e-3, "schedule": "constant", "warmup_ratio": 0.0},
            "loop": {"out": str(out), "epochs": 1, "progress": False, "tensorboard": False, "curves": False,
                     "threads": 1}}
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return from_dict(DistillConfig, data)


def test_teacher_text_equals_encode_text_and_its_layers_end_at_the_embedding(tiny_vit_pt: Path,
                                                                             tiny_hf_clip_dir: Path) -> None:
    import clip
    from transformers import CLIPModel, CLIPTokenizer

    texts = ["a red ring", "a blue square on the left", "x"]
    teacher = load_teacher(str(tiny_vit_pt)).text
    reference, _ = clip.load(str(tiny_vit_pt), device="cpu", jit=False)
    with torch.no_grad():
        expected = reference.encode_text(clip.tokenize(texts)).float()
        assert torch.allclose(teacher.encode(texts), expected, atol=1e-5)
        tokens = teacher.tokenize(texts)
        layers = teacher.layers(tokens)  # the end-of-text state of each block
        assert len(layers) == teacher.depth == 2 and layers[0].shape == (3, 64)
        final = teacher.text_projection(teacher.text.ln_final(layers[-1]))
        assert torch.allclose(final, teacher.embed(tokens), atol=1e-6)

    hf = load_teacher(f"hf:{tiny_hf_clip_dir}")
    model = CLIPModel.from_pretrained(tiny_hf_clip_dir).eval()
    with torch.no_grad():
        tokens = CLIPTokenizer.from_pretrained(tiny_hf_clip_dir)(texts, padding=True, return_tensors="pt")
        expected = model.get_text_features(**tokens).pooler_output
        assert torch.allclose(hf.text.encode(texts), expected, atol=1e-6)
        ours = hf.text.tokenize(texts)
        last = hf.text.layers(ours)[-1]
        assert torch.allclose(hf.text.text_projection(model.text_model.final_layer_norm(last)), expected, atol=1e-5)
    assert hf.embed_dim == 36 and hf.image.kind == "hf"


@pytest.mark.parametrize("kind", ["openai", "hf"])
def test_mclip_keeps_the_teacher_image_tower_and_round_trips(tmp_path: Path, world: dict[str, Path], kind: str,
                                                            tiny_vit_pt: Path, tiny_hf_clip_dir: Path) -> None:
    spec = str(tiny_vit_pt) if kind == "openai" else f"hf:{tiny_hf_clip_dir}"
    torch.manual_seed(0)
    model = MCLIP.from_teacher(load_teacher(spec), str(world["student"]), "cls", 16, {"languages": ["xx"]}).eval()
    pixels = torch.randn(2, 3, 32, 32)
    if kind == "openai":
        expected = ClipFamilyModel.from_openai(tiny_vit_pt).eval().encode_image(pixels)
    else:
        from transformers import CLIPModel

        with torch.no_grad():
            expected = CLIPModel.from_pretrained(tiny_hf_clip_dir).get_image_features(pixel_values=pixels).pooler_output
    assert torch.allclose(model.encode_image(pixels), expected, atol=1e-5)
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"text", "text_projection"}
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".pooler." in n)  # unused by pooling
    text = model.encode_text(["ku tomo vela", "ku pemo"])
    assert text.shape == (2, model.config.embed_dim)

    model.save_pretrained(tmp_path / "m")
    again = MCLIP.from_pretrained(tmp_path / "m").eval()
    assert again.info == {"teacher": spec, "student": str(world["student"]), "pooling": "cls", "languages": ["xx"]}
    assert torch.equal(again.encode_text(["ku tomo vela", "ku pemo"]), text)
    assert torch.equal(again.encode_image(pixels), model.encode_image(pixels))
    assert (tmp_path / "m/text_tower/tokenizer.json").is_file()


def test_an_openai_model_name_is_its_released_weights(tiny_vit_pt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--teacher ViT-B/32`` is the released model (the file `vlt5r extract --backbone ViT-B/32` reads), never a
    random-weight model of that architecture; the feature-file check hashes that same file."""
    from feature_extraction import openai_backbone
    from multilingual.teacher import teacher_weights_file

    monkeypatch.setattr(openai_backbone, "openai_weights", lambda name, flag: (str(tiny_vit_pt), None))
    teacher = load_teacher("ViT-B/32")
    released = ClipFamilyModel.from_openai(tiny_vit_pt).state_dict()
    assert teacher.image_state.keys() and all(torch.equal(v, released[k]) for k, v in teacher.image_state.items())
    assert teacher_weights_file("ViT-B/32") == tiny_vit_pt


def test_extract_with_an_mclip_dir_feeds_the_kb_loader(tmp_path: Path, world: dict[str, Path],
                                                       tiny_vit_pt: Path) -> None:
    from PIL import Image

    from retrieval.training.data import load_kb

    torch.manual_seed(1)
    model = MCLIP.from_teacher(load_teacher(str(tiny_vit_pt)), str(world["student"]))
    model.save_pretrained(tmp_path / "mclip")
    kb = [{"id": f"E{i}", "title": f, "text": f"{f} ku"} for i, (_, f) in enumerate(PAIRS)]
    (tmp_path / "kb.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kb))
    (tmp_path / "texts.jsonl").write_text("".join(json.dumps({"id": r["id"], "text": r["text"]}) + "\n"
                                                  for r in kb))
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 36, 3), dtype=np.uint8)).save(images / f"im{i}.png")
    for flags in (["--texts", str(tmp_path / "texts.jsonl"), "--out", str(tmp_path / "kb_text.h5")],
                  ["--images", str(images), "--out", str(tmp_path / "images.h5")]):
        assert main(["extract", *flags, "--backbone", str(tmp_path / "mclip"), "--dtype", "float32",
                     "--device", "cpu", "--no-progress"]) == 0
    model = MCLIP.from_pretrained(tmp_path / "mclip").eval()
    with h5py.File(tmp_path / "kb_text.h5", "r") as f:
        assert f.attrs["backbone_family"] == "clip-family" and "XLMRobertaTokenizer" in f.attrs["tokenization"]
        fc = f["fc"][:]
    assert np.allclose(fc, model.encode_text([r["text"] for r in kb]).numpy(), atol=1e-5)
    with h5py.File(tmp_path / "images.h5", "r") as f:
        assert f["grid"].shape == (3, 16, 128)  # the teacher ViT's 4x4 patch tokens of width 128
        assert np.allclose(f["fc"][:], model.encode_image(sorted(images.glob("*.png"))).numpy(), atol=1e-5)
    vectors = load_kb(str(tmp_path / "kb.jsonl"), None, str(tmp_path / "kb_text.h5"), "text")
    assert vectors.ids == [r["id"] for r in kb]
    assert np.allclose(vectors.vectors, fc / np.linalg.norm(fc, axis=1, keepdims=True), atol=1e-6)


def first_losses(task: DistillTask, n: int = 2) -> list[float]:
    task.train()
    torch.manual_seed(0)  # the same dropout masks in the student
    return [task.training_forward(b)[0].item() for b in task.train_batches(0, 0, n)]


def test_teacher_features_give_the_same_first_step_loss(tmp_path: Path, world: dict[str, Path],
                                                        tiny_vit_pt: Path) -> None:
    assert main(["distill", "--write-english", str(tmp_path / "en.jsonl"), "--train-data", str(world["pairs"]),
                 "--val-data", str(world["val"])]) == 0
    assert main(["extract", "--texts", str(tmp_path / "en.jsonl"), "--out", str(tmp_path / "teacher.h5"),
                 "--backbone", str(tiny_vit_pt), "--dtype", "float32", "--device", "cpu", "--no-progress"]) == 0
    for loss in ("mse", "cl"):
        running = build_task(config(tmp_path / "a", world, tiny_vit_pt, loss={"loss": loss}), _env())
        stored = build_task(config(tmp_path / "b", world, tiny_vit_pt, loss={"loss": loss},
                                   data={"teacher_features": str(tmp_path / "teacher.h5")}), _env())
        assert stored.teacher is None and running.teacher is not None
        stored.model.load_state_dict(running.model.state_dict())
        assert first_losses(stored) == pytest.approx(first_losses(running), abs=1e-6)

    written = tmp_path / "auto.h5"  # absent: written by the extraction pipeline, then read
    task = build_task(config(tmp_path / "c", world, tiny_vit_pt, data={"teacher_features": str(written),
                                                                        "val_data": [str(world["val"])]}), _env())
    assert written.is_file() and len(task.store) == len(PAIRS)  # type: ignore[arg-type]
    other = make_openai_clip(tmp_path / "other.pt", seed=1)
    with pytest.raises(UserError, match="not the teacher"):
        build_task(config(tmp_path / "d", world, other, data={"teacher_features": str(written)}), _env())
    with pytest.raises(UserError, match="lacks 1 English"):
        extra = write_pairs(tmp_path / "more.jsonl", PAIRS + [("a pink ring", "ku tomo rosa")])
        build_task(config(tmp_path / "e", world, tiny_vit_pt, data={"teacher_features": str(written),
                                                                     "train_data": [str(extra)]}), _env())


def _env():  # one process on the CPU
    import engine

    return engine.DistEnv()


def test_layer_kd_trains_its_maps_and_keeps_them_for_resume(tmp_path: Path, world: dict[str, Path],
                                                            tiny_vit_pt: Path) -> None:
    cfg = config(tmp_path / "run", world, tiny_vit_pt, model={"layer_kd": True}, loop={"max_steps": 2})
    task = build_task(cfg, _env())
    assert task.pairs == [(1, 1), (2, 2)] and len(task.layer_maps) == 2
    assert [g["name"] for g in task.param_groups()] == ["student", "proj"]
    result = train(cfg)
    assert result.global_step == 2
    state = torch.load(tmp_path / "run/last/training_state.pt", weights_only=True)
    assert set(state["layer_maps"]) == {"0.weight", "1.weight"}
    records = [json.loads(line) for line in (tmp_path / "run/log.jsonl").read_text().splitlines()]
    assert all("loss_layer_kd" in r for r in records if r["kind"] == "train")
    with pytest.raises(Exception, match="--layer-kd needs"):
        config(tmp_path / "x", world, tiny_vit_pt, model={"layer_kd": True},
               data={"teacher_features": str(tmp_path / "t.h5")})


def test_cli_distills_then_evaluates_xtd(tmp_path: Path, world: dict[str, Path], tiny_vit_pt: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    images = tmp_path / "xtd"
    images.mkdir()
    rng = np.random.default_rng(0)
    captions = []
    for i, (english, foreign) in enumerate(PAIRS[:4]):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(images / f"im{i}.png")
        captions += [{"image": f"im{i}", "lang": "en", "text": english}, {"image": f"im{i}", "lang": "xx",
                                                                           "text": foreign}]
    (tmp_path / "captions.jsonl").write_text("".join(json.dumps(c) + "\n" for c in captions) + "{broken\n")
    out = tmp_path / "run"
    flags = ["--teacher", str(tiny_vit_pt), "--student", str(world["student"]), "--train-data", str(world["pairs"]),
             "--val-data", str(world["val"]), "--batch-size", "4", "--max-steps", "2", "--loss", "cl", "--alpha",
             "0.1", "--xtd-images", str(images), "--xtd-captions", str(tmp_path / "captions.jsonl"),
             "--no-progress", "--no-tensorboard", "--threads", "1", "--precision", "bf16"]
    assert main(["distill", *flags, "--out", str(out)]) == 0
    for name in ("config.json", "log.jsonl", "curves.png", "last/mclip.json", "best/model.safetensors", "xtd.json",
                 "xtd.md"):
        assert (out / name).exists(), name
    dev = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if '"dev"' in line][-1]
    assert {"val_cosine", "val_t2t_r@1", "xtd_xx_t2i_r@10", "xtd_teacher_en_t2i_r@10"} <= set(dev)
    xtd = json.loads((out / "xtd.json").read_text())
    assert xtd["captions"] == {"en": 4, "xx": 4} and xtd["images"] == 4 and "en" in xtd["teacher"]
    capsys.readouterr()
    assert main(["distill", "--evaluate", str(out / "best"), "--xtd-images", str(images), "--xtd-captions",
                 str(tmp_path / "captions.jsonl"), "--out", str(tmp_path / "eval")]) == 0
    assert "| mCLIP | xx | 4 |" in capsys.readouterr().out
    again = json.loads((tmp_path / "eval/xtd.json").read_text())
    assert again["teacher"] == xtd["teacher"]  # the teacher's English row does not depend on the student


@pytest.mark.slow
def test_sigkill_and_resume_ends_at_the_same_weights(tmp_path: Path, world: dict[str, Path],
                                                     tiny_vit_pt: Path) -> None:
    flags = ["--teacher", str(tiny_vit_pt), "--student", str(world["student"]), "--train-data", str(world["pairs"]),
             "--batch-size", "4", "--epochs", "3", "--save-every", "2", "--lr", "1e-3", "--no-curves",
             "--loss", "cl", "--alpha", "0.5", "--layer-kd"]
    whole = run_train([*flags, "--out", str(tmp_path / "a")], command="distill")
    assert whole.returncode == 0, whole.stderr[-2000:]
    killed = run_train([*flags, "--out", str(tmp_path / "b")], env={"VLT5_TRAIN_TEST_KILL": "after_save:4"},
                       command="distill")
    assert killed.returncode != 0
    resumed = run_train([*flags, "--out", str(tmp_path / "b")], command="distill")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = weights(tmp_path / "a/last"), weights(tmp_path / "b/last")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    maps = [torch.load(tmp_path / f"{r}/last/training_state.pt", weights_only=True)["layer_maps"] for r in "ab"]
    assert all(torch.equal(maps[0][k], maps[1][k]) for k in maps[0])


@pytest.mark.slow
def test_ddp_two_process_first_step_equals_single_process(tmp_path: Path, world: dict[str, Path],
                                                          tiny_vit_pt: Path) -> None:
    # no dropout: the ranks draw other masks than the single process (their seeds differ), the maths must not
    student = make_hf_text_encoder(tmp_path / "student", [f for _, f in PAIRS], dropout=0.0)
    flags = ["--teacher", str(tiny_vit_pt), "--student", str(student), "--train-data", str(world["pairs"]),
             "--batch-size", "8", "--max-steps", "1", "--no-curves", "--lr", "1e-3", "--device", "cpu",
             "--loss", "cl", "--alpha", "0.3", "--eps", "1e-4"]  # eps: see test_clip_train's DDP test
    env = {"GLOO_SOCKET_IFNAME": "lo"}
    single = run_train([*flags, "--out", str(tmp_path / "one")], env=env, command="distill")
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = run_train([*flags, "--out", str(tmp_path / "two")], env=env, torchrun=2, command="distill")
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a, b = weights(tmp_path / "one/last"), weights(tmp_path / "two/last")
    assert torch.equal(weights(tmp_path / "one/init")["text_projection.weight"],
                       weights(tmp_path / "two/init")["text_projection.weight"])
    assert not torch.equal(a["text_projection.weight"], weights(tmp_path / "one/init")["text_projection.weight"])
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= 1e-6, worst


def test_transformers_clip_teacher_with_layer_kd_then_extraction(tmp_path: Path, world: dict[str, Path],
                                                                 tiny_hf_clip_dir: Path) -> None:
    from PIL import Image
    from transformers import CLIPModel

    cfg = config(tmp_path / "run", world, f"hf:{tiny_hf_clip_dir}", model={"layer_kd": True, "layer_pairs": ["2:1"]},
                 loop={"max_steps": 1})
    assert train(cfg).global_step == 1
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        pixels = np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{i}.png")
    assert main(["extract", "--images", str(images), "--out", str(tmp_path / "f.h5"), "--backbone",
                 str(tmp_path / "run/last"), "--dtype", "float32", "--device", "cpu", "--no-progress"]) == 0
    clip_model = CLIPModel.from_pretrained(tiny_hf_clip_dir).eval()
    pixels = torch.stack([MCLIP.from_pretrained(tmp_path / "run/last").processor(Image.open(p).convert("RGB"))
                          for p in sorted(images.glob("*.png"))])
    with torch.no_grad(), h5py.File(tmp_path / "f.h5", "r") as f:
        out = clip_model.get_image_features(pixel_values=pixels)  # the teacher's own image features and patches
        assert np.allclose(f["fc"][:], out.pooler_output.numpy(), atol=1e-5)
        assert np.allclose(f["grid"][:], out.last_hidden_state[:, 1:].numpy(), atol=1e-5)
