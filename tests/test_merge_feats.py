"""Sharded extraction + merge equals the unsharded run (content and bytes); mismatched shards are refused."""

from __future__ import annotations

import shutil
import subprocess
import sys

import h5py
import pytest
from helpers_extract import REPO, assert_same_content, extract_with

from vlt5r.drivers import extract as clip_prepro_feats, merge as merge_feats
from feature_extraction.config import ShardSpec, UsageError
from feature_extraction.merge_feats import merge_shards
from feature_extraction.tiny import make_image_folder

N_SHARDS = 3


@pytest.fixture(scope="module")
def runs(tiny_vit_pt, tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    make_image_folder(root / "imgs", 23, size=(64, 48))
    (root / "imgs" / "img_00004z.png").write_bytes(b"\x89PNG not really")  # one skip, in shard 0
    extract_with(root / "all.h5", tiny_vit_pt, images=root / "imgs", batch_size=3)
    shards = []
    for shard_id in range(N_SHARDS):
        extract_with(root / "feats.h5", tiny_vit_pt, images=root / "imgs", batch_size=3,
                     shard=ShardSpec(N_SHARDS, shard_id))
        shards.append(root / f"feats-{shard_id:05d}-of-{N_SHARDS:05d}.h5")
    return root, shards


def test_merged_shards_equal_the_unsharded_run(runs, tmp_path):
    root, shards = runs
    assert all(p.exists() for p in shards)
    assert merge_shards(list(reversed(shards)), tmp_path / "merged.h5") == 23  # argument order does not matter
    assert_same_content(tmp_path / "merged.h5", root / "all.h5")
    assert (tmp_path / "merged.h5").read_bytes() == (root / "all.h5").read_bytes()


def test_torchrun_environment_writes_the_rank_shard(runs, tiny_vit_pt, tmp_path, monkeypatch, capsys):
    root, shards = runs
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", str(N_SHARDS))
    code = clip_prepro_feats.main(["--images", str(root / "imgs"), "--out", str(tmp_path / "feats.h5"),
                                   "--backbone", str(tiny_vit_pt), "--batch-size", "3", "--num-workers", "0",
                                   "--dtype", "float32", "--device", "cpu", "--no-progress"])
    assert code == 0 and "written" in capsys.readouterr().out
    assert_same_content(tmp_path / f"feats-00001-of-{N_SHARDS:05d}.h5", shards[1])


def _copy_with_attr(src, dst, **attrs):
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        for key, value in attrs.items():
            f.attrs[key] = value
    return dst


def test_mismatched_shards_are_refused(runs, tiny_vit_pt, tmp_path, capsys):
    root, shards = runs
    with pytest.raises(UsageError, match=r"missing shard\(s\) \[1\] of 3"):
        merge_shards([shards[0], shards[2]], tmp_path / "m.h5")
    with pytest.raises(UsageError, match="shard 0 given twice"):
        merge_shards([shards[0], shards[0], shards[1], shards[2]], tmp_path / "m.h5")
    other_dtype = _copy_with_attr(shards[1], tmp_path / "s1.h5", dtype="float16")
    with pytest.raises(UsageError, match="does not match.*dtype"):
        merge_shards([shards[0], other_dtype, shards[2]], tmp_path / "m.h5")
    same_rows = _copy_with_attr(shards[0], tmp_path / "s0_as_1.h5", shard_id=1)
    with pytest.raises(UsageError, match="item 'img_00000' is in two shards"):
        merge_shards([shards[0], same_rows, shards[2]], tmp_path / "m.h5")
    (tmp_path / "s0_as_1.h5.partial").mkdir()
    with pytest.raises(UsageError, match="unfinished run"):
        merge_shards([shards[0], same_rows, shards[2]], tmp_path / "m.h5")
    extract_with(tmp_path / "f.h5", tiny_vit_pt, images=root / "imgs", batch_size=3)  # unsharded file: no shard 1/2
    with pytest.raises(UsageError, match="does not match.*num_shards: 3 vs 1"):
        merge_shards([shards[0], shards[1], shards[2], tmp_path / "f.h5"], tmp_path / "m.h5")
    assert not (tmp_path / "m.h5").exists()

    code = merge_feats.main(["--out", str(tmp_path / "m.h5"), str(shards[0]), str(shards[2])])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: missing shard") and err.count("\n") == 1


def test_script_form_reports_a_missing_shard_file(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "feature_extraction" / "merge_feats.py"), "--out",
                           str(tmp_path / "m.h5"), str(tmp_path / "missing.h5")], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 1  # a user error (a missing file): exit 1, one line
    assert proc.stderr == f"error: {tmp_path / 'missing.h5'}: no such feature file or directory\n"
