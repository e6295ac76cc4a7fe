"""Fixtures of the VL-T5 tests (imported by tests/test_vlt5_*.py and tests/test_adapters*.py).

Everything tiny is built from ``vlt5.tiny``; the parity checkpoint and VL-T5's reference outputs are committed
under tests/data/vlt5/ (see the README there for how they were made).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vlt5.modeling import JointEncoder
from vlt5.tiny import make_tiny_t5_dir, make_tiny_tokenizer_dir, make_tiny_vlt5_checkpoint

DATA = Path(__file__).parent / "data" / "vlt5"
PARITY_PTH = DATA / "tiny_vlt5_epoch30.pth"
REFERENCE = DATA / "reference_outputs.safetensors"
REQUIRED_REGIMES = ("detector_boxes", "clip_grid_zero_boxes", "two_images", "explicit_vis_mask",
                    "padded_text_implicit_mask")
FEATURE_IDS = ["img_a", "img_b", "img_c", "img_d"]
FC_DIM = 12


def load_reference() -> dict[str, dict[str, torch.Tensor]]:
    """{regime: {input name or "last_hidden_state": tensor}} from the committed reference file."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in load_file(str(REFERENCE)).items():
        regime, name = key.split("/")
        out.setdefault(regime, {})[name] = value
    return out


def run_regime(enc: JointEncoder, regime: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(our last_hidden_state, VL-T5's) for one regime."""
    inputs = {k: v for k, v in regime.items() if k != "last_hidden_state"}
    with torch.no_grad():
        out = enc(**inputs).last_hidden_state
    return out, regime["last_hidden_state"]


def load_parity_encoder(**overrides: object) -> JointEncoder:
    enc, _ = JointEncoder.from_vlt5_checkpoint(PARITY_PTH, **overrides)
    return enc


def write_feature_file(path: Path, n_grid: int = 9, grid_dim: int = 16, fc_dim: int = FC_DIM,
                       seed: int = 0) -> Path:
    """A feature file in our HDF5 layout (DESIGN.md §3): ids, fc, grid + attrs."""
    rng = np.random.default_rng(seed)
    side = int(n_grid**0.5)
    with h5py.File(path, "w") as f:
        f.create_dataset("ids", data=np.array(FEATURE_IDS, dtype=h5py.string_dtype("utf-8")))
        f.create_dataset("fc", data=rng.standard_normal((len(FEATURE_IDS), fc_dim)).astype(np.float32))
        f.create_dataset("grid", data=rng.standard_normal((len(FEATURE_IDS), n_grid, grid_dim)).astype(np.float32))
        f.attrs.update({"format_version": 1, "grid_hw": [side, side], "fc_dim": fc_dim, "grid_dim": grid_dim,
                        "backbone": "tiny", "modality": "image"})
    return path


@pytest.fixture
def one_torch_thread() -> object:
    """Tiny models run fastest on one thread, and far slower with two threads on a busy 2-core machine.
    The VL-T5 test modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def reference() -> dict[str, dict[str, torch.Tensor]]:
    return load_reference()


@pytest.fixture(scope="session")
def tiny_tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_tokenizer_dir(tmp_path_factory.mktemp("vlt5") / "tokenizer")


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_t5_dir(tmp_path_factory.mktemp("vlt5") / "t5")


@pytest.fixture(scope="session")
def tiny_vlt5_pth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_vlt5_checkpoint(tmp_path_factory.mktemp("vlt5") / "Epoch30.pth")


@pytest.fixture(scope="session")
def tiny_feature_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_feature_file(tmp_path_factory.mktemp("feats") / "feats.h5")
