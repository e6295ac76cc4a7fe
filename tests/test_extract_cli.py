"""CLI contract: user errors end in one ``error: ...`` line and exit status 2 (never a traceback); a good run
prints the summary; the ``-m`` form works."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import h5py
import pytest
from helpers_extract import REPO

from vlt5r.drivers.extract import main
from feature_extraction.config import ExtractConfig
from feature_extraction.tiny import make_image_folder


@pytest.fixture(scope="module")
def imgs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imgs")
    make_image_folder(folder, 3, size=(60, 40))
    return folder


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([*argv, "--num-workers", "0", "--device", "cpu", "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("argv, message", [
    (["--images", "{tmp}/missing"], "--images .*/missing: no such directory"),
    (["--images", "{imgs}", "--texts", "{imgs}/x.jsonl"], "exactly one input"),
    ([], "exactly one input"),
    (["--images", "{imgs}", "--backbone", "ViT-Q/3"], "--backbone 'ViT-Q/3': not an OpenAI CLIP name"),
    (["--images", "{imgs}", "--backbone", "hf:{tmp}/no_such_dir"], "--backbone hf:.*no model.safetensors"),
    (["--images", "{imgs}", "--dtype", "bfloat16"], "argument --dtype: invalid choice"),
    (["--images", "{imgs}", "--shard-id", "1"], "--num-shards and --shard-id go together"),
    (["--images", "{imgs}", "--num-shards", "2", "--shard-id", "2"], "shard id must be in"),
    (["--images", "{imgs}", "--image-size", "36"], "--image-size 36 must be a multiple of 8"),
    (["--images", "{imgs}", "--batch-size", "0"], "must be >= 1"),
    (["--images", "{imgs}", "--batch-size", "many"], "--batch-size: expected an integer or auto, got 'many'"),
    (["--images", "{imgs}", "--precision", "fp16"], "--precision fp16 needs CUDA; on a CPU use bf16"),
    (["--images", "{imgs}", "--precision", "int8"], "argument --precision: invalid choice"),
    (["--texts", "{imgs}/kb.jsonl", "--decode", "gpu"], "--decode gpu decodes images; it does not apply to --texts"),
])
def test_user_errors_exit_2_with_one_line(argv, message, imgs, tiny_vit_pt, tmp_path, capsys):
    (imgs / "kb.jsonl").write_text('{"id": "a", "text": "a cat"}\n')
    filled = [a.format(tmp=tmp_path, imgs=imgs) for a in argv] + ["--out", str(tmp_path / "f.h5")]
    if "--backbone" not in filled:
        filled += ["--backbone", str(tiny_vit_pt)]
    code, _, err = run_main(capsys, *filled)
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert re.search(message, err), err
    assert not (tmp_path / "f.h5").exists()


def test_append_with_other_backbone_and_wrong_out_are_user_errors(imgs, tiny_vit_pt, tiny_resnet_pt, tmp_path,
                                                                  capsys):
    out = str(tmp_path / "f.h5")
    code, stdout, _ = run_main(capsys, "--images", str(imgs), "--out", out, "--backbone", str(tiny_vit_pt))
    assert code == 0 and "written 3" in stdout and "skipped 0" in stdout and "elapsed" in stdout
    code, _, err = run_main(capsys, "--images", str(imgs), "--out", out, "--backbone", str(tiny_resnet_pt))
    assert code == 2 and "refusing to append" in err and err.count("\n") == 1
    code, stdout, _ = run_main(capsys, "--images", str(imgs), "--out", out, "--backbone", str(tiny_vit_pt))
    assert code == 0 and stdout.startswith("nothing to do")
    (tmp_path / "junk.h5").write_text("not hdf5")
    code, _, err = run_main(capsys, "--images", str(imgs), "--out", str(tmp_path / "junk.h5"), "--backbone",
                            str(tiny_vit_pt))
    assert code == 2 and "not a feature file" in err
    code, _, err = run_main(capsys, "--images", str(imgs), "--out", str(tmp_path / "f.npy"))
    assert code == 2 and "must be an .h5 file" in err


def test_precision_is_recorded_and_appending_with_another_is_refused(imgs, tiny_vit_pt, tmp_path, capsys):
    out = str(tmp_path / "f.h5")
    code, stdout, _ = run_main(capsys, "--images", str(imgs), "--out", out, "--backbone", str(tiny_vit_pt),
                               "--precision", "bf16", "--batch-size", "auto")
    assert code == 0 and "written 3" in stdout
    with h5py.File(out) as f:
        assert f.attrs["precision"] == "bf16" and f.attrs["decode"] == "cpu"
    (imgs / "new.jpg").write_bytes((imgs / "img_00000.jpg").read_bytes())
    try:
        code, _, err = run_main(capsys, "--images", str(imgs), "--out", out, "--backbone", str(tiny_vit_pt))
        assert code == 2 and "precision: 'bf16' vs 'fp32'" in err and err.count("\n") == 1
        code, stdout, _ = run_main(capsys, "--images", str(imgs), "--out", out, "--backbone", str(tiny_vit_pt),
                                   "--precision", "bf16")
        assert code == 0 and "written 1" in stdout and "file now 4 rows" in stdout
    finally:
        (imgs / "new.jpg").unlink()


def test_text_mode_summary_counts_bad_lines(tiny_vit_pt, tmp_path, capsys):
    lines = [json.dumps({"id": "a", "text": "a cat"}), "{broken", json.dumps({"id": "a", "text": "dup"})]
    (tmp_path / "kb.jsonl").write_text("\n".join(lines) + "\n")
    code, stdout, _ = run_main(capsys, "--texts", str(tmp_path / "kb.jsonl"), "--out", str(tmp_path / "kb.h5"),
                               "--backbone", str(tiny_vit_pt))
    assert code == 0 and "written 1" in stdout and "1 duplicate id, 1 malformed json" in stdout
    assert "kb.jsonl:2" in (tmp_path / "kb.skipped.tsv").read_text()


def test_module_form_reports_user_error_quickly(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "feature_extraction.clip_prepro_feats", "--images",
                           str(tmp_path / "missing"), "--out", str(tmp_path / "f.h5")], cwd=REPO, text=True,
                          capture_output=True, env=os.environ | {"HF_HUB_OFFLINE": "1"}, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: --images")
    assert proc.stderr.count("\n") == 1


def test_extract_folder_is_the_one_call_for_the_demo(imgs, tiny_vit_pt, tmp_path):
    from feature_extraction.extract import extract_folder

    summary = extract_folder(imgs, tmp_path / "demo.h5", tiny_vit_pt, num_workers=0, threads=1, progress=False,
                             device="cpu")
    assert summary.written == 3 and summary.total_rows == 3 and (tmp_path / "demo.h5").exists()


def test_default_workers_and_threads_follow_the_device(imgs, tmp_path):
    """No --num-workers: decode in the main process on a CPU (every core to the forward), workers on a GPU."""
    cpus = len(os.sched_getaffinity(0))
    auto = ExtractConfig(out=tmp_path / "f.h5", backbone="RN50", images=imgs)
    assert auto.decode_workers("cpu") == 0 and auto.cpu_threads() == cpus
    assert auto.decode_workers("cuda:0") == min(4, cpus)
    given = ExtractConfig(out=tmp_path / "f.h5", backbone="RN50", images=imgs, num_workers=1)
    assert given.decode_workers("cpu") == given.decode_workers("cuda:0") == 1
    assert given.cpu_threads() == max(1, cpus - 1)
