"""Hard-negative mining: the mined lists are the top-N non-positives of an exact cosine ranking (checked against
numpy), positives never appear, other fields survive, and training on the mined file runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from train_helpers import FC_DIM, GRID_DIM, GRID_TOKENS, log_records, make_data, train_args

from vlt5r.drivers.mine_negatives import main as mine_main
from retrieval.train import main as train_main
from retrieval.training.config import ModelConfig
from retrieval.training.data import load_kb
from retrieval.training.model import build_encoder

TOP = 5


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_data(tmp_path_factory.mktemp("mine"))


def kb_args(data: dict[str, Path]) -> list[str]:
    return ["--kb", str(data["kb"]), "--kb-features", str(data["kb_features"])]


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def reference_top(query_fc: np.ndarray, kb_fc: np.ndarray, kb_ids: list[str], positives: list[str]) -> list[str]:
    """Top-N by cosine, positives removed, with plain numpy."""
    q = query_fc / np.linalg.norm(query_fc)
    k = kb_fc / np.linalg.norm(kb_fc, axis=1, keepdims=True)
    order = np.argsort(-(k @ q), kind="stable")
    return [kb_ids[i] for i in order if kb_ids[i] not in positives][:TOP]


def test_clip_image_mining_matches_numpy_and_excludes_positives(data: dict[str, Path], tmp_path: Path) -> None:
    import h5py

    out = tmp_path / "mined.jsonl"
    assert mine_main(["--encoder", "clip-image", *kb_args(data), "--queries", str(data["train"]),
                      "--query-features", str(data["query_features"]), "--out", str(out), "--top", str(TOP)]) == 0
    with h5py.File(data["kb_features"]) as f:
        kb_ids, kb_fc = [i.decode() for i in f["ids"][:]], f["fc"][:]
    with h5py.File(data["query_features"]) as f:
        rows = {i.decode(): n for n, i in enumerate(f["ids"][:])}
        scene_fc = f["fc"][:]
    before, after = records(data["train"]), records(out)
    assert [r["id"] for r in after] == [r["id"] for r in before]
    for old, new in zip(before, after):
        assert not set(new["hard_negatives"]) & set(new["positives"])
        assert new["hard_negatives"] == reference_top(scene_fc[rows[old["image"]]], kb_fc, kb_ids, old["positives"])
        assert {k: v for k, v in new.items() if k != "hard_negatives"} == \
            {k: v for k, v in old.items() if k != "hard_negatives"}  # kind, question, ... kept


def test_encoder_and_clip_text_mining_then_training_on_the_mined_file(data: dict[str, Path], tmp_path: Path) -> None:
    kb = load_kb(str(data["kb"]), str(data["kb_features"]), None, "image")
    torch.manual_seed(0)
    encoder = build_encoder(ModelConfig(tokenizer=str(data["tokenizer"]), d_model=24, num_layers=1, num_heads=2,
                                        d_kv=8, d_ff=20), FC_DIM, GRID_TOKENS, GRID_DIM, kb.dim)
    encoder.save_pretrained(tmp_path / "encoder")
    mined = tmp_path / "mined.jsonl"
    assert mine_main(["--encoder", str(tmp_path / "encoder"), *kb_args(data), "--queries", str(data["train"]),
                      "--query-features", str(data["query_features"]), "--out", str(mined), "--top", str(TOP),
                      "--merge"]) == 0
    by_text = tmp_path / "mined_text.jsonl"
    assert mine_main(["--encoder", "clip-text", *kb_args(data), "--queries", str(data["train"]),
                      "--question-features", str(data["question_features"]), "--out", str(by_text)]) == 0
    for path, merged in ((mined, True), (by_text, False)):
        for old, new in zip(records(data["train"]), records(path)):
            negatives = new["hard_negatives"]
            assert not set(negatives) & set(new["positives"]) and len(set(negatives)) == len(negatives)
            if merged:  # mined first, then the old ones not already there
                assert negatives[TOP:] == [n for n in old["hard_negatives"] if n not in negatives[:TOP]]
            else:
                assert len(negatives) == 8
    run = tmp_path / "run"
    args = train_args(data, run, "--max-steps", "3", "--log-every", "1", "--hard-negatives", "-1")
    args[args.index("--train-queries") + 1] = str(mined)
    assert train_main(args) == 0
    steps = log_records(run, "train")
    assert [r["step"] for r in steps] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in steps)


def test_mining_user_errors_are_one_line(data: dict[str, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--queries", str(data["train"]), "--out", str(tmp_path / "x.jsonl")]
    for argv, message in [(["--encoder", "clip-image", *kb_args(data), *base], "needs --query-features"),
                          (["--encoder", "clip-text", *kb_args(data), *base], "--question-features"),
                          (["--encoder", "clip-image", "--kb", str(data["kb"]), *base], "needs --kb-features"),
                          (["--encoder", "clip-image", *kb_args(data), *base, "--top", "0"], "--top")]:
        code = mine_main(argv)
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.startswith("error:") and message in err and "\n" not in err
