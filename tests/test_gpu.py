"""CUDA checks (``@pytest.mark.gpu``; skipped where ``torch.cuda.is_available()`` is false, see conftest.py; run them
alone with ``make test-gpu`` = ``pytest -m gpu``, or ``make bench-gpu`` with the throughput table): fp16 extraction
against fp32, the extraction pipeline at ``--precision fp16|bf16`` and with ``--decode gpu`` against its fp32 / CPU-
decoded twin, a GradScaler fp16 training step, and a one-process NCCL DDP step. GPU faiss lives in
tests/test_index_gpu.py."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_extract import extract_with, read_all
from PIL import Image
from torch import nn
from train_helpers import free_port

from feature_extraction.backbone_base import CLIP_STD, ClipTensorTransform, clip_transform
from feature_extraction.backbones import load_backbone
from feature_extraction.device_decode import decode_jpegs
from feature_extraction.tiny import make_image_folder, photo

pytestmark = pytest.mark.gpu

FP16_MIN_COSINE = 0.999  # per row, fp16 vs fp32 CLIP embedding (fp16 keeps ~3 significant digits)
FP16_MAX_REL_ERR = 2e-2  # max |fc16 - fc32| / max |fc32|, per row
GREY_LEVEL = 1 / 255 / min(CLIP_STD)
# nvJPEG vs libjpeg-turbo (PIL): IDCT and chroma upsampling differ, then the resize (<= 1 grey level on the CPU).
NVJPEG_MEAN_GREY_LEVELS = 1.5  # mean |pixel difference| after normalising, in 8-bit steps, per image
NVJPEG_P999_GREY_LEVELS = 8  # 99.9th percentile of |pixel difference|


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


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("model", ["tiny_vit_pt", "tiny_resnet_pt"])
def test_pipeline_precisions_on_cuda_stay_close_to_fp32(model: str, request: pytest.FixtureRequest,
                                                       tmp_path: Path) -> None:
    """Through extract(): the CUDA default is fp16 (recorded); fp16 and bf16 stay within the fp16 tolerance."""
    weights = request.getfixturevalue(model)
    make_image_folder(tmp_path / "imgs", 10, size=(150, 100))
    common = dict(images=tmp_path / "imgs", device="cuda", num_workers=2)
    extract_with(tmp_path / "fp32.h5", weights, precision="fp32", **common)
    _, fc32, grid32, _ = read_all(tmp_path / "fp32.h5")
    for precision in (None, "bf16"):
        out = tmp_path / f"{precision}.h5"
        extract_with(out, weights, precision=precision, **common)
        _, fc, grid, attrs = read_all(out)
        assert attrs["precision"] == (precision or "fp16")
        assert _cosines(fc, fc32).min() >= FP16_MIN_COSINE and _cosines(grid, grid32).min() >= FP16_MIN_COSINE
        assert not np.array_equal(fc, fc32)  # the reduced precision really ran


def test_nvjpeg_decode_and_gpu_resize_match_the_cpu_path_within_tolerance(tmp_path: Path) -> None:
    paths = make_image_folder(tmp_path, 12, size=(500, 375))
    data = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in paths]
    decoded = decode_jpegs(data, "cuda")  # one batched nvJPEG call
    for path, image in zip(paths, decoded):
        assert image.is_cuda and image.dtype == torch.uint8
        ours = ClipTensorTransform(224)(image).cpu()
        reference = clip_transform(224)(Image.open(path).convert("RGB"))
        levels = (ours - reference).abs().flatten() / GREY_LEVEL
        assert levels.mean().item() <= NVJPEG_MEAN_GREY_LEVELS, (path.name, levels.mean())
        assert levels.quantile(0.999).item() <= NVJPEG_P999_GREY_LEVELS, (path.name, levels.quantile(0.999))


def test_decode_gpu_extraction_matches_cpu_decoding_and_falls_back_per_file(tiny_vit_pt: Path, tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "imgs"
    make_image_folder(folder, 20, size=(500, 375))
    Image.fromarray(photo(4)).resize((200, 150)).save(folder / "drawing.png")
    (folder / "cut.jpg").write_bytes((folder / "img_00000.jpg").read_bytes()[:2000])
    common = dict(images=folder, device="cuda", precision="fp32", batch_size=8, num_workers=2)
    with caplog.at_level(logging.INFO, logger="feature_extraction.extract"):
        summary = extract_with(tmp_path / "gpu.h5", tiny_vit_pt, decode="gpu", **common)
    reference = extract_with(tmp_path / "cpu.h5", tiny_vit_pt, **common)
    assert summary.decoded_on_cpu == {"not a JPEG": 1} and "drawing: decoded on the CPU: not a JPEG" in caplog.text
    assert summary.skipped == reference.skipped and sum(reference.skipped.values()) == 1  # cut.jpg, as on the CPU
    ids, fc, grid, attrs = read_all(tmp_path / "gpu.h5")
    ref_ids, ref_fc, ref_grid, _ = read_all(tmp_path / "cpu.h5")
    assert ids == ref_ids and attrs["decode"] == "gpu"
    assert _cosines(fc, ref_fc).min() >= FP16_MIN_COSINE and _cosines(grid, ref_grid).min() >= FP16_MIN_COSINE
    png = ids.index("drawing")
    np.testing.assert_allclose(fc[png], ref_fc[png], atol=1e-4, rtol=0)  # the same CPU pixels


def test_batch_size_auto_on_cuda_is_a_power_of_two_that_fits(tiny_vit_pt: Path) -> None:
    from feature_extraction.speed import CUDA_MAX_BATCH, auto_batch_size

    backbone = load_backbone(str(tiny_vit_pt), "cuda", torch.float16)
    batch = auto_batch_size(backbone, "image", "fp16", True, False)
    assert 1 <= batch <= CUDA_MAX_BATCH and batch & (batch - 1) == 0
    assert batch == auto_batch_size(backbone, "image", "fp16", True, False)  # a rule: the same answer again


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


def test_one_process_nccl_ddp_step(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    if not dist.is_nccl_available():
        pytest.skip("this torch build has no NCCL")
    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0",
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
