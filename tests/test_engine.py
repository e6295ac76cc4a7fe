"""The generic training engine on a toy task (a 2-layer regressor, CPU, a second or two per run): it learns and
writes its run dir, gradient accumulation equals the bigger batch, the per-group freeze/unfreeze schedule, an exact
resume after a crash right after a checkpoint, the LR schedule by hand, curves.png, and no imports of the rooms."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

import engine
from engine import checkpoint as ckpt
from engine.config import FreezeRule, LoopConfig, OptimConfig
from engine.curves import draw_curves, series
from engine.fit import changed_settings
from engine.optim import lr_factor
from foundations.errors import ConfigError, UserError

REPO = Path(__file__).resolve().parents[1]
N_TRAIN, N_DEV, D_IN, D_HID = 48, 16, 5, 7


class ToyTask(engine.Task):
    """y = x . w* + noise, learned by Linear(5, 7) -> tanh -> dropout -> Linear(7, 1); groups 'first', 'second'."""

    select_metric = "mse"
    select_mode = "min"

    def __init__(self, batch: int, dropout: float = 0.0, lrs: tuple[float, float] = (0.05, 0.05)) -> None:
        super().__init__()
        self.first, self.second = nn.Linear(D_IN, D_HID), nn.Linear(D_HID, 1)
        self.dropout = nn.Dropout(dropout)
        rng = np.random.default_rng(7)
        w = rng.standard_normal(D_IN)
        x = rng.standard_normal((N_TRAIN + N_DEV, D_IN)).astype(np.float32)
        y = (x @ w + 0.01 * rng.standard_normal(len(x))).astype(np.float32)
        self.register_buffer("x", torch.from_numpy(x), persistent=False)  # follows .to(device), not saved
        self.register_buffer("y", torch.from_numpy(y), persistent=False)
        self.batch, self.lrs = batch, lrs
        self.snapshots: list[dict[str, Tensor]] = []  # parameters at each forward (tests of the freeze schedule)

    def predict(self, x: Tensor) -> Tensor:
        return self.second(self.dropout(torch.tanh(self.first(x)))).squeeze(-1)

    def training_forward(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        self.snapshots.append({k: v.detach().clone() for k, v in self.state_dict().items()})
        x, y = batch
        loss = ((self.predict(x) - y) ** 2).mean()
        return loss, {"loss": loss.detach()}

    def param_groups(self) -> list[dict[str, Any]]:
        return [{"name": "first", "params": list(self.first.parameters()), "lr": self.lrs[0]},
                {"name": "second", "params": list(self.second.parameters()), "lr": self.lrs[1]}]

    def micro_batches_per_epoch(self) -> int:
        return N_TRAIN // self.batch

    def train_batches(self, epoch: int, start: int, stop: int) -> Any:
        order = torch.from_numpy(np.random.default_rng([3, epoch]).permutation(N_TRAIN)).to(self.x.device)
        for m in range(start, stop):
            rows = order[m * self.batch:(m + 1) * self.batch]
            yield self.x[rows], self.y[rows]

    def evaluate(self) -> dict[str, float] | None:
        return {"mse": float(((self.predict(self.x[N_TRAIN:]) - self.y[N_TRAIN:]) ** 2).mean())}

    def test(self, best: Path | None) -> dict[str, float] | None:
        if best is not None:
            self.load_model(best)
        return self.evaluate()

    def save_model(self, directory: Path) -> None:
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(directory / "model.safetensors"))

    def load_model(self, directory: Path) -> None:
        self.load_state_dict(load_file(str(directory / "model.safetensors"), device=str(self.x.device)))


def run(out: Path, batch: int = 8, dropout: float = 0.0, lrs: tuple[float, float] = (0.05, 0.05),
        **overrides: Any) -> tuple[ToyTask, engine.FitResult]:
    loop = {"out": str(out), "epochs": 3, "log_every": 1, "progress": False, "tensorboard": False, "seed": 5}
    optim = {"weight_decay": 0.01, "warmup_steps": 2, "schedule": "cosine"}
    for key, value in overrides.items():
        (loop if key in LoopConfig.__dataclass_fields__ else optim)[key] = value
    loop_cfg, optim_cfg = LoopConfig(**loop), OptimConfig(**optim)
    env = engine.setup(loop_cfg, optim_cfg)
    task = ToyTask(batch, dropout, lrs).to(env.device)
    config = {"loop": loop, "optim": {k: list(v) if isinstance(v, tuple) else v for k, v in optim.items()}}
    return task, engine.fit(task, loop_cfg, optim_cfg, config, env)


def weights(directory: Path) -> dict[str, Tensor]:
    return load_file(str(directory / "model.safetensors"))


def records(out: Path, kind: str) -> list[dict[str, Any]]:
    return [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if r["kind"] == kind]


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def test_fit_learns_and_writes_the_run_dir(tmp_path: Path) -> None:
    _, result = run(tmp_path / "run", epochs=6)
    out = tmp_path / "run"
    dev = records(out, "dev")
    assert [r["step"] for r in dev] == [6, 12, 18, 24, 30, 36]  # one evaluation per epoch of 6 steps
    untrained = ToyTask(8)
    untrained.load_model(out / "init")
    with torch.no_grad():
        assert dev[-1]["mse"] < 0.2 * untrained.evaluate()["mse"]  # type: ignore[index]
    assert result.global_step == 36 and result.best_metric == min(r["mse"] for r in dev)
    assert ckpt.read_state(out / "best").global_step == result.best_step
    assert result.test == {"mse": pytest.approx(result.best_metric)}  # test() ran on the best checkpoint
    assert ckpt.read_state(out / "last").global_step == 36 and (out / "last" / ckpt.STATE_PT).is_file()
    assert not (out / "best" / ckpt.STATE_PT).exists()
    assert json.loads((out / "config.json").read_text())["loop"]["epochs"] == 6
    train = records(out, "train")
    assert [r["step"] for r in train] == list(range(1, 37))
    assert train[-1]["loss"] < 0.2 * train[0]["loss"]
    assert {"lr_first", "lr_second", "grad_norm", "step_time", "data_time", "epoch"} <= set(train[0])
    assert train[0]["lr_first"] == pytest.approx(0.05 * lr_factor(1, 2, 36, "cosine"))  # logged after the step
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_grad_accumulation_equals_the_bigger_batch(tmp_path: Path) -> None:
    run(tmp_path / "accum", batch=8, grad_accum=2, epochs=2)
    run(tmp_path / "big", batch=16, epochs=2)
    a, b = weights(tmp_path / "accum" / "last"), weights(tmp_path / "big" / "last")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    assert records(tmp_path / "accum", "train")[-1]["step"] == 6


def test_groups_freeze_and_unfreeze_on_schedule(tmp_path: Path) -> None:
    # 6 steps per epoch; 'second' waits for epoch 1, 'first' stops after 8 optimizer steps
    task, _ = run(tmp_path / "run", epochs=2, unfreeze_at=("second@epoch:1",), freeze_at=("first@step:8",))
    snaps = task.snapshots  # parameters before optimizer step k (one micro-batch per step)
    second = [s["second.weight"] for s in snaps] + [weights(tmp_path / "run" / "last")["second.weight"]]
    first = [s["first.weight"] for s in snaps] + [weights(tmp_path / "run" / "last")["first.weight"]]
    assert all(torch.equal(second[0], w) for w in second[:7])  # steps 0-5 (epoch 0): frozen, not even decayed
    assert not torch.equal(second[6], second[7])  # step 6 = the first of epoch 1
    assert all(not torch.equal(first[k], first[k + 1]) for k in range(8))
    assert all(torch.equal(first[8], w) for w in first[8:])  # steps 8-11: frozen
    lrs = {r["step"]: (r["lr_first"], r["lr_second"]) for r in records(tmp_path / "run", "train")}
    assert lrs[6][1] == 0.0 and lrs[7][1] > 0 and lrs[8][0] > 0 and lrs[9][0] == 0.0


def test_exact_resume_after_a_crash_right_after_a_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Crash(Exception):
        pass

    def crash_at(point: str, step: int) -> None:
        if (point, step) == ("after_save", 4):
            raise Crash

    with monkeypatch.context() as patch:
        patch.setattr(ckpt, "maybe_kill", crash_at)
        with pytest.raises(Crash):
            run(tmp_path / "crashed", dropout=0.3, grad_accum=2, save_every=2, epochs=3)
    assert ckpt.read_state(tmp_path / "crashed" / "last").global_step == 4  # mid-epoch 1 (3 steps per epoch)
    torch.manual_seed(1234)  # the resumed run must not depend on the process's RNG state
    run(tmp_path / "crashed", dropout=0.3, grad_accum=2, save_every=2, epochs=3, resume="yes")
    run(tmp_path / "reference", dropout=0.3, grad_accum=2, save_every=2, epochs=3)
    a, b = weights(tmp_path / "crashed" / "last"), weights(tmp_path / "reference" / "last")
    assert max((a[k] - b[k]).abs().max().item() for k in a) == 0.0
    losses = {r["step"]: r["loss"] for r in records(tmp_path / "crashed", "train")}
    assert losses == {r["step"]: r["loss"] for r in records(tmp_path / "reference", "train")}
    with pytest.raises(UserError, match="already holds a checkpoint"):
        run(tmp_path / "reference", resume="no")
    with pytest.raises(UserError, match="no last checkpoint"):
        run(tmp_path / "nothing", resume="yes")


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_on_cuda_learns_and_resumes_the_scaler(tmp_path: Path, precision: str) -> None:
    _, result = run(tmp_path / "run", device="cuda", precision=precision, epochs=6)
    untrained = ToyTask(8)
    untrained.load_model(tmp_path / "run" / "init")
    with torch.no_grad():
        assert result.global_step == 36
        assert records(tmp_path / "run", "dev")[-1]["mse"] < 0.2 * untrained.evaluate()["mse"]  # type: ignore[index]
    scaler = torch.load(tmp_path / "run" / "last" / ckpt.STATE_PT, weights_only=True)["scaler"]
    assert (scaler["scale"] > 0) if precision == "fp16" else scaler == {}  # GradScaler only for fp16


def test_lr_schedule_by_hand() -> None:
    assert [lr_factor(s, 4, 10, "linear") for s in (0, 3)] == [0.25, 1.0]
    assert lr_factor(7, 4, 10, "linear") == pytest.approx(1 - 3 / 6)
    assert lr_factor(7, 4, 10, "cosine") == pytest.approx(0.5 * (1 + np.cos(np.pi * 3 / 6)))
    assert lr_factor(10, 4, 10, "linear") == 0.0 and lr_factor(9, 0, 10, "constant") == 1.0


def test_freeze_rules_and_changed_settings(tmp_path: Path) -> None:
    rule = FreezeRule.parse("backbone@epoch:2", "unfreeze_at")
    assert rule == FreezeRule("backbone", "epoch", 2) and rule.reached(2, 0) and not rule.reached(1, 99)
    for bad in ("backbone", "backbone@epochs:1", "@step:1", "head@step:-1"):
        with pytest.raises(ConfigError, match="GROUP@epoch:N"):
            OptimConfig(freeze_at=(bad,))
    (tmp_path / "config.json").write_text(json.dumps({"loop": {"resume": "auto", "epochs": 3},
                                                      "model": {"inputs": {"grid": True}}}))
    changed = changed_settings(tmp_path / "config.json", {"loop": {"resume": "yes", "epochs": 4},
                                                          "model": {"inputs": {"grid": False}}})
    assert changed == ["loop.epochs", "model.inputs.grid"]


def test_curves_keep_the_last_record_of_a_repeated_step(tmp_path: Path) -> None:
    logged = [{"kind": "train", "step": 1, "loss": 3.0, "lr_head": 1e-3, "temperature": 0.05},
              {"kind": "train", "step": 2, "loss": 2.0, "lr_head": 1e-3, "temperature": 0.06},
              {"kind": "train", "step": 2, "loss": 1.5, "lr_head": 1e-3, "temperature": 0.06},  # after a resume
              {"kind": "dev", "step": 2, "mrr@10": 0.4, "recall@1": 0.3, "epoch": 0}]
    assert series(logged, "train", "loss") == ([1, 2], [3.0, 1.5])
    assert series(logged, "dev", "mrr@10") == ([2], [0.4])
    path = draw_curves(logged, tmp_path / "curves.png", "mrr@10")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not list(tmp_path.glob(".*tmp"))


def test_the_engine_imports_no_room_of_the_toolkit() -> None:
    code = ("import sys, engine, engine.fit, engine.curves; "
            "rooms = {'retrieval', 'vlt5', 'feature_extraction', 'adapters', 'vlt5r', 'clip_family'}; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & rooms))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
