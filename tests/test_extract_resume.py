"""Kill-safety: a run SIGKILLed at any moment, then rerun, ends with exactly the file of an uninterrupted run
(same ids, fc, grid, attributes - and the same bytes); appends refuse other settings; reruns are no-ops.
Each of these runs three ways: fp32, ``--precision bf16``, and ``--decode gpu`` (on this CPU: torchvision's decoder
in the main process, the same code path as on a GPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers_extract import REPO, assert_same_content, extract_with, read_all

from feature_extraction.config import UsageError
from feature_extraction.tiny import make_image_folder

BATCH, CHUNK = 4, 8  # two batches per committed chunk
MODES = {"fp32": {"precision": "fp32"}, "bf16": {"precision": "bf16"}, "decode-gpu": {"decode": "gpu"}}


@pytest.fixture(scope="module", params=list(MODES))
def mode(request) -> dict[str, str]:
    """The settings every run of a test uses (``extract_with`` keywords = CLI flags)."""
    return MODES[request.param]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("imgs")
    make_image_folder(folder, 40, size=(64, 48))
    (folder / "img_00003x.jpg").write_bytes(b"")  # a bad file inside the first chunk: its skip must survive
    return folder


@pytest.fixture(scope="module")
def reference(folder, tiny_vit_pt, mode, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "feats.h5"
    summary = extract_with(out, tiny_vit_pt, images=folder, batch_size=BATCH, chunk_size=CHUNK, **mode)
    assert summary.written == 40 and summary.skipped == {"empty file": 1}
    return out


def run_script(out: Path, folder: Path, backbone: Path, env_extra: dict[str, str], mode: dict[str, str],
               wait: bool = True) -> subprocess.Popen:
    cmd = [sys.executable, str(REPO / "feature_extraction" / "clip_prepro_feats.py"), "--images", str(folder),
           "--out", str(out), "--backbone", str(backbone), "--batch-size", str(BATCH), "--chunk-size", str(CHUNK),
           "--num-workers", "1", "--threads", "1", "--dtype", "float32", "--device", "cpu", "--no-progress", "--quiet"]
    cmd += [arg for key, value in mode.items() for arg in (f"--{key}", value)]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"} | env_extra
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if wait:
        proc.communicate(timeout=300)
    return proc


def resume_and_compare(out: Path, folder: Path, backbone: Path, reference: Path, mode: dict[str, str]) -> None:
    summary = extract_with(out, backbone, images=folder, batch_size=BATCH, chunk_size=CHUNK, **mode)
    assert_same_content(out, reference)
    assert out.read_bytes() == reference.read_bytes()
    assert not Path(str(out) + ".partial").exists()
    assert summary.total_rows == 40


def test_sigkill_mid_chunk_then_rerun_equals_uninterrupted_run(folder, tiny_vit_pt, reference, mode, tmp_path):
    out = tmp_path / "feats.h5"
    proc = run_script(out, folder, tiny_vit_pt, {"VLT5_EXTRACT_TEST_KILL": "batch:5"}, mode)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    spool = tmp_path / "feats.h5.partial"
    assert not out.exists()
    assert sorted(p.name for p in spool.iterdir()) == ["chunk-000000.h5", "chunk-000001.h5",
                                                        "chunk-000002.h5.tmp", "meta.json"]
    resume_and_compare(out, folder, tiny_vit_pt, reference, mode)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["chunk:3", "consolidate:1", "replaced:1"])
def test_sigkill_at_each_kind_of_moment(point, folder, tiny_vit_pt, reference, mode, tmp_path):
    out = tmp_path / "feats.h5"
    proc = run_script(out, folder, tiny_vit_pt, {"VLT5_EXTRACT_TEST_KILL": point}, mode)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert out.exists() == (point == "replaced:1")
    resume_and_compare(out, folder, tiny_vit_pt, reference, mode)


@pytest.mark.slow
def test_external_sigkill_at_an_unplanned_moment(folder, tiny_vit_pt, reference, mode, tmp_path):
    out = tmp_path / "feats.h5"
    proc = run_script(out, folder, tiny_vit_pt, {"VLT5_EXTRACT_TEST_DELAY": "0.15"}, mode, wait=False)
    spool = tmp_path / "feats.h5.partial"
    deadline = time.time() + 120
    while len(list(spool.glob("chunk-*.h5"))) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(0.07)  # somewhere inside the next batch
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL and not out.exists()
    resume_and_compare(out, folder, tiny_vit_pt, reference, mode)


def test_append_new_items_keeps_old_rows_and_refuses_other_settings(folder, tiny_vit_pt, tiny_resnet_pt, reference,
                                                                     mode, tmp_path):
    part = tmp_path / "part"
    part.mkdir()
    for path in sorted(folder.glob("img_0001*.jpg")):
        (part / path.name).symlink_to(path)
    out = tmp_path / "feats.h5"
    assert extract_with(out, tiny_vit_pt, images=part, **mode).written == 10
    summary = extract_with(out, tiny_vit_pt, images=folder, batch_size=BATCH, **mode)
    assert summary.written == 30 and summary.total_rows == 40
    ids, fc, grid, _ = read_all(out)
    ref_ids, ref_fc, ref_grid, _ = read_all(reference)
    assert ids[:10] == [f"img_{i:05d}" for i in range(10, 20)] and sorted(ids) == sorted(ref_ids)
    order = [ref_ids.index(i) for i in ids]
    np.testing.assert_allclose(fc, ref_fc[order], atol=1e-5, rtol=0)
    np.testing.assert_allclose(grid, ref_grid[order], atol=1e-5, rtol=0)

    with pytest.raises(UsageError, match="tiny_rn.pt.*refusing to append"):
        extract_with(out, tiny_resnet_pt, images=folder, **mode)
    with pytest.raises(UsageError, match="dtype"):
        extract_with(out, tiny_vit_pt, images=folder, dtype="float16", **mode)
    with pytest.raises(UsageError, match="has_grid"):
        extract_with(out, tiny_vit_pt, images=folder, grid=False, **mode)
    other = {"precision": "fp32" if mode.get("precision") == "bf16" else "bf16"}
    with pytest.raises(UsageError, match=r"precision: '\w+' vs '\w+'"):
        extract_with(out, tiny_vit_pt, images=folder, **(mode | other))
    with pytest.raises(UsageError, match="decode: 'cpu' vs 'gpu'|decode: 'gpu' vs 'cpu'"):
        extract_with(out, tiny_vit_pt, images=folder, **(mode | {"decode": "cpu" if "decode" in mode else "gpu"}))
    assert read_all(out)[0] == ids  # untouched


def test_unfinished_spool_from_other_settings_is_refused(folder, tiny_vit_pt, tmp_path):
    out = tmp_path / "feats.h5"
    spool = tmp_path / "feats.h5.partial"
    spool.mkdir()
    (spool / "meta.json").write_text(json.dumps({"modality": "image", "backbone_sha256": "0" * 64}))
    with pytest.raises(UsageError, match=r"feats\.h5\.partial holds an unfinished run"):
        extract_with(out, tiny_vit_pt, images=folder)


def test_second_writer_of_the_same_output_is_refused(folder, tiny_vit_pt, tmp_path):
    from feature_extraction.spool import exclusive_run

    out = tmp_path / "feats.h5"
    with exclusive_run(out):  # as if another process were running the same command
        with pytest.raises(UsageError, match="another process is writing"):
            extract_with(out, tiny_vit_pt, images=folder)
    assert not (tmp_path / "feats.h5.lock").exists()
