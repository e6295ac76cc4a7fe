"""The one command line: ``vlt5r --help`` lists every subcommand, every ``vlt5r X -h`` works and shows examples,
the old entry points (scripts, ``python -m`` forms, the shell recipe) still reach the same drivers, and the exit
code convention holds (usage error 2, user error 1, one ``error:`` line, no traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vlt5r.main import COMMANDS, main

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
# subcommands with sub-subcommands: their -h is checked on each
NESTED = {"fuse": ["fit", "apply"], "import": ["dpr", "dpr-passages", "viquae", "kilt"],
          "demo": ["prepare", "report", "example"]}


def run(cmd: list[str], cwd: Path = REPO, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


def test_help_lists_every_subcommand_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    listed = {line.split()[0] for line in out.split("commands:")[1].strip().splitlines()}
    assert listed == set(COMMANDS)
    expected = {"extract", "merge", "export-vladapter", "tokenizer", "train", "baselines", "mine-negatives",
                "build-index", "search", "evaluate", "fuse", "import", "serve", "demo"}
    assert expected <= set(COMMANDS)
    assert main([]) == 2 and main(["no-such-command"]) == 2


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_subcommand_has_help_with_examples(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in [[name, "-h"], *([name, sub, "-h"] for sub in NESTED.get(name, []))]:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0, argv
        out = capsys.readouterr().out
        assert out.startswith(f"usage: vlt5r {name}") and "examples:" in out, (argv, out[:200])


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "vlt5r"
    assert script.is_file(), "pip install -e . puts vlt5r on PATH"
    proc = run([str(script), "--help"])
    assert proc.returncode == 0 and "build-index" in proc.stdout


@pytest.mark.parametrize("cmd", [
    ["feature_extraction/clip_prepro_feats.py"], ["feature_extraction/merge_feats.py"],
    ["retrieval/build_index.py"], ["retrieval/search.py"], ["retrieval/evaluate.py"], ["retrieval/fusion.py"],
    ["retrieval/serve.py"],
    ["-m", "feature_extraction.clip_prepro_feats"], ["-m", "feature_extraction.merge_feats"],
    ["-m", "feature_extraction.export_vladapter"], ["-m", "retrieval.train"], ["-m", "retrieval.importers"],
    ["-m", "retrieval.mine_negatives"], ["-m", "vlt5r", "extract"]])
def test_old_entry_points_reach_the_drivers(cmd: list[str], tmp_path: Path) -> None:
    script = [str(REPO / cmd[0])] if not cmd[0].startswith("-") else cmd
    proc = run([sys.executable, *script, *([] if cmd[0].startswith("-") else cmd[1:]), "-h"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: vlt5r ") and "examples:" in proc.stdout


def test_exit_codes_and_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """In-process through ``vlt5r.main.main`` (the first case also in a fresh process: the real entry point)."""
    cases = [  # (argv, exit code, text in the one error line)
        (["extract", "--images", str(tmp_path), "--out", str(tmp_path / "x.h5"), "--bogus"], 2, "unrecognized"),
        (["build-index", "--features", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "ix")], 1,
         "missing.h5"),
        (["evaluate", "--qrels", str(tmp_path / "q.jsonl"), "--runs", str(tmp_path / "r.trec"), "--metrics",
          "bleu"], 1, "unknown metric 'bleu'"),
        (["train", "--lr-head", "abc"], 2, "--lr-head expects float"),
        (["clip-train", "--model-name", "tiny", "--train-data", str(tmp_path / "no_dir"), "--out",
          str(tmp_path / "run")], 1, "no_dir"),
        (["eval", "--model", "ViT-B/32", "--task", "no_such_task", "--data", "x"], 2, "unknown task 'no_such_task'"),
        (["report", str(tmp_path / "missing.json"), "--out", str(tmp_path / "rep")], 1, "missing.json"),
        (["distill", "--teacher", "tiny", "--student", str(tmp_path), "--train-data", str(tmp_path / "pairs.jsonl"),
          "--out", str(tmp_path / "run")], 1, "pairs.jsonl: no such file"),
        (["distill", "--loss", "kl"], 2, "invalid choice: 'kl'"),
        (["distill", "--layer-kd", "--teacher-features", str(tmp_path / "t.h5")], 2, "--layer-kd needs"),
        (["distill", "--evaluate", str(tmp_path)], 2, "--evaluate needs --xtd-images"),
        (["mine-negclip", "--captions", str(tmp_path / "no.csv"), "--image-features", str(tmp_path / "f.h5"),
          "--out", str(tmp_path / "m.tsv")], 1, "no.csv: no such file"),
        (["mine-negclip", "--captions", str(tmp_path / "no.csv"), "--out", str(tmp_path / "m.tsv")], 2,
         "--image-features is required"),
        (["mine-negclip", "--span-types", "clause"], 2, "span_types: ['clause']"),
        (["clip-train", "--image-tower", str(tmp_path)], 2, "--image-tower and --text-tower go together"),
        (["clip-train", "--peft-method", "dora"], 2, "invalid choice: 'dora'"),
        (["clip-train", "--wandb", "cloud"], 2, "invalid choice: 'cloud'"),
        (["clip-train", "--eval-tasks", "sugar_crepe", "--train-data", str(tmp_path), "--out", str(tmp_path / "run")],
         2, "expected NAME=DATA"),
        (["distill", "--write-english", str(tmp_path / "en.jsonl")], 2, "--write-english needs --train-data"),
    ]
    proc = run([sys.executable, "-m", "vlt5r", *cases[0][0]], cwd=tmp_path)
    outcomes = [(cases[0], proc.returncode, proc.stderr)]
    for case in cases:
        capsys.readouterr()
        returned = main(list(case[0]))
        outcomes.append((case, returned, capsys.readouterr().err))
    for (argv, code, text), returned, stderr in outcomes:
        assert returned == code, (argv, stderr)
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], (argv, stderr)
    assert not (tmp_path / "run").exists() and not (tmp_path / "rep").exists()  # nothing written on a user error


def test_a_bug_still_shows_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    from foundations.cli import command

    @command
    def broken(argv: list[str] | None = None) -> int:
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        broken([])


def test_tokenizer_subcommand_trains_a_loadable_tokenizer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import sentencepiece as spm

    from vlt5 import load_tokenizer

    words = ["red", "blue", "green", "circle", "square", "ring", "left", "right", "which", "is", "the", "one"]
    lines = [json.dumps({"id": f"q{i}", "question": " ".join(words[(i + j) % len(words)] for j in range(6))})
             for i in range(60)]
    (tmp_path / "q.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "tok"
    assert main(["tokenizer", "--texts", str(tmp_path / "q.jsonl"), "--out", str(out), "--vocab-size", "60"]) == 0
    assert "wrote tokenizer" in capsys.readouterr().out
    tok = load_tokenizer(out)
    ids = tok("which is the red circle").input_ids
    assert ids[-1] == 1 and tok.unk_token_id not in ids  # </s> appended, every word known
    pieces = spm.SentencePieceProcessor(model_file=str(out / "spiece.model")).get_piece_size()
    assert len(tok) == pieces + 200  # + <extra_id_k> and <vis_extra_id_k> (DESIGN §4.2)
    assert main(["tokenizer", "--texts", str(tmp_path / "q.jsonl"), "--out", str(out)]) == 2  # exists: refused


def test_shell_recipe_runs_vlt5r_train(tmp_path: Path) -> None:
    """``bash scripts/train_joint_encoder.sh`` with the data given by environment variables (one tiny epoch)."""
    from train_helpers import make_data

    data = make_data(tmp_path / "data", train=8, dev=2, test=2)
    env = {**ENV, "KB": str(data["kb"]), "TRAIN": str(data["train"]), "DEV": str(data["dev"]),
           "TEST": str(tmp_path / "none.jsonl"), "KB_FEATURES": str(data["kb_features"]),
           "QUERY_FEATURES": str(data["query_features"]), "QUESTION_FEATURES": str(data["question_features"]),
           "TOKENIZER": str(data["tokenizer"]), "OUT": str(tmp_path / "run"), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "train_joint_encoder.sh"), "--epochs", "1",
                           "--d-model", "16", "--d-kv", "4", "--d-ff", "24", "--threads", "1", "--no-progress",
                           "--no-baselines", "--batch-size", "4"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "run" / "best" / "config.json").is_file() or (tmp_path / "run" / "last").is_dir()
