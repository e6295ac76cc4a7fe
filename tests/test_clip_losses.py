"""CLIP-family losses: parity with open_clip (one process; 2-process gloo gathers; 2- and 3-process SigLIP exchanges)
and a hand-worked 3×3 case."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from clip_family.losses import INIT, SIGLIP_DIST, clip_loss, scale_from_param, siglip_loss
from foundations.errors import ConfigError

open_clip_loss = pytest.importorskip("open_clip.loss")


def features(n: int = 8, d: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    text = F.normalize(image + 0.7 * torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    return image, text


def test_clip_loss_equals_open_clip() -> None:
    image, text = features()
    scale = torch.tensor(1 / 0.07, dtype=torch.float64)
    ours = clip_loss(image, text, scale)
    theirs = open_clip_loss.ClipLoss()(image, text, scale)
    assert abs(float(ours) - float(theirs)) <= 1e-6


def test_siglip_loss_equals_open_clip() -> None:
    image, text = features(seed=1)
    scale, bias = torch.tensor(10.0, dtype=torch.float64), torch.tensor(-10.0, dtype=torch.float64)
    ours = siglip_loss(image, text, scale, bias)
    theirs = open_clip_loss.SigLipLoss()(image, text, scale, bias)
    assert abs(float(ours) - float(theirs)) <= 1e-6


def test_hand_worked_3x3() -> None:
    # Orthonormal features, diagonal pairs: logits = s·I with s = 2.
    eye = torch.eye(3, dtype=torch.float64)
    # softmax row: e^2 / (e^2 + 2) on the diagonal; both directions equal.
    expected_clip = -math.log(math.exp(2) / (math.exp(2) + 2))
    assert float(clip_loss(eye, eye, 2.0)) == pytest.approx(expected_clip, abs=1e-12)
    # sigmoid: 3 positives at logit 2 + b, 6 negatives at logit b, summed and divided by 3.
    b = -1.0
    expected_sig = (3 * -math.log(1 / (1 + math.exp(-(2 + b)))) + 6 * -math.log(1 / (1 + math.exp(b)))) / 3
    assert float(siglip_loss(eye, eye, 2.0, b)) == pytest.approx(expected_sig, abs=1e-12)


def test_init_and_clamp() -> None:
    assert INIT["clip"] == (pytest.approx(math.log(1 / 0.07)), None)
    assert INIT["siglip"] == (pytest.approx(math.log(10)), -10.0)
    assert float(scale_from_param(torch.tensor(math.log(1 / 0.07)))) == pytest.approx(1 / 0.07)
    big = torch.tensor(10.0, requires_grad=True)
    out = scale_from_param(big)
    assert float(out.detach()) == pytest.approx(100.0)
    out.backward()
    assert float(big.grad) == 0.0


def run_gloo(worker, world: int, tmp_path: Path) -> list[dict]:  # noqa: ANN001
    """The 2- (or W-) process harness: ``worker(rank, world, init_file, out_dir)`` on ``world`` spawned processes
    that join a gloo group through ``init_file``, each saving ``out_dir/rank{r}.pt``; returns those, rank order."""
    import torch.multiprocessing as mp

    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    image, text = features(n=8, seed=3)
    shard = slice(rank * 4, rank * 4 + 4)
    scale = torch.tensor(1 / 0.07, dtype=torch.float64)
    results = {}
    for local, with_grad in ((False, False), (True, True), (False, True)):
        img = image[shard].clone().requires_grad_(True)
        ours = clip_loss(img, text[shard], scale, local_loss=local, gather_with_grad=with_grad)
        theirs = open_clip_loss.ClipLoss(local_loss=local, gather_with_grad=with_grad, rank=rank, world_size=world)(
            image[shard], text[shard], scale)
        ours.backward()
        results[f"clip_{local}_{with_grad}"] = (float(ours), float(theirs), img.grad.clone())
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_gather_equals_single_process(tmp_path: Path) -> None:
    ranks = run_gloo(_worker, 2, tmp_path)
    image, text = features(n=8, seed=3)
    scale = torch.tensor(1 / 0.07, dtype=torch.float64)
    full_image = image.clone().requires_grad_(True)
    single = clip_loss(full_image, text, scale)
    single.backward()
    for key in ("clip_False_False", "clip_True_True", "clip_False_True"):
        for r in range(2):
            ours, theirs, _ = ranks[r][key]
            assert abs(ours - theirs) <= 1e-6, key
        mean = sum(ranks[r][key][0] for r in range(2)) / 2
        assert abs(mean - float(single.detach())) <= 1e-6, key
    # local_loss + gather_with_grad: the ranks' gradients averaged (DDP) are the single-process gradient.
    grads = torch.cat([ranks[r]["clip_True_True"][2] for r in range(2)]) / 2
    assert torch.allclose(grads, full_image.grad, atol=1e-9)


def test_siglip_unknown_dist_impl_is_a_config_error() -> None:
    image, text = features()
    with pytest.raises(ConfigError, match="ring"):
        siglip_loss(image, text, 10.0, -10.0, dist_impl="ring")


SIGLIP_SCALE, SIGLIP_BIAS = 3.0, -1.0  # a bias near the logits' range, so the negatives' gradients are not ~0


def _siglip_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    image, text = features(n=12, seed=4)
    local = 12 // world
    shard = slice(rank * local, (rank + 1) * local)
    scale, bias = torch.tensor(SIGLIP_SCALE, dtype=torch.float64), torch.tensor(SIGLIP_BIAS, dtype=torch.float64)
    results = {}
    for impl in SIGLIP_DIST:
        img, txt = image[shard].clone().requires_grad_(True), text[shard].clone().requires_grad_(True)
        ours = siglip_loss(img, txt, scale, bias, dist_impl=impl)
        ours.backward()
        theirs = open_clip_loss.SigLipLoss(rank=rank, world_size=world, dist_impl=impl)(
            image[shard], text[shard], scale, bias)
        results[impl] = (float(ours), float(theirs), img.grad.clone(), txt.grad.clone())
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 3])
def test_siglip_dist_impls_equal_open_clip_and_single_process(tmp_path: Path, world: int) -> None:
    """Every dist_impl (all-gather, all-reduce, ring shift, two-way ring) on W gloo ranks: each rank's loss equals
    open_clip's SigLipLoss with the same dist_impl; the mean over ranks equals the single-process loss of the global
    batch, and the ranks' image and text gradients, averaged as DDP does, equal its gradients (texts' gradients come
    back through the exchanges)."""
    ranks = run_gloo(_siglip_worker, world, tmp_path)
    image, text = features(n=12, seed=4)
    full_image, full_text = image.clone().requires_grad_(True), text.clone().requires_grad_(True)
    single = siglip_loss(full_image, full_text, torch.tensor(SIGLIP_SCALE, dtype=torch.float64), SIGLIP_BIAS)
    single.backward()
    assert float(full_text.grad.abs().min()) > 1e-4  # every text row gets a gradient worth checking
    for impl in SIGLIP_DIST:
        for r in range(world):
            ours, theirs, _, _ = ranks[r][impl]
            assert abs(ours - theirs) <= 1e-6, (impl, r)
        assert abs(sum(ranks[r][impl][0] for r in range(world)) / world - float(single.detach())) <= 1e-6, impl
        image_grad = torch.cat([ranks[r][impl][2] for r in range(world)]) / world
        text_grad = torch.cat([ranks[r][impl][3] for r in range(world)]) / world
        assert torch.allclose(image_grad, full_image.grad, atol=1e-9), impl
        assert torch.allclose(text_grad, full_text.grad, atol=1e-9), impl
