"""The NegCLIP learning proof, end to end through the command line, on the two-coloured-shapes world
(:mod:`clip_family.shapes`): a tiny CLIP trained without negatives (``vlt5r clip-train``) tells a caption from its
swap ("a red square left of a blue circle" vs "a blue square left of a red circle" / "a blue circle left of a red
square", SugarCREPE's swap_att / swap_obj on unseen object pairs) at chance; its image features
(``--export-openai`` then ``vlt5r extract``) and the swaps of its captions are mined (``vlt5r mine-negclip``, the
world's dictionary tagger in place of spaCy); NegCLIP fine-tuning from it (``vlt5r clip-train --negclip``) raises
that accuracy by >= 20 points while image<->text R@5 drops by <= 5 points. A control fine-tuned as long without
negatives stays behind. Numbers and timing: docs/negclip.md."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from clip_family import shapes
from clip_family.shapes import write_shapes_world

BASE_STEPS, FINETUNE_STEPS, BATCH = 300, 200, 32


def dev(run: Path) -> dict[str, float]:
    """The last dev record of a run: swap accuracy (SugarCREPE micro average) and R@5 (mean of both ways)."""
    record = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "dev"][-1]
    return {"swap": record["sugar_crepe/micro_average"], "r5": (record["i2t_r@5"] + record["t2i_r@5"]) / 2}


@pytest.mark.slow
@pytest.mark.heavy  # `make test-heavy`: a learning proof of minutes on 2 cores, outside `make test`'s budget
def test_negclip_finetuning_learns_composition(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from evaluation import perturb
    from vlt5r.main import main

    start = time.perf_counter()
    world = write_shapes_world(tmp_path / "world")
    common = ["--val-data", str(world["val"]), "--batch-size", str(BATCH), "--threads", "1", "--no-progress",
              "--no-tensorboard", "--no-curves", "--no-save-init", "--cache-images", "--epochs", "100",
              "--schedule", "cosine", "--warmup-steps", "10", "--weight-decay", "0.1",
              "--eval-tasks", f"sugar_crepe={world['sugar_crepe']}@{world['images']}"]
    assert main(["clip-train", "--model-name", "tiny", "--train-data", str(world["train"]), "--lr", "2e-3",
                 "--max-steps", str(BASE_STEPS), "--out", str(tmp_path / "base"), *common,
                 "--export-openai", str(tmp_path / "base.pt")]) == 0
    assert main(["extract", "--images", str(world["images"]), "--out", str(tmp_path / "feats.h5"),
                 "--backbone", str(tmp_path / "base.pt"), "--device", "cpu", "--dtype", "float32", "--no-grid",
                 "--threads", "1", "--num-workers", "0", "--no-progress", "--quiet"]) == 0
    monkeypatch.setattr(perturb.SpacyTagger, "__call__", lambda self, text: shapes.tag(text))
    assert main(["mine-negclip", "--captions", str(world["train"]), "--image-features", str(tmp_path / "feats.h5"),
                 "--out", str(tmp_path / "mined.tsv"), "--quiet"]) == 0
    finetune = ["--model-name", str(tmp_path / "base/last"), "--lr", "3e-3", "--max-steps", str(FINETUNE_STEPS),
                *common]
    assert main(["clip-train", "--negclip", "--train-data", str(tmp_path / "mined.tsv"), *finetune,
                 "--out", str(tmp_path / "negclip")]) == 0
    seconds = time.perf_counter() - start
    assert main(["clip-train", "--train-data", str(world["train"]), *finetune, "--out", str(tmp_path / "control")]) == 0
    base, negclip, control = dev(tmp_path / "base"), dev(tmp_path / "negclip"), dev(tmp_path / "control")
    with capsys.disabled():
        print(f"\nshapes world: base {base}, NegCLIP {negclip}, control {control}; base + mining + NegCLIP "
              f"{seconds:.0f} s")
    assert abs(base["swap"] - 0.5) <= 0.1  # a bag of words: chance at telling a caption from its swap
    assert negclip["swap"] >= base["swap"] + 0.20
    assert negclip["r5"] >= base["r5"] - 0.05
    assert negclip["swap"] >= control["swap"] + 0.10  # the negatives did it, not the extra steps
    assert (tmp_path / "negclip/tradeoff.png").is_file()
