"""DDP on 2 CPU processes (torchrun, gloo): with gathered negatives the first-step loss (and the weights after two
steps) equal the single-process run on the same global batch; without gathering the loss differs."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file
from train_helpers import log_records, make_data, run_train, train_args

from vlt5r.drivers.train import main

pytestmark = pytest.mark.slow

# dropout 0: two ranks draw other dropout masks than one process would; everything else is deterministic.
# the batch pool (the gathered pool is what this file checks); KB-wide negatives have their own test below
EXTRA = ["--dropout", "0", "--max-steps", "2", "--log-every", "1", "--hard-negatives", "2", "--negatives", "batch"]


def first_losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in log_records(run_dir, "train")]


def test_two_processes_with_gathered_negatives_equal_one_process(tmp_path: Path) -> None:
    data = make_data(tmp_path / "data")
    single, gathered, local = tmp_path / "single", tmp_path / "gathered", tmp_path / "local"
    assert main(train_args(data, single, *EXTRA)) == 0

    proc = run_train(train_args(data, gathered, *EXTRA), torchrun=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "joined the gloo group" in proc.stderr
    want, got = first_losses(single), first_losses(gathered)
    assert len(got) == 2 and got == pytest.approx(want, rel=1e-5)
    a = load_file(str(single / "last" / "model.safetensors"))
    b = load_file(str(gathered / "last" / "model.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5  # DDP's averaged gradient = the global one

    proc = run_train(train_args(data, local, *EXTRA, "--no-gather-negatives"), torchrun=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # each rank sees only its own half of the pool: fewer candidates, another loss
    assert first_losses(local)[0] != pytest.approx(want[0], rel=1e-3)
    assert log_records(local, "train")[0]["candidates"] < log_records(single, "train")[0]["candidates"]


def test_kb_wide_negatives_two_processes_equal_one_process(tmp_path: Path) -> None:
    """--negatives all (the default): each rank scores its own queries against the whole KB, nothing gathered;
    DDP's averaged gradient equals the single-process one."""
    data = make_data(tmp_path / "data")
    kb_wide = ["--dropout", "0", "--max-steps", "2", "--log-every", "1", "--negatives", "all"]
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    assert main(train_args(data, single, *kb_wide)) == 0
    proc = run_train(train_args(data, ddp, *kb_wide), torchrun=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert first_losses(ddp) == pytest.approx(first_losses(single), rel=1e-5)
    assert log_records(single, "train")[0]["candidates"] == len(data["kb"].read_text().splitlines())
    a = load_file(str(single / "last" / "model.safetensors"))
    b = load_file(str(ddp / "last" / "model.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5
