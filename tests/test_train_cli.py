"""``vlt5r train`` end to end on features from the real extraction CLI (tiny OpenAI-format CLIP), every init kind,
bf16 on the CPU, the baselines CLI, ``curves.png``, and one-line errors (exit 1 for the user's files and values,
exit 2 for bad flags)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from train_helpers import FC_DIM, log_records, make_data, train_args

from feature_extraction.clip_prepro_feats import main as extract_main
from feature_extraction.tiny import TINY_VIT, make_openai_clip
from retrieval.demo.task import DemoTaskConfig, write_demo_task
from vlt5r.drivers.train import main
from vlt5r.drivers.baselines import main as baselines_main
from vlt5 import QueryEncoder
from vlt5.tiny import make_tiny_t5_dir, make_tiny_tokenizer_dir, make_tiny_vlt5_checkpoint

METRICS = {"mrr@10", "recall@1", "recall@5", "recall@10"}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_data(tmp_path_factory.mktemp("cli"))


@pytest.fixture(scope="module")
def extracted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Demo task + features written by clip_prepro_feats with a tiny ViT CLIP (32 px, 4x4 grid, embedding 48)."""
    root = tmp_path_factory.mktemp("extracted")
    paths = write_demo_task(root, DemoTaskConfig(train_scenes=8, dev_scenes=3, test_scenes=3, image_size=32,
                                                         questions_per_scene=2))
    clip = make_openai_clip(root / "clip.pt", TINY_VIT)
    common = ["--backbone", str(clip), "--num-workers", "0", "--threads", "1", "--batch-size", "32",
              "--no-progress", "--quiet", "--dtype", "float32"]
    for flag, src, out in [("--images", paths["kb_images"], "kb.h5"), ("--texts", paths["kb"], "kb_text.h5"),
                           ("--images", paths["scenes"], "scenes.h5"), ("--texts", paths["questions"], "q.h5")]:
        assert extract_main([flag, str(src), "--out", str(root / out), *common]) == 0
    paths["tokenizer"] = make_tiny_tokenizer_dir(root / "tokenizer")
    return paths


def test_end_to_end_on_extracted_features(extracted: dict[str, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    root, run = extracted["kb"].parent, tmp_path / "run"
    args = ["--kb", str(extracted["kb"]), "--kb-features", str(root / "kb.h5"), "--kb-text-features",
            str(root / "kb_text.h5"), "--kb-side", "mean", "--train-queries", str(extracted["train"]),
            "--dev-queries", str(extracted["dev"]), "--test-queries", str(extracted["test"]),
            "--query-features", str(root / "scenes.h5"), "--question-features", str(root / "q.h5"),
            "--tokenizer", str(extracted["tokenizer"]), "--d-model", "32", "--num-layers", "1", "--num-heads", "2",
            "--d-kv", "8", "--d-ff", "40", "--fc-token", "--boxes", "grid_cells", "--method", "houlsby",
            "--policy", "full", "--batch-size", "4", "--epochs", "2", "--eval-every", "3", "--threads", "1",
            "--no-progress", "--out", str(run)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"run directory: {run}" in out and str(run / "comparison.json") in out
    for name in ("config.json", "log.jsonl", "baselines.json", "comparison.json", "result.json"):
        assert (run / name).is_file(), name
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    kinds = {r["kind"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines())}
    assert kinds == {"train", "dev", "test"}
    comparison = json.loads((run / "comparison.json").read_text())
    assert list(comparison) == ["clip_image", "clip_text", "joint_untrained", "joint", "joint_shuffled_questions",
                                "joint_shuffled_images", "generic_reference"]
    assert (run / "reference" / "best" / "config.json").is_file()  # the reference is a run of its own
    assert all(set(v) == METRICS for v in comparison.values())
    for name in ("init", "last", "best"):
        encoder = QueryEncoder.from_pretrained(run / name)  # self-describing: no flags
        assert encoder.config.proj_dim == 48 and encoder.config.adapters[0]["method"] == "houlsby"
    for name in ("last", "best"):
        assert json.loads((run / name / "train_config.json").read_text())["model"]["adapter"]["method"] == "houlsby"
        assert "dev" in json.loads((run / name / "metrics.json").read_text())
    # the baselines CLI on the same split and encoder reproduces the driver's table
    table = tmp_path / "table.json"
    assert baselines_main(["--kb", str(extracted["kb"]), "--kb-features", str(root / "kb.h5"), "--kb-text-features",
                           str(root / "kb_text.h5"), "--kb-side", "mean", "--queries", str(extracted["test"]),
                           "--query-features", str(root / "scenes.h5"), "--question-features", str(root / "q.h5"),
                           "--encoder", f"joint_untrained={run / 'init'}", "--encoder", f"joint={run / 'best'}",
                           "--json", str(table)]) == 0
    again = json.loads(table.read_text())
    assert list(again) == ["clip_image", "clip_text", "joint_untrained", "joint"]  # the rows it can compute
    for name, metrics in again.items():
        assert comparison[name] == pytest.approx(metrics, abs=1e-6), name


@pytest.mark.parametrize("init", ["t5", "vlt5", "encoder"])
def test_pretrained_inits_and_bf16(data: dict[str, Path], tmp_path: Path, init: str) -> None:
    if init == "t5":
        spec = f"t5:{make_tiny_t5_dir(tmp_path / 't5')}"
    elif init == "vlt5":
        spec = f"vlt5:{make_tiny_vlt5_checkpoint(tmp_path / 'Epoch30.pth')}"  # feat_dim 16 = the grid's width
    else:
        assert main(train_args(data, tmp_path / "first", "--max-steps", "1")) == 0
        spec = f"encoder:{tmp_path / 'first' / 'last'}"
    run = tmp_path / "run"
    assert main(train_args(data, run, "--init", spec, "--method", "lora" if init != "encoder" else "none",
                           "--precision", "bf16", "--max-steps", "2", "--log-every", "1")) == 0
    assert [r["step"] for r in log_records(run, "train")] == [1, 2]
    assert QueryEncoder.from_pretrained(run / "last").config.proj_dim == FC_DIM


def test_errors_are_one_line_with_exit_1_or_2(data: dict[str, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(train_args(data, run, "--max-steps", "1")) == 0
    capsys.readouterr()
    cases = [  # (flags, message, exit status: 1 = the user's files or values, 2 = the command line)
        (["--kb", str(tmp_path / "missing.jsonl")], "missing.jsonl", 1),
        (["--query-features", str(tmp_path / "none.h5")], "none.h5", 1),
        (["--lr-head", "fast"], "expects float", 2),
        (["--precision", "fp64"], "invalid choice", 2),
        (["--proj-dim", "7"], "proj_dim 7 != KB embedding dim 12", 1),
        (["--precision", "fp16"], "fp16 needs a CUDA device", 1),
        (["--resume", "no"], "already holds a checkpoint", 1),
        (["--init", f"t5:{tmp_path / 'no_t5'}"], "no_t5", 1),
        (["--batch-size", "1000"], "queries make no optimizer step", 1),
        (["--kb-side", "text"], "needs --kb-text-features", 2),
        (["--unfreeze-at", "decoder@epoch:1"], "unknown parameter groups ['decoder']", 1),
    ]
    for extra, message, status in cases:
        if "fp16" in extra and torch.cuda.is_available():
            continue  # fp16 is fine there
        out = run if "--resume" in extra else tmp_path / "fresh"
        assert main(train_args(data, out, *extra)) == status, extra
        err = capsys.readouterr().err.strip().splitlines()
        errors = [line for line in err if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0], (extra, err)
        assert not any("Traceback" in line for line in err)
    assert main(train_args(data, tmp_path / "other", "--resume", "yes")) == 1
    assert "no last checkpoint" in capsys.readouterr().err
