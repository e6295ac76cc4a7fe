"""CLIP-family training on the engine: LiT locking, freeze-then-unfreeze with group LRs, the CLI end to end,
exact resume after a SIGKILL, and the digits learning proof (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import free_port

from clip_family.data import open_dataset
from clip_family.digits import NAMES, digits_config, write_digits_folders
from clip_family.model import ClipFamilyModel, build
from clip_family.training import CLIPTask, ClipTrainConfig, train
from engine.optim import FreezeSchedule
from foundations.config import from_dict

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_digits_folders(tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """48 training scans and 20 held out."""
    root = tmp_path_factory.mktemp("small")
    write_digits_folders(root / "all", n_train=48)
    held = sorted((root / "all/held_out/images").glob("*.png"))[:20]
    for path in held:
        (root / "val/images").mkdir(parents=True, exist_ok=True)
        (root / "val/captions").mkdir(parents=True, exist_ok=True)
        (root / "val/images" / path.name).write_bytes(path.read_bytes())
        caption = path.parent.parent / "captions" / f"{path.stem}.txt"
        (root / "val/captions" / caption.name).write_text(caption.read_text())
    return root / "all/train", root / "val"


def config(out: Path, train_dir: Path, val_dir: Path | None, **overrides: object) -> ClipTrainConfig:
    data = {"model": {"model_name": "tiny", "variant": "CLIP"},
            "data": {"train_data": str(train_dir), "val_data": str(val_dir) if val_dir else None, "batch_size": 8,
                     "cache_images": True},
            "optim": {"lr": 1e-3, "schedule": "constant", "warmup_ratio": 0.0},
            "loop": {"out": str(out), "epochs": 1, "progress": False, "tensorboard": False, "curves": False,
                     "threads": 1},
            "eval": {"classes": list(NAMES), "templates": ["a handwritten {}"]}}
    for key, value in overrides.items():
        section, name = key.split("__")
        data[section][name] = value  # type: ignore[index]
    return from_dict(ClipTrainConfig, data)


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def test_lit_trains_exactly_the_unlocked_parameters(tmp_path: Path, small: tuple[Path, Path]) -> None:
    cfg = config(tmp_path / "run", small[0], None, model__variant="LiT", loop__max_steps=2)
    train_data = open_dataset(str(small[0]))
    task = CLIPTask(build("tiny", "LiT"), train_data, None, cfg)
    in_groups = {id(p) for g in task.param_groups() for p in g["params"]}
    unlocked = {id(p) for n, p in task.model.named_parameters() if not n.startswith("visual.")}
    assert in_groups == unlocked == {id(p) for p in task.model.parameters() if p.requires_grad}
    assert [g["name"] for g in task.param_groups()] == ["text", "proj", "logit"]
    train(cfg)
    before, after = weights(tmp_path / "run/init"), weights(tmp_path / "run/last")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and not any(k.startswith("visual.") for k in changed)
    assert "text_projection.weight" in changed and any(k.startswith("text.") for k in changed)


def test_freeze_text_then_unfreeze_with_its_lr(tmp_path: Path, small: tuple[Path, Path]) -> None:
    cfg = config(tmp_path / "run", small[0], small[1], optim__freeze_text_epochs=1, optim__lr_text=1e-4,
                 optim__lr_proj=3e-3)
    assert cfg.optim.unfreeze_at == ("text@epoch:1",)
    task = CLIPTask(build("tiny", "CLIP"), open_dataset(str(small[0])), None, cfg)
    lrs = {g["name"]: g["lr"] for g in task.param_groups()}
    assert lrs == {"image": 1e-3, "text": 1e-4, "proj": 3e-3, "logit": 1e-3}
    schedule = FreezeSchedule(cfg.optim, list(lrs))
    assert schedule.frozen(0, 5) == {"text"} and schedule.frozen(1, 6) == set()

    train(cfg)  # epoch 0: the text tower is frozen
    init, first = weights(tmp_path / "run/init"), weights(tmp_path / "run/last")
    text_keys = [k for k in init if k.startswith("text.")]
    assert all(torch.equal(init[k], first[k]) for k in text_keys)
    assert not torch.equal(init["text_projection.weight"], first["text_projection.weight"])
    assert not all(torch.equal(init[k], first[k]) for k in init if k.startswith("visual."))

    cfg.loop.epochs = 2  # resume into epoch 1: the text tower joins with lr_text
    train(cfg)
    second = weights(tmp_path / "run/last")
    assert not all(torch.equal(first[k], second[k]) for k in text_keys)
    records = [json.loads(line) for line in (tmp_path / "run/log.jsonl").read_text().splitlines()]
    trains = [r for r in records if r["kind"] == "train"]
    assert {r["lr_text"] for r in trains if r["epoch"] == 0} == {0.0}
    assert {r["lr_text"] for r in trains if r["epoch"] == 1} == {1e-4}
    assert {r["lr_proj"] for r in trains} == {3e-3}
    dev = [r for r in records if r["kind"] == "dev"]
    assert len(dev) == 2 and {"zeroshot_accuracy", "i2t_r@1", "t2i_r@10", "mean_recall"} <= set(dev[-1])
    assert all("temperature" in r for r in trains)


def _write_csv(root: Path, train_dir: Path) -> Path:
    lines = ["filepath,title"]
    for image in sorted((train_dir / "images").glob("*.png")):
        caption = (train_dir / "captions" / f"{image.stem}.txt").read_text().strip()
        lines.append(f"{image},{caption}")
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    return root / "train.csv"


def test_cli_siglip_from_csv_and_export(tmp_path: Path, small: tuple[Path, Path]) -> None:
    from vlt5r.main import main

    csv = _write_csv(tmp_path, small[0])
    out = tmp_path / "run"
    code = main(["clip-train", "--model-name", "tiny", "--variant", "SigLIP", "--train-data", str(csv),
                 "--val-data", str(small[1]), "--batch-size", "16", "--max-steps", "2", "--out", str(out),
                 "--no-progress", "--no-tensorboard", "--threads", "1", "--precision", "bf16",
                 "--export-openai", str(tmp_path / "m.pt"), "--export-transformers", str(tmp_path / "hf")])
    assert code == 0
    for name in ("config.json", "log.jsonl", "curves.png", "last/model.safetensors", "last/config.json",
                 "best/trainer_state.json"):
        assert (out / name).exists(), name
    model = ClipFamilyModel.from_pretrained(out / "last")
    assert model.config.variant == "SigLIP" and model.logit_bias is not None
    assert (tmp_path / "m.pt").is_file() and (tmp_path / "hf/model.safetensors").is_file()
    assert main(["clip-train", "--train-data", str(csv), "--out", str(tmp_path / "r3"), "--export-transformers",
                 str(tmp_path / "hf")]) == 2  # an existing export is refused before training
    assert not (tmp_path / "r3").exists()
    assert main(["clip-train", "--train-data", str(tmp_path / "nope"), "--out", str(tmp_path / "r2")]) == 1


@pytest.mark.slow
def test_sigkill_and_resume_ends_at_the_same_weights(tmp_path: Path, small: tuple[Path, Path]) -> None:
    flags = ["--model-name", "tiny", "--train-data", str(small[0]), "--batch-size", "8", "--epochs", "2",
             "--cache-images", "--no-progress", "--no-tensorboard", "--no-curves", "--threads", "1",
             "--save-every", "2", "--lr", "1e-3"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    whole = subprocess.run([sys.executable, "-m", "vlt5r", "clip-train", *flags, "--out", str(tmp_path / "a")],
                           env=env, capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr[-2000:]
    killed = subprocess.run([sys.executable, "-m", "vlt5r", "clip-train", *flags, "--out", str(tmp_path / "b")],
                            env={**env, "VLT5_TRAIN_TEST_KILL": "after_save:8"}, capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode != 0
    resumed = subprocess.run([sys.executable, "-m", "vlt5r", "clip-train", *flags, "--out", str(tmp_path / "b")],
                             env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = weights(tmp_path / "a/last"), weights(tmp_path / "b/last")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_digits_zero_shot_from_scratch(tmp_path: Path, digits: tuple[Path, Path]) -> None:
    """The learning proof: a tiny OpenAI-architecture CLIP trained with `vlt5r clip-train` on the first 1,300
    scans reaches >= 0.90 zero-shot accuracy on the 497 held-out scans."""
    from vlt5r.main import main

    (tmp_path / "digits.json").write_text(json.dumps(digits_config()))
    start = time.perf_counter()
    code = main(["clip-train", "--model-name", str(tmp_path / "digits.json"), "--train-data", str(digits[0]),
                 "--val-data", str(digits[1]), "--classes", *NAMES, "--templates", "a handwritten {}",
                 "--batch-size", "32", "--epochs", "4", "--lr", "2e-3", "--cache-images", "--out",
                 str(tmp_path / "run"), "--no-progress", "--no-tensorboard", "--threads", "2", "--no-save-init"])
    seconds = time.perf_counter() - start
    assert code == 0
    dev = [json.loads(line) for line in (tmp_path / "run/log.jsonl").read_text().splitlines()]
    accuracy = [r for r in dev if r["kind"] == "dev"][-1]["zeroshot_accuracy"]
    print(f"digits zero-shot accuracy {accuracy:.4f} after {seconds:.0f} s")
    assert accuracy >= 0.90
    assert seconds < 600  # ≤ 3 minutes on 2 free cores; generous here for shared machines


@pytest.mark.slow
def test_ddp_two_process_first_step_equals_single_process(tmp_path: Path, small: tuple[Path, Path]) -> None:
    flags = ["--model-name", "tiny", "--train-data", str(small[0]), "--batch-size", "16", "--max-steps", "1",
             "--no-progress", "--no-tensorboard", "--no-curves", "--threads", "1", "--lr", "1e-3", "--device", "cpu",
             "--eps", "1e-4"]
    # The attention key bias has an exactly-zero gradient (softmax ignores it): AdamW's first step with a tiny eps
    # turns its rounding noise (~1e-10) into ±lr. A larger eps keeps the step a smooth function of the gradient.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "vlt5r", "clip-train", *flags, "--out", str(tmp_path / "one")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          str(free_port()), "-m", "vlt5r", "clip-train", *flags, "--out", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a, b = weights(tmp_path / "one/last"), weights(tmp_path / "two/last")
    assert torch.equal(weights(tmp_path / "one/init")["text_projection.weight"],
                       weights(tmp_path / "two/init")["text_projection.weight"])
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= 1e-6, worst


def test_pre_embedding_a_locked_tower_gives_the_same_loss(tmp_path: Path, small: tuple[Path, Path]) -> None:
    data = open_dataset(str(small[0]))
    torch.manual_seed(0)
    model = build("tiny", "SigLiT")
    plain = CLIPTask(model, data, None, config(tmp_path / "a", small[0], None, model__variant="SigLiT"))
    stored = CLIPTask(model, data, None, config(tmp_path / "b", small[0], None, model__variant="SigLiT",
                                                data__pre_embed=True))
    in_file = CLIPTask(model, data, None, config(tmp_path / "c", small[0], None, model__variant="SigLiT",
                                                 data__pre_embed_features=str(tmp_path / "tower.h5")))
    plain.train(), stored.train(), in_file.train()
    for a, b, c in zip(plain.train_batches(0, 0, 2), stored.train_batches(0, 0, 2), in_file.train_batches(0, 0, 2)):
        assert "pixels" not in b and b["tower_output"].shape == (8, 24)
        assert "pixels" not in c and torch.equal(b["tower_output"], c["tower_output"])
        assert torch.allclose(plain.training_forward(a)[0], stored.training_forward(b)[0], atol=1e-6)
        assert torch.allclose(plain.training_forward(a)[0], in_file.training_forward(c)[0], atol=1e-6)
    from feature_extraction.readers import open_features

    with open_features(tmp_path / "tower.h5") as store:  # the extraction layout: ids = image keys, fc = tower output
        assert store.ids == [it.key for it in data.items] and store.attrs["modality"] == "image"
        first = torch.stack([plain.pixels(i, data.items[i]) for i in range(3)])
        with torch.no_grad():
            expected = model.visual.eval()(first)  # (3, 24): the locked tower's own output
        assert torch.allclose(torch.from_numpy(store.get_many(store.ids[:3]).fc), expected, atol=1e-6)
    result = train(config(tmp_path / "run", small[0], None, model__variant="SigLiT", data__pre_embed=True,
                          loop__max_steps=2))
    assert result.global_step == 2
    with pytest.raises(Exception, match="locked image tower"):
        CLIPTask(build("tiny", "CLIP"), data, None, config(tmp_path / "c", small[0], None, data__pre_embed=True))


def test_pre_embed_features_file_is_reused_without_the_tower_and_checked(
        tmp_path: Path, small: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from clip.model import VisionTransformer

    from foundations.errors import UserError

    forward, calls = VisionTransformer.forward, []
    monkeypatch.setattr(VisionTransformer, "forward", lambda self, x: calls.append(len(x)) or forward(self, x))
    path = tmp_path / "tower.h5"

    def run(out: str, train_dir: Path = small[0], **overrides: object) -> None:
        train(config(tmp_path / out, train_dir, None, model__variant="LiT", data__pre_embed_features=str(path),
                     loop__max_steps=2, **overrides))

    run("a")
    assert sum(calls) == 48 and path.is_file()  # every training image through the tower once, then never again
    written = path.stat().st_mtime_ns
    calls.clear()
    run("b")  # the same locked tower (same seed): the file is reused
    assert calls == [] and path.stat().st_mtime_ns == written
    a, b = weights(tmp_path / "a/last"), weights(tmp_path / "b/last")
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(UserError, match="another image tower"):
        run("c", loop__seed=1)  # another initialisation of the tower: refused, not silently used
    with pytest.raises(UserError, match=r"id\(s\) not in this feature file"):
        run("d", small[1])  # images the file does not hold
    assert calls == [] and path.stat().st_mtime_ns == written
