"""How one CLIP training step is computed: open_clip-style accumulation with a feature cache
(``--accum-freq K``) gives the gradient of the whole contrastive batch's loss (float64, CLIP and SigLIP, ViT and
ResNet with frozen BatchNorm statistics; float32 through the engine and under DDP) and resumes exactly;
``--parallel dp`` (DataParallel) gives the single-process step."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from train_helpers import free_port

from clip_family.config import tiny_config
from clip_family.data import open_dataset
from clip_family.model import ClipFamilyModel
from clip_family.training import CLIPTask, split_batch, train
from foundations.errors import ConfigError, UserError
from test_clip_train import config, small, weights  # noqa: F401  (small: the 48-scan digits fixture)


def step_gradients(task: CLIPTask, batch: dict) -> tuple[dict[str, Tensor], float]:
    """The parameter gradients and the logged loss of one ``training_step`` (what the engine calls)."""
    task.model.zero_grad(set_to_none=True)
    metrics = task.training_step(task, batch, contextlib.nullcontext, lambda loss: loss.backward())
    return {n: p.grad.clone() for n, p in task.model.named_parameters() if p.grad is not None}, float(metrics["loss"])


@pytest.mark.parametrize("resnet", [False, True])
@pytest.mark.parametrize("variant", ["CLIP", "SigLIP"])
def test_accumulated_gradient_equals_the_whole_batch_gradient(tmp_path: Path, small: tuple[Path, Path], variant: str,
                                                              resnet: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    import clip.model

    monkeypatch.setattr(clip.model.LayerNorm, "forward", nn.LayerNorm.forward)  # OpenAI's casts to float32
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest (the autouse fixture restores the setting)
    data = open_dataset(str(small[0]))
    torch.manual_seed(3)
    model = ClipFamilyModel(tiny_config(variant, resnet=resnet)).double()
    with torch.no_grad():  # OpenAI's init zeroes each bottleneck's last BatchNorm weight: nothing before it learns
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5), module.running_mean.normal_(0, 0.1)

    def task(k: int) -> CLIPTask:
        out = CLIPTask(model, data, None, config(tmp_path, small[0], None, model__variant=variant,
                                                 optim__accum_freq=k))
        out.train()
        for module in model.modules():  # BatchNorm on its running statistics: the whole batch and its pieces agree
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
        return out

    whole_task = task(1)
    batch = next(iter(whole_task.train_batches(0, 0, 1)))
    batch["pixels"] = batch["pixels"].double()  # (8, 3, R, R)
    rows: list[int] = []
    features = model.features
    monkeypatch.setattr(model, "features", lambda pixels, *a: rows.append(len(pixels)) or features(pixels, *a))

    whole, whole_loss = step_gradients(whole_task, batch)
    assert rows == [8]
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert whole.keys() == names and all(float(g.abs().max()) > 0 for g in whole.values())
    for k in (2, 4):
        rows.clear()
        pieces, loss = step_gradients(task(k), batch)
        assert rows == [8 // k] * (2 * k)  # every piece once without grad, then once with grad
        assert pieces.keys() == names
        worst = max(float((pieces[n] - whole[n]).abs().max()) for n in names)
        assert worst <= 1e-12, (k, worst)
        assert abs(loss - whole_loss) <= 1e-12

    # what the engine's --grad-accum does instead (each piece its own contrastive batch) is another gradient
    model.zero_grad(set_to_none=True)
    for piece in split_batch(batch, 2):
        (whole_task.training_forward(piece)[0] / 2).backward()
    assert max(float((p.grad - whole[n]).abs().max()) for n, p in model.named_parameters() if n in names) > 1e-4


def _train_records(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r["kind"] == "train"]


def test_accum_freq_in_the_engine_matches_the_whole_batch_and_resumes_exactly(tmp_path: Path,
                                                                              small: tuple[Path, Path]) -> None:
    # AdamW's first step is lr * g / (|g| + eps): with the default eps a float32 rounding of a gradient near 0 moves
    # a weight by up to lr; eps = 1 makes the step proportional to the gradient, so equal gradients show as equal
    one = {"loop__max_steps": 1, "loop__log_every": 1, "optim__eps": 1.0}
    train(config(tmp_path / "plain", small[0], None, **one))
    train(config(tmp_path / "pieces", small[0], None, optim__accum_freq=4, **one))  # 4 pieces of 2 rows
    plain, pieces = weights(tmp_path / "plain/last"), weights(tmp_path / "pieces/last")
    assert max(float((plain[k] - pieces[k]).abs().max()) for k in plain) <= 1e-6
    first = [_train_records(tmp_path / run)[0]["loss"] for run in ("plain", "pieces")]
    assert abs(first[0] - first[1]) <= 1e-6

    both = {"optim__accum_freq": 2, "optim__grad_accum": 2}  # K pieces inside, 2 contrastive batches per step
    whole = train(config(tmp_path / "whole", small[0], None, **both))
    stopped = train(config(tmp_path / "split", small[0], None, loop__max_steps=1, **both))
    resumed = train(config(tmp_path / "split", small[0], None, **both))
    assert (stopped.global_step, resumed.global_step, whole.global_step) == (1, 3, 3)
    a, b = weights(tmp_path / "whole/last"), weights(tmp_path / "split/last")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["CLIP", "SigLIP"])
def test_ddp_with_accum_freq_equals_the_single_process_whole_batch(tmp_path: Path, small: tuple[Path, Path],
                                                                   variant: str) -> None:
    """2 torchrun ranks x 2 pieces of 4 rows (cache pass through DDP, no_sync but on the last piece, the loss
    gathered across ranks in every piece) = one process over the whole batch of 16."""
    flags = ["--model-name", "tiny", "--variant", variant, "--train-data", str(small[0]), "--batch-size", "16",
             "--max-steps", "1", "--no-progress", "--no-tensorboard", "--no-curves", "--threads", "1", "--lr", "1e-3",
             "--device", "cpu", "--eps", "1e-4"]  # eps: see test_clip_train's DDP test
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "vlt5r", "clip-train", *flags, "--parallel", "single", "--out",
                             str(tmp_path / "one")], env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          str(free_port()), "-m", "vlt5r", "clip-train", *flags, "--accum-freq", "2", "--parallel", "ddp",
                          "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a, b = weights(tmp_path / "one/last"), weights(tmp_path / "two/last")
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= 1e-6, worst


def test_accum_freq_must_divide_the_batch(tmp_path: Path, small: tuple[Path, Path]) -> None:
    with pytest.raises(ConfigError, match="divisible by optim.accum_freq 3"):
        config(tmp_path, small[0], None, optim__accum_freq=3)
    with pytest.raises(ConfigError, match="accum_freq must be >= 1"):
        config(tmp_path, small[0], None, optim__accum_freq=0)


@pytest.mark.parametrize("accum_freq", [1, 2])
def test_dp_first_step_equals_single(tmp_path: Path, small: tuple[Path, Path], accum_freq: int,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    forward = nn.DataParallel.forward
    monkeypatch.setattr(nn.DataParallel, "forward",
                        lambda self, pixels, *a: calls.append(len(pixels)) or forward(self, pixels, *a))
    runs = {}
    for mode in ("single", "dp"):
        runs[mode] = train(config(tmp_path / mode, small[0], None, loop__parallel=mode, loop__max_steps=1,
                                  loop__log_every=1, optim__accum_freq=accum_freq))
        assert calls == ([] if mode == "single" else [8 // accum_freq] * (1 if accum_freq == 1 else 2 * accum_freq))
    a, b = weights(tmp_path / "single/last"), weights(tmp_path / "dp/last")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _train_records(tmp_path / "single")[0]["loss"] == _train_records(tmp_path / "dp")[0]["loss"]


def test_parallel_mode_must_fit_the_launch(tmp_path: Path, small: tuple[Path, Path]) -> None:
    with pytest.raises(UserError, match="--parallel ddp: launch with torchrun"):
        train(config(tmp_path / "ddp", small[0], None, loop__parallel="ddp", loop__max_steps=1))
    with pytest.raises(ConfigError, match="loop.parallel must be one of"):
        config(tmp_path, small[0], None, loop__parallel="threads")
    assert not (tmp_path / "ddp").exists()


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_dp_over_two_gpus_matches_one_gpu(tmp_path: Path, small: tuple[Path, Path],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    data_parallel = importlib.import_module("torch.nn.parallel.data_parallel")  # the module, not the function
    replicas: list[int] = []
    apply = data_parallel.parallel_apply
    monkeypatch.setattr(data_parallel, "parallel_apply",
                        lambda mods, *a, **k: replicas.append(len(mods)) or apply(mods, *a, **k))
    for mode in ("single", "dp"):
        train(config(tmp_path / mode, small[0], None, loop__parallel=mode, loop__max_steps=2, loop__device="cuda",
                     data__batch_size=16))
    assert replicas and set(replicas) == {torch.cuda.device_count()}
    a, b = weights(tmp_path / "single/last"), weights(tmp_path / "dp/last")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-4
