"""`vlt5r eval` on a model trained by `vlt5r clip-train` (scikit-learn's digits): the zero-shot classification
accuracy equals the trainer's own evaluation; plus the layering of the evaluation room."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_layering import (  # the project's own static import check
    import_graph,
    module_files,
)

from vlt5r.main import main

CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def by_class(held_out: Path, out: Path) -> Path:
    """The held-out stem-paired folders ("a handwritten seven") as one folder per class."""
    for caption in sorted((held_out / "captions").glob("*.txt")):
        name = caption.read_text().split()[-1]
        (out / name).mkdir(parents=True, exist_ok=True)
        shutil.copy(held_out / "images" / f"{caption.stem}.png", out / name / f"{caption.stem}.png")
    return out


@pytest.mark.slow
def test_eval_matches_clip_train_zero_shot_accuracy(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    from clip_family.digits import write_digits_folders

    train, held_out = write_digits_folders(tmp_path / "digits")
    run = tmp_path / "run"
    assert main(["clip-train", "--model-name", "tiny", "--train-data", str(train), "--val-data", str(held_out),
                 "--classes", *CLASSES, "--templates", "a handwritten {}", "--out", str(run), "--max-steps", "12",
                 "--no-progress", "--no-tensorboard", "--no-curves", "--no-save-init", "--device", "cpu"]) == 0
    theirs = json.loads((run / "best" / "metrics.json").read_text())["dev"]
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(run / "best"), "--task", "classification",
                 "--data", str(by_class(held_out, tmp_path / "by_class")), "--templates", "a handwritten {}",
                 "--out", str(out), "--quiet"]) == 0
    record = json.loads(out.read_text())["results"][0]
    assert record["counts"]["scored"] == theirs["zeroshot_n"] == 497
    assert record["metrics"]["acc1"] == pytest.approx(theirs["zeroshot_accuracy"], abs=1e-6)
    assert record["scorer"]["scorer"] == "EncoderScorer" and record["precision"] == "fp32"


def test_evaluation_room_layering(monkeypatch: pytest.MonkeyPatch) -> None:
    import test_layering

    monkeypatch.setattr(test_layering, "PACKAGES", (*test_layering.PACKAGES, "evaluation", "clip_family"))
    files, graph = module_files(), import_graph()
    ours = {m for m in graph if m.split(".")[0] == "evaluation"}
    assert ours and "evaluation.scorer" in ours
    for module in ours:
        assert not {m for m in graph[module] if m.split(".")[0] == "vlt5r"}, module  # rooms never import drivers
        assert "argparse" not in files[module].read_text(), module  # no command-line parsing in a room

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        return any(n == target or (n not in seen and not seen.add(n) and reaches(n, target, seen))
                   for n in graph.get(start, ()))

    for module in ours:
        assert not reaches(module, module, set()), f"import cycle through {module}"
