"""The permanent bad-input suite, part 2 (issue 15, items 4-6): damaged files get one line naming the file, a full or
read-only disk loses nothing and says so, a crafted ``.pt`` never runs code, the server answers every bad request
with a 4xx (or a deliberate 503) and keeps its memory bounded, and EVERY ``vlt5r`` subcommand ends a user error in
one ``error:`` line. Harness and builders: ``tests/bad_inputs.py``; what each kind gets: ``docs/bad_inputs.md``."""

from __future__ import annotations

import errno
import gzip
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from bad_inputs import (DPR_RECORD, Case, combine, feature_file, index_dir, names, run_case, snapshot,
                        text_file, trec_run, vectors)
from helpers_search import ServerProcess, World, make_world_fixture, server_args
from test_cli import ENV

from feature_extraction.tiny import make_openai_clip
from foundations.errors import UserError
from vlt5r.main import COMMANDS, main

world = make_world_fixture()
REPO = Path(__file__).resolve().parents[1]


# -- builders of damaged files -------------------------------------------------------------------------------------
def truncated(path: Path, keep: float = 0.5) -> Path:
    """Cut ``path`` to a fraction of its bytes (a copy interrupted half-way)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def garbage(path: Path, size: int = 4000) -> Path:
    """Bytes that are no format at all (and not UTF-8)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(range(256)) * (size // 256))
    return path


def gz(path: Path, text: str, keep: float = 1.0) -> Path:
    data = gzip.compress(text.encode("utf-8"))
    path.write_bytes(data[: int(len(data) * keep)])
    return path


DPR_TEXT = json.dumps([DPR_RECORD] * 50)
VIQUAE_TEXT = "".join(json.dumps({"id": f"v{i}", "input": "who?", "image": "a.jpg", "provenance_indices": [0]}) + "\n"
                      for i in range(50))


def trunc_features(root: Path) -> dict[str, Path]:
    return {"feats": truncated(feature_file(root / "kb.h5", vectors(300, 8)))}


def trunc_index(root: Path) -> dict[str, Path]:
    ix = index_dir(root / "ix", n=40, dim=8)
    truncated(ix / "index.faiss")
    return {"ix": ix}


def garbage_index(root: Path) -> dict[str, Path]:
    ix = index_dir(root / "ix", n=40, dim=8)
    garbage(ix / "index.faiss")
    return {"ix": ix}


def not_clip_pt(root: Path) -> dict[str, Path]:
    torch.save({"encoder.weight": torch.zeros(3, 3)}, root / "resnet.pt")
    return {"pt": root / "resnet.pt"}


EXTRACT = ["extract", "--texts", "{texts}", "--out", "{out}", "--device", "cpu", "--dtype", "float32",
           "--no-progress", "--quiet", "--backbone", "{pt}"]


def texts(root: Path) -> dict[str, Path]:
    return {"texts": text_file(root / "t.jsonl", '{"id": "a", "text": "a red circle"}\n'), "out": root / "f.h5"}


CASES = [
    # -- truncated or corrupt data files ---------------------------------------------------------------------
    Case("build-index: a truncated HDF5 feature file", combine(trunc_features, names(out="ix")),
         ["build-index", "--features", "{feats}", "--out", "{out}"], 1,
         r"{feats}: not a readable HDF5 file, truncated or corrupt \(.*truncated file", absent=["out"]),
    Case("merge: a truncated shard", lambda r: {"a": feature_file(r / "a.h5", vectors(4, 8)),
                                                "b": truncated(feature_file(r / "b.h5", vectors(300, 8),
                                                                            [f"b{i}" for i in range(300)])),
                                                "out": r / "all.h5"},
         ["merge", "--out", "{out}", "{a}", "{b}"], 1, r"{b}: not a readable HDF5 file", absent=["out"]),
    Case("search: a truncated index.faiss", trunc_index,
         ["search", "--index", "{ix}", "--encoder", "clip-text", "--question", "q"], 1,
         r"{ix}/index\.faiss: not a readable faiss index, truncated or corrupt \(.*read error"),
    Case("search: an index.faiss that is no index", garbage_index,
         ["search", "--index", "{ix}", "--encoder", "clip-text", "--question", "q"], 1,
         r"{ix}/index\.faiss: not a readable faiss index, truncated or corrupt \(Index type .* not recognized\)"),
    Case("fuse fit: a run that is not UTF-8 text", lambda r: {"a": trec_run(r / "a.trec"), "b": garbage(r / "b.trec"),
                                                              "q": text_file(r / "q.txt", "q1 0 d1 1\n")},
         ["fuse", "fit", "--qrels", "{q}", "--runs", "{a}", "{b}"], 1, r"{b}:1: not UTF-8 text"),
    Case("evaluate: a run that is not UTF-8 text", lambda r: {"a": garbage(r / "a.trec"),
                                                              "q": text_file(r / "q.txt", "q1 0 d1 1\n")},
         ["evaluate", "--qrels", "{q}", "--runs", "{a}"], 1, r"{a}:1: not UTF-8 text"),
    Case("demo example: a queries file that is not UTF-8", lambda r: {"q": garbage(r / "q.jsonl")},
         ["demo", "example", "{q}"], 1, r"{q}:1: not UTF-8 text"),
    # -- truncated or non-gzip .gz inputs of the importers ------------------------------------------------------
    Case("import dpr: a truncated .json.gz", lambda r: {"src": gz(r / "d.json.gz", DPR_TEXT, 0.5), "out": r / "q.jsonl"},
         ["import", "dpr", "--input", "{src}", "--out", "{out}"], 1,
         r"{src}: truncated or not a gzip file \(Compressed file ended", absent=["out"]),
    Case("import dpr: a .json.gz that is not gzip", lambda r: {"src": text_file(r / "d.json.gz", DPR_TEXT),
                                                               "out": r / "q.jsonl"},
         ["import", "dpr", "--input", "{src}", "--out", "{out}"], 1,
         r"{src}: truncated or not a gzip file \(Not a gzipped file", absent=["out"]),
    Case("import dpr-passages: a .tsv.gz that is not gzip",
         lambda r: {"src": text_file(r / "p.tsv.gz", "id\ttext\ttitle\n1\tx\tT\n"), "out": r / "kb.jsonl"},
         ["import", "dpr-passages", "--input", "{src}", "--out", "{out}"], 1,
         r"{src}: truncated or not a gzip file", absent=["out"]),
    Case("import viquae: a truncated .jsonl.gz",
         lambda r: {"src": gz(r / "v.jsonl.gz", VIQUAE_TEXT, 0.6), "out": r / "q.jsonl"},
         ["import", "viquae", "--input", "{src}", "--out", "{out}"], 1, r"{src}: truncated or not a gzip file",
         absent=["out"]),
    Case("import kilt: a truncated .jsonl.gz, the old --out stays",
         lambda r: {"src": gz(r / "k.jsonl.gz", VIQUAE_TEXT, 0.6), "out": text_file(r / "kb.jsonl")},
         ["import", "kilt", "--input", "{src}", "--out", "{out}", "--overwrite"], 1,
         r"{src}: truncated or not a gzip file", keep=["out"]),
    # -- backbones that are not CLIP checkpoints ----------------------------------------------------------------
    Case("extract: a truncated .pt backbone",
         combine(texts, lambda r: {"pt": truncated(make_openai_clip(r / "tiny.pt"), 0.3)}), EXTRACT, 2,
         r"{pt}: not a CLIP checkpoint \(.*PytorchStreamReader failed", absent=["out"]),
    Case("extract: a .pt of another model", combine(texts, not_clip_pt), EXTRACT, 2,
         r"{pt}: not a CLIP checkpoint \(no visual\.conv1\.weight", absent=["out"]),
    Case("extract: a text file named .pt", combine(texts, lambda r: {"pt": text_file(r / "clip.pt", "hello\n")}),
         EXTRACT, 2, r"{pt}: not a CLIP checkpoint", absent=["out"]),
    Case("eval: a .pt that is no checkpoint at all", lambda r: {"pt": garbage(r / "m.pt"), "out": r / "ev"},
         ["eval", "--model", "{pt}", "--task", "winoground", "--data", "{pt}", "--out", "{out}"], 2,
         r"{pt}: not a CLIP checkpoint", absent=["out"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_damaged_input(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                       request: pytest.FixtureRequest) -> None:
    run_case(case, tmp_path, capsys, request)


# -- a saved encoder and a training run that are damaged -----------------------------------------------------------
def damage_encoder(how: str) -> Callable[[Path, Path], None]:
    def damage(encoder: Path, _: Path) -> None:
        if how == "weights":
            truncated(encoder / "model.safetensors")
        elif how == "config":
            truncated(encoder / "config.json", 0.3)
        elif how == "sizes":  # a config.json whose sizes are not the weights' (d_ff 20 -> 22)
            config = json.loads((encoder / "config.json").read_text())
            config["model"]["d_ff"] += 2
            (encoder / "config.json").write_text(json.dumps(config))
        else:  # backbone.json
            (encoder / "backbone.json").write_text("{not json")
    return damage


ENCODER_CASES = {  # name: (damage, message)
    "encoder: a truncated model.safetensors": (damage_encoder("weights"),
                                               r"{enc}/model\.safetensors: not a readable safetensors file"),
    "encoder: a config.json cut short": (damage_encoder("config"), r"{enc}/config\.json: not valid JSON"),
    "encoder: config.json sizes that are not the weights'": (
        damage_encoder("sizes"), r"{enc}/model\.safetensors: 2 tensor\(s\) do not have the sizes {enc}/config\.json "
                                 r"gives, e\.g\. .*DenseReluDense\.wi\.weight is \(20, 24\) in the weights but \(22, 24\)"),
    "encoder: a backbone.json that is not JSON": (damage_encoder("record"), r"{enc}/backbone\.json: not valid JSON"),
}


@pytest.mark.parametrize("name", sorted(ENCODER_CASES))
def test_damaged_encoder(name: str, world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                         request: pytest.FixtureRequest) -> None:
    damage, message = ENCODER_CASES[name]

    def build(root: Path) -> dict[str, Path]:
        enc = Path(shutil.copytree(world.encoder, root / "encoder"))
        damage(enc, root)
        return {"enc": enc, "out": root / "run.trec"}

    argv = ["search", "--index", str(world.index), "--encoder", "{enc}", "--queries", str(world.queries),
            "--query-features", str(world.features("scenes")), "--out", "{out}", "--no-progress"]
    run_case(Case(name, build, argv, 1, message, keep=["enc"], absent=["out"]), tmp_path, capsys, request)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], Path]:
    """A tiny training run of 2 steps (its ``last`` checkpoint is resumable) and the flags that made it."""
    from train_helpers import make_data, train_args

    root = tmp_path_factory.mktemp("resume")
    argv = ["train", *train_args(make_data(root / "data", train=4, dev=2, test=2), root / "run", "--max-steps", "2",
                                 "--no-save-init")]
    assert main(argv) == 0
    return argv, root / "run"


RESUME_CASES = {  # damaged file of OUT/last -> message
    "training_state.pt": r"{pt}: not a readable training state \(\w+Error: .*\); the "
                         r"checkpoint is damaged: restore it from a copy, or delete {last} to train from the start",
    "trainer_state.json": r"{json}: not valid JSON .*; the checkpoint is damaged",
    "model.safetensors": r"{weights}: not a readable safetensors file, truncated or corrupt",
}


@pytest.mark.parametrize("damaged", sorted(RESUME_CASES))
def test_resume_from_a_damaged_checkpoint(damaged: str, finished_run: tuple[list[str], Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest) -> None:
    argv, run = finished_run

    def build(root: Path) -> dict[str, Path]:
        out = Path(shutil.copytree(run, root / "run"))
        truncated(out / "last" / damaged, 0.4)
        last = out / "last"
        return {"out": out, "last": last, "pt": last / "training_state.pt", "json": last / "trainer_state.json",
                "weights": last / "model.safetensors"}

    resume = [a if a != str(run) else "{out}" for a in argv] + ["--max-steps", "4", "--resume", "yes"]
    run_case(Case(f"resume: a damaged {damaged}", build, resume, 1, RESUME_CASES[damaged], keep=["last"]),
             tmp_path, capsys, request)


def test_a_training_state_that_is_not_ours_is_refused(finished_run: tuple[list[str], Path], tmp_path: Path) -> None:
    from engine.checkpoint import load_training_state

    last = Path(shutil.copytree(finished_run[1] / "last", tmp_path / "last"))
    torch.save({"weights": torch.zeros(2)}, last / "training_state.pt")
    with pytest.raises(UserError, match=r"training_state\.pt: not a training state of this toolkit \(no \['optimizer'"):
        load_training_state(last)
    (last / "trainer_state.json").write_text('{"epoch": 1, "steps": 3}')
    with pytest.raises(UserError, match=r"trainer_state\.json: unknown key\(s\) for TrainerState: \['steps'\]"):
        load_training_state(last)


# -- every subcommand on a set of bad inputs: one line, never a traceback --------------------------------------------
# {m}: a path that does not exist; {x.EXT}: bytes that are no format (and not UTF-8) named *.EXT; {d}: an empty
# folder; {out}: a fresh output path. Every command (and sub-command) gets a missing file, a garbage file and an
# unknown flag.
EVERY_COMMAND: dict[str, list[list[str]]] = {
    "extract": [["--images", "{m}", "--out", "{out}"], ["--texts", "{x.jsonl}", "--out", "{out}"],
                ["--texts", "{t}", "--out", "{out}", "--backbone", "{x.pt}", "--device", "cpu"]],
    "merge": [["--out", "{out}", "{m}"], ["--out", "{out}", "{x.h5}"]],
    "export-vladapter": [["{m}", "{out}"], ["{x.h5}", "{out}"]],
    "tokenizer": [["--texts", "{m}", "--out", "{out}"], ["--texts", "{x.jsonl}", "--out", "{out}"]],
    "train": [["--kb", "{m}", "--kb-features", "{m}", "--train-queries", "{m}", "--query-features", "{m}",
               "--tokenizer", "{d}", "--out", "{out}"],
              ["--kb", "{x.jsonl}", "--kb-features", "{x.h5}", "--train-queries", "{x.jsonl}", "--query-features",
               "{x.h5}", "--tokenizer", "{d}", "--out", "{out}"]],
    "clip-train": [["--model-name", "tiny", "--train-data", "{m}", "--out", "{out}"],
                   ["--model-name", "tiny", "--train-data", "{x.tsv}", "--out", "{out}"]],
    "distill": [["--teacher", "{m}", "--student", "{m}", "--train-data", "{m}", "--out", "{out}"],
                ["--teacher", "{x.pt}", "--student", "{d}", "--train-data", "{x.tsv}", "--out", "{out}"]],
    "baselines": [["--kb", "{m}", "--kb-features", "{m}", "--queries", "{m}", "--query-features", "{m}"],
                  ["--kb", "{x.jsonl}", "--kb-features", "{x.h5}", "--queries", "{x.jsonl}", "--query-features",
                   "{x.h5}"]],
    "mine-negatives": [["--encoder", "{m}", "--kb", "{m}", "--kb-features", "{m}", "--queries", "{m}", "--out", "{out}"],
                       ["--encoder", "{d}", "--kb", "{x.jsonl}", "--kb-features", "{x.h5}", "--queries", "{x.jsonl}",
                        "--out", "{out}"]],
    "mine-negclip": [["--captions", "{m}", "--image-features", "{m}", "--out", "{out}"],
                     ["--captions", "{x.tsv}", "--image-features", "{x.h5}", "--out", "{out}"]],
    "build-index": [["--features", "{m}", "--out", "{out}"], ["--features", "{x.h5}", "--out", "{out}"],
                    ["--sizing", "--features", "{x.h5}", "--n", "100"]],
    "search": [["--index", "{m}", "--encoder", "clip-text", "--question", "q"],
               ["--index", "{d}", "--encoder", "clip-image", "--image", "{x.png}"]],
    "evaluate": [["--qrels", "{m}", "--runs", "{m}"], ["--qrels", "{x.jsonl}", "--runs", "{x.trec}"]],
    "eval": [["--model", "{m}", "--task", "winoground", "--data", "{m}"],
             ["--model", "{x.pt}", "--task", "winoground", "--data", "{x.jsonl}", "--out", "{out}"]],
    "report": [["{m}", "--out", "{out}"], ["{x.json}", "--out", "{out}"]],
    "fuse fit": [["--qrels", "{m}", "--runs", "{m}", "{m}"], ["--qrels", "{x.jsonl}", "--runs", "{x.trec}", "{x.trec}"]],
    "fuse apply": [["--weights", "{m}", "--out", "{out}", "--runs", "{m}"],
                   ["--weights", "{x.json}", "--out", "{out}", "--runs", "{x.trec}"]],
    "import dpr": [["--input", "{m}", "--out", "{out}"], ["--input", "{x.json}", "--out", "{out}"],
                   ["--input", "{x.gz}", "--out", "{out}"]],
    "import dpr-passages": [["--input", "{m}", "--out", "{out}"], ["--input", "{x.tsv}", "--out", "{out}"]],
    "import viquae": [["--input", "{m}", "--out", "{out}"], ["--input", "{x.jsonl}", "--out", "{out}"]],
    "import kilt": [["--input", "{m}", "--out", "{out}"], ["--input", "{x.json}", "--out", "{out}"]],
    "serve": [["--index", "{m}", "--encoder", "clip-image", "--kb", "{m}"],
              ["--index", "{d}", "--encoder", "{d}", "--kb", "{x.jsonl}"]],
    "demo prepare": [["--out", "{x.json}"]],
    "demo report": [["--comparison", "{m}"], ["--comparison", "{x.json}"]],
    "demo example": [["{m}"], ["{x.jsonl}"]],
}


def test_the_every_command_table_covers_every_command() -> None:
    from test_cli import NESTED

    assert {name.split()[0] for name in EVERY_COMMAND} == set(COMMANDS)  # a new command must join the table
    assert all(f"{name} {sub}" in EVERY_COMMAND for name, subs in NESTED.items() for sub in subs)


@pytest.mark.parametrize("command", sorted(EVERY_COMMAND))
def test_every_command_ends_a_user_error_in_one_line(command: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    values = {"m": str(tmp_path / "missing.h5"), "d": str(tmp_path / "empty"), "out": str(tmp_path / "out" / "o"),
              "t": str(text_file(tmp_path / "t.jsonl", '{"id": "a", "text": "hello"}\n'))}
    (tmp_path / "empty").mkdir()
    for ext in ("h5", "jsonl", "json", "trec", "pt", "tsv", "png", "gz"):
        values[f"x.{ext}"] = str(garbage(tmp_path / f"garbage.{ext}"))
    for argv in [*EVERY_COMMAND[command], ["--no-such-flag"]]:
        full = [*command.split(), *(values.get(a[1:-1], a) if a.startswith("{") else a for a in argv)]
        capsys.readouterr()
        code = main(full)
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert code in (1, 2) and len(lines) == 1 and lines[0].startswith("error: "), (full, code, err[-3000:])
        assert "Traceback" not in err and not (tmp_path / "out").exists(), full


# -- a full or read-only disk: one line naming the file, nothing lost ------------------------------------------------
DISK_SCRIPT = r"""
set -u
mount -t tmpfs -o size=300k tmpfs "$DISK" || exit 97
mkdir -p "$RO" && mount -t tmpfs -o ro,size=64k tmpfs "$RO" || exit 97
free_kb=$(df -k "$DISK" | tail -1 | awk '{print $4}')
head -c $(( (free_kb - 8) * 1024 )) /dev/zero > "$DISK/filler"
run() { timeout 120 "$PY" -m vlt5r extract --images "$IMGS" --backbone "$PT" --device cpu --dtype float32 \
        --no-progress --quiet --out "$1" > /dev/null 2> "$2"; echo "$?" > "$2.rc"; }
run "$DISK/f.h5" "$LOGS/full"
ls "$DISK" > "$LOGS/full.ls"
rm "$DISK/filler"
run "$DISK/f.h5" "$LOGS/freed"
"$PY" -c "import sys, h5py; print(len(h5py.File(sys.argv[1], 'r')['ids']))" "$DISK/f.h5" > "$LOGS/freed.rows"
run "$RO/f.h5" "$LOGS/ro"
timeout 120 "$PY" -m vlt5r train $TRAIN --out "$RO/run" > /dev/null 2> "$LOGS/ro_train"; echo "$?" > "$LOGS/ro_train.rc"
"""


def unshare_available() -> bool:
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.slow  # five fresh processes (~50 s here)
@pytest.mark.skipif(not unshare_available(), reason="needs unshare -rm (a user + mount namespace) to mount a tmpfs")
def test_a_really_full_and_a_read_only_disk(tmp_path: Path, tiny_vit_pt: Path) -> None:
    """A 300 KiB tmpfs filled up to 8 KiB, and a read-only one, in a private mount namespace (nothing is mounted
    outside the test): extraction into the full one fails in one line that names the chunk it was writing and says
    nothing was lost (before: it hung forever, its writer thread waiting for a stop that never came, or segfaulted in
    HDF5), and once space is freed the same command finishes; a read-only output folder is refused in one line."""
    from bad_inputs import image_folder
    from train_helpers import make_data, train_args

    logs, imgs = tmp_path / "logs", image_folder(tmp_path / "imgs", 4)
    logs.mkdir()
    data = make_data(tmp_path / "data", train=2, dev=1, test=1)
    train = " ".join(a for a in train_args(data, tmp_path / "unused")[:-2])  # without its --out
    env = {**ENV, "DISK": str(tmp_path / "disk"), "RO": str(tmp_path / "ro"), "LOGS": str(logs), "IMGS": str(imgs),
           "PT": str(tiny_vit_pt), "PY": sys.executable, "TRAIN": train}
    (tmp_path / "disk").mkdir()
    proc = subprocess.run(["unshare", "-rm", "bash", "-c", DISK_SCRIPT], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]

    def outcome(name: str) -> tuple[int, list[str]]:
        return int((logs / f"{name}.rc").read_text()), (logs / name).read_text().strip().splitlines()

    code, lines = outcome("full")
    disk = tmp_path / "disk"
    assert code == 1 and len(lines) == 1, (code, lines)  # 124: it hung; 139: it segfaulted
    assert lines[0].startswith(f"error: {disk}/f.h5.partial/chunk-000000.h5.tmp: no space left on device; nothing "
                               f"was lost: 0 rows of this run are committed in {disk}/f.h5.partial and {disk}/f.h5 "
                               "is not created; free some space and rerun the same command to resume"), lines
    assert (logs / "full.ls").read_text().split() == ["f.h5.partial", "filler"]  # the unfinished chunk is deleted
    code, lines = outcome("freed")
    assert code == 0 and lines == [] and (logs / "freed.rows").read_text().strip() == "4"
    code, lines = outcome("ro")
    assert code == 2 and lines == [f"error: --out {tmp_path}/ro: {tmp_path}/ro is not writable"]
    code, lines = outcome("ro_train")
    assert code == 2 and lines == [f"error: --out {tmp_path}/ro/run: {tmp_path}/ro is not writable"]


def test_a_full_disk_while_consolidating_keeps_the_encoded_rows(tmp_path: Path, tiny_vit_pt: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The disk fills up while the spool is consolidated into OUT.h5: one line naming OUT, the encoded rows stay in
    the spool, and rerunning the command only consolidates (nothing is encoded twice)."""
    from bad_inputs import image_folder

    real_pwrite = os.pwrite

    def pwrite(fd: int, data: bytes, offset: int) -> int:  # a real OSError(ENOSPC) from the OS write of that file
        if os.readlink(f"/proc/self/fd/{fd}").endswith("f.h5.tmp"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_pwrite(fd, data, offset)

    out = tmp_path / "f.h5"
    argv = ["extract", "--images", str(image_folder(tmp_path / "imgs", 3)), "--out", str(out), "--backbone",
            str(tiny_vit_pt), "--device", "cpu", "--dtype", "float32", "--no-progress", "--quiet"]
    monkeypatch.setattr(os, "pwrite", pwrite)
    capsys.readouterr()
    assert main(argv) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"error: {out}.tmp: no space left on device while writing {out}; nothing was lost: {out} was not "
                     f"created (no partial file is left); this run's 3 rows are kept in {out}.partial: free some "
                     "space and rerun the same command to finish"], lines
    assert not out.exists() and not Path(f"{out}.tmp").exists() and len(list(Path(f"{out}.partial").iterdir())) == 2
    monkeypatch.setattr(os, "pwrite", real_pwrite)
    assert main(argv) == 0
    assert "written 0 " in capsys.readouterr().out and not Path(f"{out}.partial").exists()
    from feature_extraction.readers import open_features

    with open_features(out) as store:
        assert sorted(store.ids) == ["img_00000", "img_00001", "img_00002"]


def test_a_full_disk_while_saving_a_checkpoint(finished_run: tuple[list[str], Path], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """torch.save fails on a full disk while the next ``last`` is written: one line naming it, the previous ``last``
    byte-identical (so the run resumes from it)."""
    argv, run = finished_run
    out = Path(shutil.copytree(run, tmp_path / "run"))
    before = snapshot(out / "last")

    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # no file name: what a write() on a full disk gives

    monkeypatch.setattr(torch, "save", full_disk)
    capsys.readouterr()
    assert main([a if a != str(run) else str(out) for a in argv] + ["--max-steps", "3", "--resume", "yes"]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "resuming with changed settings" not in line]  # a warning log
    assert errors == [f"error: {out}/last: no space left on device; nothing was lost: the previous {out}/last is "
                      "unchanged"], err
    assert snapshot(out / "last") == before and not (out / ".last.tmp").exists()


def test_disk_failures_are_recognised_in_every_library_s_words(tmp_path: Path) -> None:
    from engine.checkpoint import save_torch
    from foundations.io import disk_failure

    with pytest.raises(OSError) as err:  # torch itself says "unexpected pos ..." (a RuntimeError)
        save_torch({"w": torch.zeros(100_000)}, Path("/dev/full"))
    assert err.value.errno == errno.ENOSPC and disk_failure(err.value) == "no space left on device"
    faiss_words = RuntimeError("Error in void faiss::write_index(...) at index_write.cpp:499: Error: 'ret == (size * 4)' "
                               "failed: write error in ix/index.faiss: 4051 != 1280000 (No space left on device)")
    assert disk_failure(faiss_words) == "no space left on device"
    assert disk_failure(Exception("No space left on device (os error 28)")) == "no space left on device"  # safetensors
    assert disk_failure(OSError(errno.EROFS, "Read-only file system")) == "read-only file system"
    assert disk_failure(RuntimeError("size mismatch")) is None and disk_failure(KeyError("x")) is None
    assert disk_failure(OSError(errno.ENOENT, "No such file")) is None


# -- deserialisation: a .pt is read without unpickling code, and a recorded sha256 is checked first -----------------
class _Payload:
    """Pickles to ``os.mkdir(marker)``: what a crafted checkpoint runs when it is unpickled without weights_only."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.mkdir, (str(self.marker),)


def test_a_crafted_pt_never_runs_its_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Even when torch is told to unpickle everything (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``, which ``clip.load``'s
    own ``torch.load`` obeys), a backbone .pt holding code is refused as not a CLIP checkpoint and the code never
    runs."""
    from feature_extraction.backbones import load_backbone

    marker, evil = tmp_path / "code_ran", tmp_path / "evil.pt"
    torch.save({"visual.conv1.weight": _Payload(marker), "text_projection": torch.zeros(2, 2)}, evil)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(UserError, match=r"evil\.pt: not a CLIP checkpoint \(.*Weights only load failed\)$") as err:
        load_backbone(str(evil), "cpu", torch.float32)
    assert not marker.exists()
    assert "weights_only" not in str(err.value).replace("Weights only", "")  # torch's advice is never relayed


def test_a_recorded_sha256_is_checked_before_the_file_is_opened(tmp_path: Path, tiny_vit_pt: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from retrieval.querying.backbone_ref import BackboneMismatch, BackboneRef

    opened: list[str] = []
    real_load, real_jit = torch.load, torch.jit.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: opened.append("torch.load") or real_load(*a, **k))
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: opened.append("torch.jit.load") or real_jit(*a, **k))
    ref = BackboneRef(str(tiny_vit_pt), "0" * 64, None, "enc/backbone.json")
    with pytest.raises(BackboneMismatch, match=r"has sha256 [0-9a-f]{16}…, but enc/backbone\.json records 0{16}….*"
                                               r"not loaded$"):
        ref.load()
    assert opened == []  # refused from its hash alone
    from feature_extraction.backbones import file_sha256

    backbone = BackboneRef(str(tiny_vit_pt), file_sha256(tiny_vit_pt), None, "enc/backbone.json").load()
    assert backbone.fc_dim == 48 and opened == ["torch.load"]  # the right file: read once, weights_only


def test_the_safe_loader_builds_what_clip_load_builds(tmp_path: Path, tiny_vit_pt: Path) -> None:
    """A plain state dict and a TorchScript archive (the released files' format) give the model ``clip.load`` gives."""
    import warnings

    import clip

    from feature_extraction.backbones import load_backbone

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = clip.load(str(tiny_vit_pt), device="cpu", jit=False)[0].eval()
        pixels, tokens = torch.randn(2, 3, 32, 32), clip.tokenize(["a red circle", "two squares"])
        archive = tmp_path / "released_style.pt"
        torch.jit.trace(reference, (pixels[:1], tokens[:1]), check_trace=False).save(str(archive))
    with torch.no_grad():
        want_image, want_text = reference.encode_image(pixels), reference.encode_text(tokens)
        for path in (tiny_vit_pt, archive):
            backbone = load_backbone(str(path), "cpu", torch.float32)
            torch.testing.assert_close(backbone.encode_images(pixels, grid=False)[0], want_image, rtol=0, atol=0)
            torch.testing.assert_close(backbone.encode_texts({"text": tokens}), want_text, rtol=0, atol=0)


# -- the server: every parse error a 4xx, bounded memory, 503 + Retry-After, names not paths -------------------------
@pytest.fixture(scope="module")
def searcher(world: World):  # noqa: ANN201
    from retrieval.querying import open_searcher

    s = open_searcher(world.index, world.kb, str(world.encoder))
    s.encoder.load()
    return s


def client_for(searcher, world: World, **cfg: object):  # noqa: ANN001,ANN201
    from fastapi.testclient import TestClient

    from retrieval.querying.app import ServerConfig, create_app

    return TestClient(create_app(searcher, ServerConfig(images_dir=world.data, **cfg)),  # type: ignore[arg-type]
                      raise_server_exceptions=False)


def scene(world: World) -> dict:
    return {"image": ("s.png", world.scene("test-00000").read_bytes(), "image/png")}


@pytest.mark.parametrize("k", ["²", "¹⁰", "٣", "３", "1²", "⁵0", " ", "+", "1e3", "0x10"])
def test_k_that_python_reads_as_digits_is_a_4xx(k: str, searcher, world: World) -> None:  # noqa: ANN001
    """``'²'.isdigit()`` is true and ``int('²')`` raises: that was a 500. Only ASCII digits are a k."""
    with client_for(searcher, world) as c:
        r = c.post("/search", data={"question": "q", "k": k}, files=scene(world))
    assert r.status_code == 400 and "k must be an integer" in r.json()["error"], (k, r.status_code, r.text)


def test_a_content_length_in_other_digits_is_a_4xx(searcher, world: World) -> None:  # noqa: ANN001
    """The raw header byte 0xB2 (``'²'`` in latin-1, as servers decode headers); sent through the ASGI interface
    because HTTP clients re-encode header values."""
    import asyncio

    from retrieval.querying.app import ServerConfig, create_app

    app, sent = create_app(searcher, ServerConfig()), []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"x", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/search", "raw_path": b"/search", "query_string": b"", "root_path": "",
             "client": ("127.0.0.1", 1), "server": ("testserver", 80),
             "headers": [(b"content-type", b"multipart/form-data; boundary=x"), (b"content-length", b"\xb2")]}
    asyncio.run(app(scope, receive, send))
    body = json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))
    assert sent[0]["status"] == 400 and body["error"] == "invalid Content-Length header", (sent[0], body)


def test_a_full_queue_is_a_503_with_retry_after(searcher, world: World, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    import threading
    import time

    release, started = threading.Event(), threading.Event()
    real_search = searcher.search

    def slow_search(*args: object, **kwargs: object):  # noqa: ANN202
        started.set()
        assert release.wait(30)
        return real_search(*args, **kwargs)

    monkeypatch.setattr(searcher, "search", slow_search)
    with client_for(searcher, world, workers=1, queue=1) as c:
        answers: list = []
        threads = [threading.Thread(target=lambda: answers.append(c.post("/search", data={"question": "q"},
                                                                          files=scene(world)))) for _ in range(2)]
        threads[0].start()
        assert started.wait(30)  # the one worker is busy
        threads[1].start()
        deadline = time.monotonic() + 30
        while c.get("/health").json()["queries_admitted"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)  # the second waits in the queue
        busy = c.post("/search", data={"question": "q"}, files=scene(world))
        release.set()
        for t in threads:
            t.join(60)
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1" and "busy" in busy.json()["error"]
    assert [a.status_code for a in answers] == [200, 200]


def test_health_shows_names_not_server_paths(searcher, world: World) -> None:  # noqa: ANN001
    root = str(world.root.resolve())
    with client_for(searcher, world, extra={"index_dir": str(world.index)}) as c:
        text = c.get("/health").text
    assert root not in text and str(world.root) not in text, text
    health = json.loads(text)
    assert health["index_dir"] == "index" and health["encoder"]["encoder"] == "encoder"
    assert health["encoder"]["backbone"] == Path(world.clip).name  # recorded as an absolute path
    assert health["encoder"]["backbone_source"] == "backbone.json"
    with client_for(searcher, world, show_paths=True, extra={"index_dir": str(world.index)}) as c:
        assert str(world.encoder) in c.get("/health").text  # --debug-paths


def test_a_huge_bilevel_png_is_decoded_reduced_and_answered(searcher, world: World) -> None:  # noqa: ANN001
    """The 36-megapixel 1-bit PNG (~9 KB): decoded box-reduced to 1200 × 1200 before any RGB copy; the pixels the
    backbone sees differ from a full-size decode by at most a few grey levels."""
    from foundations.images import decode_image
    from retrieval.querying.server_process import bilevel_png

    data = bilevel_png()
    assert len(data) < 20_000
    reduced, full = decode_image(data, 40_000_000, min_side=1024), decode_image(data, 40_000_000)
    assert reduced.size == (1200, 1200) and reduced.mode == "RGB" and full.size == (6000, 6000)
    preprocess = searcher.encoder.backbone.preprocess
    assert (preprocess(reduced) - preprocess(full)).abs().max() < 0.05  # normalised units (~1/70 of the range)
    with client_for(searcher, world, max_pixels=40_000_000) as c:
        r = c.post("/search", data={"question": "q", "k": "3"}, files={"image": ("scan.png", data, "image/png")})
    assert r.status_code == 200 and len(r.json()["hits"]) == 3


def test_concurrent_load_with_huge_pngs_gets_no_error_but_503(world: World) -> None:
    """20 concurrent searches, a quarter of them the 36-megapixel PNG, on a real uvicorn with 2 workers and a queue of
    4: every answer is a 200 or a deliberate 503 (with Retry-After), and the server's peak RSS stays within the
    documented bound. (benchmarks/bench_serve_load.py: the same with 200 requests.)"""
    from retrieval.querying.app import ServerConfig
    from retrieval.querying.server_process import bilevel_png, post_concurrently

    scan, photo = bilevel_png(), world.scene("test-00000").read_bytes()
    forms = [({"question": "q", "k": "3"}, {"image": ("scan.png", scan, "image/png") if i % 4 == 0 else
                                           ("s.png", photo, "image/png")}) for i in range(20)]
    cfg = ServerConfig(workers=2, queue=4, max_pixels=40_000_000)
    with ServerProcess([*server_args(world), "--workers", "2", "--queue", "4", "--max-pixels", "40000000"]) as server:
        warm = server.rss_mb()
        answers = post_concurrently(server.url + "/search", forms, threads=20)
        peak = server.peak_rss_mb()
    statuses = [a.status for a in answers]
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 6, [(a.status, a.body) for a in answers]
    assert all(a.retry_after == "1" for a in answers if a.status == 503)
    assert peak <= cfg.memory_bound_mb(warm), (warm, peak, cfg.memory_bound_mb(warm))
