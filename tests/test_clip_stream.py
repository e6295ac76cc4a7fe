"""Streamed webdataset shards in CLIP training (clip_family/stream.py): shards per rank cover every shard once, the
size index, an epoch's stream is a pure function of (seed, epoch, rank) that uses each sample once, equal batch
counts over ranks with bad samples skipped and counted, and a stopped + resumed streamed run ends bit-identical to
an uninterrupted one."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from train_helpers import free_port

from clip_family.data import count_samples, rank_shards, read_webdataset
from clip_family.digits import NAMES, write_digits_folders
from clip_family.model import build
from clip_family.stream import ShardStream, shard_sizes
from clip_family.training import ClipTrainConfig, StreamingCLIPTask, build_task, train
from engine.distributed import DistEnv
from foundations.config import from_dict
from foundations.errors import UserError
from foundations.images import decode_image

SIZES = (20, 16, 12)  # good samples per shard: uneven on purpose


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 digit scans in 3 shards of 20, 16, 12 good samples; shard 1 also holds an unreadable image, a sample
    without image, one with an empty caption and a repeated key."""
    root = tmp_path_factory.mktemp("stream")
    train_dir, _ = write_digits_folders(root / "digits", n_train=48)
    images = sorted((train_dir / "images").glob("*.png"))
    out = root / "shards"
    out.mkdir()
    start = 0
    for n, size in enumerate(SIZES):
        with tarfile.open(out / f"shard-{n:03d}.tar", "w") as tar:
            for path in images[start: start + size]:
                _add(tar, f"{path.stem}.png", path.read_bytes())
                _add(tar, f"{path.stem}.txt", (train_dir / "captions" / f"{path.stem}.txt").read_bytes())
            if n == 1:
                _add(tar, "broken.jpg", b"not an image"), _add(tar, "broken.txt", b"a broken scan")
                _add(tar, "lonely.txt", b"no image")
                _add(tar, "mute.png", images[0].read_bytes()), _add(tar, "mute.txt", b"  ")
                first = images[start]
                _add(tar, f"{first.stem}.png", first.read_bytes()), _add(tar, f"{first.stem}.txt", b"again")
        start += size
    return out


def keys(items: list[tuple]) -> list[str]:
    return [item.key for item, _, _ in items]


def take(stream: ShardStream, epoch: int, n: int) -> list[tuple]:
    samples = stream.epoch(epoch)
    return [next(samples) for _ in range(n)]


def test_shards_per_rank_cover_every_shard_exactly_once() -> None:
    for n in range(1, 8):
        for world in range(1, n + 1):
            parts = [rank_shards(n, r, world) for r in range(world)]
            assert sorted(i for part in parts for i in part) == list(range(n)), (n, world)
            assert all(part for part in parts)
    with pytest.raises(UserError, match="3 shard"):
        ShardStream([Path(f"{i}.tar") for i in range(3)], {0: 1, 1: 1, 2: 1}, rank=0, world=4)


def test_size_index_and_sizes_json(shards: Path, tmp_path: Path) -> None:
    paths = sorted(shards.glob("*.tar"))
    # the index sees tar headers and captions: no image / empty caption / repeated key are out; an undecodable
    # image is only found when decoded, so it is counted here
    assert [count_samples(p) for p in paths] == [20, 16 + 1, 12]
    assert shard_sizes(paths) == {0: 20, 1: 17, 2: 12}
    assert shard_sizes(paths, [2]) == {2: 12}
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in paths:
        (copy / p.name).write_bytes(p.read_bytes())
    (copy / "sizes.json").write_text(json.dumps({"shard-000.tar": 5, "shard-002.tar": 7}))  # open_clip's file
    assert shard_sizes(sorted(copy.glob("*.tar"))) == {0: 5, 1: 17, 2: 7}
    (copy / "sizes.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="sizes.json"):
        shard_sizes(sorted(copy.glob("*.tar")))


def test_an_epoch_is_a_pure_function_of_seed_and_epoch_and_uses_each_sample_once(shards: Path) -> None:
    paths = sorted(shards.glob("*.tar"))
    good = {it.key for it in read_webdataset(paths).items}
    assert len(good) == 48
    stream = ShardStream(paths, shard_sizes(paths), seed=3, buffer=5)
    first = take(stream, 0, 48)
    assert sorted(keys(first)) == sorted(good)  # every good sample once, the broken one skipped
    assert stream.reports[-1].skipped["unreadable image (not an image)"] == 1
    assert stream.reports[-1].skipped["missing image"] == 1 and stream.reports[-1].skipped["empty caption"] == 1
    assert stream.reports[-1].skipped["duplicate id"] == 1
    again = take(ShardStream(paths, shard_sizes(paths), seed=3, buffer=5), 0, 48)
    assert keys(again) == keys(first) and [c for _, c, _ in again] == [c for _, c, _ in first]
    assert keys(take(stream, 1, 48)) != keys(first)  # another epoch, another order
    assert keys(take(ShardStream(paths, shard_sizes(paths), seed=4, buffer=5), 0, 48)) != keys(first)
    # the buffer mixes across shard boundaries: with buffer 0 each shard's samples come out together, in order
    plain = keys(take(ShardStream(paths, shard_sizes(paths), seed=3, buffer=0), 0, 48))
    runs = sum(1 for a, b in zip(plain, plain[1:]) if int(a.split("_")[-1]) + 1 != int(b.split("_")[-1]))
    assert runs <= 2 and keys(first) != plain
    # decoded images are the stored bytes' images; captions are the items' own
    by_key = {it.key: it for it in read_webdataset(paths).items}
    item, caption, image = first[0]
    assert caption in by_key[item.key].captions
    assert np.array_equal(np.asarray(image), np.asarray(decode_image(by_key[item.key].image)))


def test_two_ranks_run_equal_batches_on_their_own_shards(shards: Path) -> None:
    paths = sorted(shards.glob("*.tar"))
    sizes = shard_sizes(paths)
    ranks = [ShardStream(paths, sizes, rank=r, world=2, seed=0, buffer=4) for r in range(2)]
    # rank 0: shards 0 + 2 (32 index samples), rank 1: shard 1 (17, one of them undecodable)
    assert ranks[0].samples_per_rank() == ranks[1].samples_per_rank() == [32, 17]
    assert ranks[0].batches_per_epoch(4) == ranks[1].batches_per_epoch(4) == 4  # 17 // 4; rank 0 drops 16
    own_keys = [{it.key for it in read_webdataset([paths[i] for i in rank_shards(3, r, 2)]).items} for r in range(2)]
    drawn = [keys(take(s, 0, 16)) for s in ranks]
    for r in range(2):
        assert set(drawn[r]) <= own_keys[r] and len(set(drawn[r])) == 16
    assert not set(drawn[0]) & set(drawn[1])
    # rank 1 holds 16 good samples: 17 draws read its shard a second time (another order)
    more = keys(take(ranks[1], 0, 17))
    assert sorted(more[:16]) == sorted(own_keys[1]) and more[16] in own_keys[1]
    assert ranks[1].reports[-1].skipped["unreadable image (not an image)"] >= 1


def config(out: Path, data: str, **data_overrides: object) -> ClipTrainConfig:
    return from_dict(ClipTrainConfig, {
        "model": {"model_name": "tiny", "variant": "CLIP"},
        "data": {"train_data": data, "batch_size": 8, "shuffle_buffer": 6, **data_overrides},
        "optim": {"lr": 1e-3, "schedule": "constant", "warmup_ratio": 0.0},
        "loop": {"out": str(out), "epochs": 2, "progress": False, "tensorboard": False, "curves": False,
                 "threads": 1, "save_init": False},
        "eval": {"classes": list(NAMES), "templates": ["a handwritten {}"]}})


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def test_streamed_training_stopped_and_resumed_equals_uninterrupted(tmp_path: Path, shards: Path) -> None:
    task = build_task(config(tmp_path / "x", str(shards)), DistEnv())
    assert isinstance(task, StreamingCLIPTask) and task.micro_batches_per_epoch() == 48 // 8
    batch = next(iter(task.train_batches(0, 0, 1)))
    assert batch["pixels"].shape == (8, 3, 32, 32)

    whole = train(config(tmp_path / "a", str(shards)))
    assert whole.global_step == 12
    stopped = config(tmp_path / "b", str(shards))
    stopped.loop.max_steps = 4  # mid epoch 0: the rerun regenerates epoch 0's stream and skips 4 micro-batches
    assert train(stopped).global_step == 4
    resumed = train(config(tmp_path / "b", str(shards)))
    assert resumed.global_step == 12
    a, b = weights(tmp_path / "a/last"), weights(tmp_path / "b/last")
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(UserError, match="no-stream-shards"):
        StreamingCLIPTask(build("tiny", "CLIP"), task.stream, None, config(tmp_path / "c", str(shards),
                                                                         cache_images=True))


def test_cli_streams_shards_and_reads_them_into_memory_on_request(tmp_path: Path, shards: Path) -> None:
    from vlt5r.main import main

    flags = ["--model-name", "tiny", "--train-data", str(shards), "--batch-size", "8", "--max-steps", "1",
             "--no-progress", "--no-tensorboard", "--no-curves", "--threads", "1", "--no-save-init"]
    assert main(["clip-train", *flags, "--out", str(tmp_path / "s")]) == 0
    assert main(["clip-train", *flags, "--cache-images", "--out", str(tmp_path / "c")]) == 1  # one error line
    assert main(["clip-train", *flags, "--no-stream-shards", "--cache-images", "--out", str(tmp_path / "m")]) == 0
    assert main(["clip-train", *flags[:4], "--batch-size", "64", *flags[6:], "--out", str(tmp_path / "big")]) == 1


@pytest.mark.slow
def test_ddp_two_ranks_stream_uneven_shards_to_the_end(tmp_path: Path, shards: Path) -> None:
    """2 torchrun ranks on shards of 32 and 17 (one undecodable) samples: both run the same 4 micro-batches of 4
    per epoch (the larger rank drops the rest), no hang, the same number of steps as one epoch says."""
    flags = ["--model-name", "tiny", "--train-data", str(shards), "--batch-size", "8", "--epochs", "2",
             "--no-progress", "--no-tensorboard", "--no-curves", "--threads", "1", "--device", "cpu",
             "--no-save-init", "--shuffle-buffer", "4"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          str(free_port()), "-m", "vlt5r", "clip-train", *flags, "--out", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    state = json.loads((tmp_path / "two/last/trainer_state.json").read_text())
    assert state["global_step"] == 2 * (17 // 4)
    assert "usable samples per rank [32, 17]" in ddp.stderr
