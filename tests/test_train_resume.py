"""Exact resume: SIGKILL after a checkpoint and during one, resume, and end with the uninterrupted run's weights.

The run exercises everything an exact resume has to restore: dropout (torch RNG), sampled hard negatives
(data position), gradient accumulation mid-epoch, a learned temperature, AdamW moments and the LR schedule, and
a DataLoader worker in the killed runs (0 workers in the reference: the loader must not change the numbers).
Kill points are deterministic: the test-only variable ``VLT5_TRAIN_TEST_KILL`` makes the process SIGKILL itself.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import log_records, make_data, run_train, train_args

from vlt5r.drivers.train import main
from engine.checkpoint import KILL_ENV

pytestmark = pytest.mark.slow

EXTRA = ["--dropout", "0.1", "--grad-accum", "2", "--epochs", "3", "--save-every", "2", "--learn-temperature",
         "--log-every", "1", "--warmup-steps", "2", "--schedule", "cosine",
         "--negatives", "batch", "--kb-negatives", "3"]  # sampled hard negatives and sampled KB rows must replay


def step_of(checkpoint: Path) -> int:
    return json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]


def test_sigkill_resume_matches_the_uninterrupted_run(tmp_path: Path) -> None:
    data = make_data(tmp_path / "data", train=12)  # 24 queries: 6 micro-batches of 4 = 3 steps per epoch
    killed, reference = tmp_path / "killed", tmp_path / "reference"

    # 1. killed right after the checkpoint of step 4 (epoch 2, mid-epoch)
    proc = run_train(train_args(data, killed, *EXTRA, "--num-workers", "1"), env={KILL_ENV: "after_save:4"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert step_of(killed / "last") == 4

    # 2. resumed, then killed in the middle of writing the checkpoint of step 6: 'last' must still be step 4
    proc = run_train(train_args(data, killed, *EXTRA, "--num-workers", "1", "--resume"),
                     env={KILL_ENV: "during_save:6"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (killed / ".last.tmp").is_dir() and step_of(killed / "last") == 4
    assert "resumed from" in proc.stderr

    # 3. resumed again (in process) to the end; 4. the reference, never interrupted
    assert main(train_args(data, killed, *EXTRA)) == 0
    assert main(train_args(data, reference, *EXTRA)) == 0
    assert step_of(killed / "last") == step_of(reference / "last") == 9

    got, want = load_file(str(killed / "last" / "model.safetensors")), load_file(str(reference / "last" /
                                                                                      "model.safetensors"))
    assert got.keys() == want.keys()
    worst = max((got[k] - want[k]).abs().max().item() for k in got)
    assert worst <= 1e-6, worst
    moved = max((want[k] - load_file(str(reference / "init" / "model.safetensors"))[k]).abs().max().item()
                for k in want)
    assert moved > 1e-3  # training did change the weights
    tau = [torch.load(d / "last" / "training_state.pt", weights_only=True)["log_temperature"]
           for d in (killed, reference)]
    assert torch.allclose(tau[0], tau[1], atol=1e-6, rtol=0)
    # every optimizer step of the killed run logged the same loss as the reference (steps 5-6 twice: re-run)
    losses = {r["step"]: r["loss"] for r in log_records(killed, "train")}
    assert losses == pytest.approx({r["step"]: r["loss"] for r in log_records(reference, "train")}, abs=1e-6)
