"""CUDA checks (``@pytest.mark.gpu``; skipped where ``torch.cuda.is_available()`` is false, see conftest.py; run them
alone with ``make test-gpu`` = ``pytest -m gpu``): fp16 extraction against fp32, a GradScaler fp16 training step,
and a one-process NCCL DDP step. GPU faiss lives in tests/test_index_gpu.py."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from feature_extraction.backbones import load_backbone
from feature_extraction.tiny import photo

pytestmark = pytest.mark.gpu

FP16_MIN_COSINE = 0.999  # per row, fp16 vs fp32 CLIP embedding (fp16 keeps ~3 significant digits)
FP16_MAX_REL_ERR = 2e-2  # max |fc16 - fc32| / max |fc32|, per row


@pytest.mark.parametrize("model", ["tiny_vit_pt", "tiny_resnet_pt"])
def test_fp16_extraction_matches_fp32(model: str, request: pytest.FixtureRequest) -> None:
    weights: Path = request.getfixturevalue(model)
    fp32 = load_backbone(str(weights), "cuda", torch.float32)
    fp16 = load_backbone(str(weights), "cuda", torch.float16)
    pixels = torch.stack([fp32.preprocess(Image.fromarray(photo(i))) for i in range(6)]).cuda()  # (6, 3, H, W)
    with torch.no_grad():
        fc32, grid32 = fp32.encode_images(pixels, grid=True)
        fc16, grid16 = fp16.encode_images(pixels.half(), grid=True)
    assert fc16.dtype == torch.float16 and fc32.dtype == torch.float32  # the fp16 path really ran in fp16
    fc16, fc32 = fc16.float(), fc32.float()
    cosine = torch.nn.functional.cosine_similarity(fc16, fc32, dim=1)
    assert cosine.min().item() >= FP16_MIN_COSINE, cosine
    rel = (fc16 - fc32).abs().amax(dim=1) / fc32.abs().amax(dim=1)
    assert rel.max().item() <= FP16_MAX_REL_ERR, rel
    grid_cos = torch.nn.functional.cosine_similarity(grid16.float().flatten(1), grid32.float().flatten(1), dim=1)
    assert grid_cos.min().item() >= FP16_MIN_COSINE, grid_cos


def _tiny_regression(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 37), nn.ReLU(), nn.Linear(37, 5)).cuda()
    x = torch.randn(32, 16, device="cuda")
    y = torch.randn(32, 5, device="cuda")
    return model, x, y


def test_gradscaler_fp16_step_is_finite_and_updates_weights() -> None:
    model, x, y = _tiny_regression()
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        out = model(x)  # (32, 5)
        loss = nn.functional.mse_loss(out.float(), y)
    assert out.dtype == torch.float16
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    assert torch.isfinite(loss).item()
    assert scaler.get_scale() == 65536.0  # no inf/nan found: the step was taken, the scale kept
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_process_nccl_ddp_step(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    if not dist.is_nccl_available():
        pytest.skip("this torch build has no NCCL")
    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "RANK": "0",
                       "WORLD_SIZE": "1", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(key, value)
    dist.init_process_group("nccl", init_method="env://")
    try:
        assert dist.get_world_size() == 1 and dist.get_backend() == "nccl"
        model, x, y = _tiny_regression(seed=1)
        reference, _, _ = _tiny_regression(seed=1)  # the same weights, trained without DDP
        ddp = DDP(model, device_ids=[0])
        for net in (ddp, reference):
            opt = torch.optim.SGD(net.parameters(), lr=0.1)
            nn.functional.mse_loss(net(x), y).backward()
            opt.step()
        for a, b in zip(model.parameters(), reference.parameters()):  # world size 1: DDP's mean = the gradient
            torch.testing.assert_close(a, b)
        t = torch.arange(4.0, device="cuda")
        dist.all_reduce(t)
        np.testing.assert_array_equal(t.cpu().numpy(), np.arange(4.0))
    finally:
        dist.destroy_process_group()
