"""Speed options of the extraction (issue 16): ``--precision``, ``--decode gpu`` (run here on the CPU, with the device
decoder injectable so that per-file fallbacks can be forced), the fc-only path, channels_last, ``--batch-size auto``,
batch padding and ``--compile``. The CUDA halves live in tests/test_gpu.py."""

from __future__ import annotations

import logging

import clip
import h5py
import numpy as np
import pytest
import torch
from helpers_extract import extract_with, read_all
from PIL import Image

from feature_extraction import device_decode
from feature_extraction.backbone_base import CLIP_STD, ClipTensorTransform, clip_transform
from feature_extraction.backbones import load_backbone
from feature_extraction.config import ShardSpec, UsageError
from feature_extraction.decode import load_and_preprocess
from feature_extraction.device_decode import DeviceDecoder, JpegFile, read_for_device
from feature_extraction.inputs import Skip
from feature_extraction.merge_feats import merge_shards
from feature_extraction.speed import pad_batch, prepare_tower, resolve_precision
from feature_extraction.tiny import make_image_folder, photo

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")  # clip.load

GREY_LEVEL = 1 / 255 / min(CLIP_STD)  # one 8-bit step after CLIP's normalisation (0.0150)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    make_image_folder(folder, 9, size=(150, 100))
    return folder


def test_precision_defaults_and_refusals():
    assert resolve_precision(None, "cpu") == "fp32" and resolve_precision(None, "cuda:0") == "fp16"
    assert resolve_precision("bf16", "cpu") == "bf16" and resolve_precision("fp16", "cuda:1") == "fp16"
    with pytest.raises(UsageError, match="--precision fp16 needs CUDA"):
        resolve_precision("fp16", "cpu")


@pytest.mark.parametrize("which", ["tiny_vit_pt", "tiny_resnet_pt"])
def test_default_output_is_the_plain_fp32_output_byte_for_byte(which, photos, tmp_path, request):
    """The default command computes what it computed before the fast paths: fp32, standard memory format."""
    weights = request.getfixturevalue(which)
    extract_with(tmp_path / "default.h5", weights, images=photos)
    extract_with(tmp_path / "fp32.h5", weights, images=photos, precision="fp32", channels_last=False)
    assert (tmp_path / "default.h5").read_bytes() == (tmp_path / "fp32.h5").read_bytes()
    attrs = read_all(tmp_path / "default.h5")[3]
    assert attrs["precision"] == "fp32" and attrs["decode"] == "cpu"


def test_channels_last_is_on_in_reduced_precision_and_asked_for_in_fp32(tiny_resnet_pt, photos, tmp_path,
                                                                        monkeypatch):
    from feature_extraction import extract as extract_module

    seen: list[bool] = []
    real = extract_module.prepare_tower
    monkeypatch.setattr(extract_module, "prepare_tower", lambda backbone: seen.append(True) or real(backbone))
    for i, settings in enumerate([{}, {"precision": "bf16"}, {"channels_last": True}, {"precision": "bf16",
                                                                                        "channels_last": False}]):
        extract_with(tmp_path / f"{i}.h5", tiny_resnet_pt, images=photos, **settings)
        seen.append(False)
    assert seen == [False, True, False, True, False, False]
    _, plain, _, _ = read_all(tmp_path / "0.h5")
    _, fast, _, _ = read_all(tmp_path / "2.h5")
    np.testing.assert_allclose(fast, plain, atol=1e-5, rtol=0)  # the same numbers up to the summation order


def test_files_from_before_precision_was_recorded(tiny_vit_pt, photos, tmp_path):
    """float32 files were computed in fp32 (append accepted); float16 ones in fp16 or fp32 (unknown: refused)."""
    for dtype in ("float32", "float16"):
        out = tmp_path / f"{dtype}.h5"
        extract_with(out, tiny_vit_pt, images=photos, dtype=dtype)
        with h5py.File(out, "r+") as f:
            del f.attrs["precision"], f.attrs["decode"]
        (photos / "late.jpg").write_bytes((photos / "img_00000.jpg").read_bytes())
        try:
            if dtype == "float32":
                assert extract_with(out, tiny_vit_pt, images=photos, dtype=dtype).written == 1
                assert read_all(out)[3]["precision"] == "fp32"
            else:
                with pytest.raises(UsageError, match="precision: None vs 'fp32'"):
                    extract_with(out, tiny_vit_pt, images=photos, dtype=dtype)
        finally:
            (photos / "late.jpg").unlink()


def test_bf16_shards_merge_into_the_unsharded_bf16_run(tiny_vit_pt, photos, tmp_path):
    extract_with(tmp_path / "all.h5", tiny_vit_pt, images=photos, batch_size=2, precision="bf16")
    for shard_id in range(2):
        extract_with(tmp_path / "f.h5", tiny_vit_pt, images=photos, batch_size=2, precision="bf16",
                     shard=ShardSpec(2, shard_id))
    merge_shards([tmp_path / "f-00000-of-00002.h5", tmp_path / "f-00001-of-00002.h5"], tmp_path / "merged.h5")
    assert (tmp_path / "merged.h5").read_bytes() == (tmp_path / "all.h5").read_bytes()


# -- --decode gpu ---------------------------------------------------------------------------------------------------

def test_tensor_transform_is_within_one_grey_level_of_clips_pil_transform(photos):
    for path in sorted(photos.glob("*.jpg")):
        data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
        ours = ClipTensorTransform(32)(device_decode.decode_jpegs([data], "cpu")[0])
        reference = clip_transform(32)(Image.open(path).convert("RGB"))
        diff = (ours - reference).abs()
        assert ours.shape == reference.shape == (3, 32, 32)
        assert diff.max().item() <= GREY_LEVEL + 1e-6 and diff.mean().item() < GREY_LEVEL / 4, path.name


def _exif_rotated(path, source):
    exif = Image.Exif()
    exif[device_decode.EXIF_ORIENTATION] = 6  # rotate 90 degrees clockwise to display
    Image.open(source).save(path, "JPEG", quality=92, exif=exif)


def test_device_decode_falls_back_to_the_cpu_per_file_with_the_reason(tiny_vit_pt, photos, tmp_path, monkeypatch,
                                                                      caplog):
    """On this CPU the 'device' is the CPU; the decoder is replaced by one that fails on one file. Every file that
    takes the CPU path gets exactly the row of a --decode cpu run; the others stay within the stated tolerance."""
    folder = tmp_path / "imgs"
    make_image_folder(folder, 6, size=(150, 100))
    Image.fromarray(photo(2)).resize((90, 120)).save(folder / "drawing.png")
    Image.fromarray(photo(3)).resize((90, 120)).convert("CMYK").save(folder / "print.jpg", quality=92)
    _exif_rotated(folder / "phone.jpg", folder / "img_00001.jpg")
    (folder / "cut.jpg").write_bytes((folder / "img_00002.jpg").read_bytes()[:900])  # truncated: still skipped
    refused = (folder / "img_00003.jpg").read_bytes()
    calls, real_decoder = [], device_decode.decode_jpegs

    def flaky_decoder(data: list[torch.Tensor], device: str) -> list[torch.Tensor]:
        calls.append(len(data))
        if any(bytes(d.numpy()) == refused for d in data):
            raise RuntimeError("nvjpeg: unsupported sampling")
        return real_decoder(data, device)

    monkeypatch.setattr(device_decode, "decode_jpegs", flaky_decoder)
    with caplog.at_level(logging.INFO, logger="feature_extraction.extract"):
        summary = extract_with(tmp_path / "gpu.h5", tiny_vit_pt, images=folder, batch_size=4, decode="gpu")
    monkeypatch.undo()
    reference = extract_with(tmp_path / "cpu.h5", tiny_vit_pt, images=folder, batch_size=4)

    assert summary.decoded_on_cpu == {"not a JPEG": 1, "CMYK JPEG": 1, "EXIF orientation": 1,
                                      "device decode failed": 1}
    assert summary.skipped == reference.skipped == {"truncated": 1}
    assert "img_00003: decoded on the CPU: device decode failed (RuntimeError: nvjpeg: unsupported sampling)" in \
        caplog.text and "phone: decoded on the CPU: EXIF orientation (orientation 6)" in caplog.text
    assert 1 in calls and max(calls) > 1  # batched first, then file by file to find the failing one
    ids, fc, grid, attrs = read_all(tmp_path / "gpu.h5")
    ref_ids, ref_fc, ref_grid, _ = read_all(tmp_path / "cpu.h5")
    assert ids == ref_ids and attrs["decode"] == "gpu"
    for n, item in enumerate(ids):
        if item in ("drawing", "print", "phone", "img_00003"):
            assert np.array_equal(fc[n], ref_fc[n]) and np.array_equal(grid[n], ref_grid[n]), item
        else:
            cos = fc[n] @ ref_fc[n] / np.linalg.norm(fc[n]) / np.linalg.norm(ref_fc[n])
            assert cos > 0.999, (item, cos)


def test_a_file_failing_on_the_device_and_on_the_cpu_is_skipped_as_on_the_cpu(tmp_path):
    good, bad = tmp_path / "good.jpg", tmp_path / "bad.jpg"
    make_image_folder(tmp_path / "src", 1, size=(60, 40))
    good.write_bytes((tmp_path / "src" / "img_00000.jpg").read_bytes())
    bad.write_bytes(good.read_bytes()[:300])
    item = read_for_device("good", str(good), clip_transform(32), 10**8)
    on_cpu = load_and_preprocess("bad", str(bad), clip_transform(32), 10**8)  # what --decode cpu says
    assert isinstance(item, JpegFile) and isinstance(on_cpu, Skip)
    assert read_for_device("bad", str(bad), clip_transform(32), 10**8) == on_cpu

    def broken(data: list[torch.Tensor], device: str) -> list[torch.Tensor]:
        raise RuntimeError("decoder down")

    decoder = DeviceDecoder("cpu", ClipTensorTransform(32), clip_transform(32), 10**8, decode=broken)
    out = decoder(["good", "bad"], [item, JpegFile(str(bad), item.data)])  # bad's bytes claimed good, file is not
    assert out.ids == ["good"] and out.pixels.shape == (1, 3, 32, 32)
    assert out.skipped == [on_cpu]
    assert out.on_cpu == [("good", "device decode failed", "RuntimeError: decoder down")]
    assert torch.equal(out.pixels[0], clip_transform(32)(Image.open(good).convert("RGB")))


def test_decode_gpu_is_refused_for_a_backbone_with_its_own_processor(tiny_hf_clip_dir, photos, tmp_path):
    with pytest.raises(UsageError, match="--decode gpu: hf:.*its own image processor"):
        extract_with(tmp_path / "f.h5", f"hf:{tiny_hf_clip_dir}", images=photos, decode="gpu")


# -- throughput paths -----------------------------------------------------------------------------------------------

def test_fc_only_registers_no_hook_and_the_grid_tap_is_registered_once(tiny_vit_pt, tiny_resnet_pt):
    for weights in (tiny_vit_pt, tiny_resnet_pt):
        backbone = load_backbone(str(weights), "cpu", torch.float32)
        module = backbone._grid_module
        pixels = torch.randn(2, 3, backbone.image_size, backbone.image_size)
        with torch.no_grad():
            fc_only, none = backbone.encode_images(pixels, False)
            assert none is None and not module._forward_hooks
            for _ in range(2):
                fc, grid = backbone.encode_images(pixels, True)
        assert len(module._forward_hooks) == 1 and torch.equal(fc, fc_only)
        assert grid.shape == (2, backbone.grid_hw[0] * backbone.grid_hw[1], backbone.grid_dim)


def test_resnet_towers_go_channels_last_and_vits_do_not(tiny_vit_pt, tiny_resnet_pt):
    vit = load_backbone(str(tiny_vit_pt), "cpu", torch.float32)
    resnet = load_backbone(str(tiny_resnet_pt), "cpu", torch.float32)
    assert not prepare_tower(vit) and prepare_tower(resnet)
    assert resnet.model.visual.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not resnet.model.visual.conv1.weight.is_contiguous()


def test_padded_rows_do_not_change_the_real_rows(tiny_vit_pt):
    backbone = load_backbone(str(tiny_vit_pt), "cpu", torch.float32)
    pixels = torch.randn(3, 3, 32, 32)
    padded = pad_batch(pixels, 8)
    assert padded.shape == (8, 3, 32, 32) and torch.equal(padded[:3], pixels) and not padded[3:].any()
    assert pad_batch(pixels, 0) is pixels
    with torch.no_grad():
        fc, grid = backbone.encode_images(pixels, True)
        fc_p, grid_p = backbone.encode_images(padded, True)
    torch.testing.assert_close(fc_p[:3], fc, atol=1e-6, rtol=0)
    torch.testing.assert_close(grid_p[:3], grid, atol=1e-6, rtol=0)


def test_batch_size_auto_is_32_on_a_cpu(tiny_vit_pt, photos, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="feature_extraction.extract"):
        summary = extract_with(tmp_path / "f.h5", tiny_vit_pt, images=photos, batch_size="auto")
    assert summary.written == 9 and ", batch 32," in caplog.text
    with pytest.raises(UsageError, match=r"--batch-size \(or auto\)"):
        extract_with(tmp_path / "g.h5", tiny_vit_pt, images=photos, batch_size="big")


@pytest.mark.slow
def test_compile_matches_eager_compiles_once_and_reports_its_warm_up(tiny_resnet_pt, photos, tmp_path, monkeypatch):
    """9 images in batches of 4: the last batch (1 image) is padded, so the graph never recompiles (a recompile is
    made an error), with batches made in the main process or by a DataLoader worker (no inference tensors); the grid
    comes through the tap inside the compiled tower."""
    import torch._dynamo

    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    for workers in (0, 1):
        torch._dynamo.reset()
        summary = extract_with(tmp_path / f"c{workers}.h5", tiny_resnet_pt, images=photos, compile=True,
                               num_workers=workers)
    extract_with(tmp_path / "e.h5", tiny_resnet_pt, images=photos)
    _, ref_fc, ref_grid, _ = read_all(tmp_path / "e.h5")
    for workers in (0, 1):
        _, fc, grid, _ = read_all(tmp_path / f"c{workers}.h5")
        np.testing.assert_allclose(fc, ref_fc, atol=1e-5, rtol=0)
        np.testing.assert_allclose(grid, ref_grid, atol=1e-5, rtol=0)
    assert summary.compile_seconds > 0 and "torch.compile warm-up" in summary.text()
    torch._dynamo.reset()


def test_clip_load_and_the_backbone_agree_under_bf16_autocast(tiny_vit_pt, photos):
    """--precision bf16 = the model's own forward under torch.autocast(bfloat16), nothing else."""
    from feature_extraction.speed import autocast

    backbone = load_backbone(str(tiny_vit_pt), "cpu", torch.float32)
    model, preprocess = clip.load(str(tiny_vit_pt), device="cpu", jit=False)
    pixels = torch.stack([preprocess(Image.open(p)) for p in sorted(photos.glob("*.jpg"))])
    with torch.no_grad(), autocast("cpu", "bf16"):
        ours, _ = backbone.encode_images(pixels, False)
        ref = model.encode_image(pixels)
    assert ours.dtype == torch.bfloat16 and torch.equal(ours, ref)


def test_clip_family_directory_at_bf16_and_with_device_decoding(photos, tmp_path):
    """A CLIP-family directory (OpenAI-architecture towers): bf16 = its own image_features under autocast; its
    preprocessing is clip's transform, so --decode gpu applies (within the stated tolerance of the CPU path)."""
    from clip_family.config import tiny_config
    from clip_family.model import ClipFamilyModel

    model = ClipFamilyModel(tiny_config()).eval()
    model.save_pretrained(tmp_path / "family")
    extract_with(tmp_path / "bf16.h5", tmp_path / "family", images=photos, precision="bf16")
    extract_with(tmp_path / "gpu.h5", tmp_path / "family", images=photos, decode="gpu")
    extract_with(tmp_path / "cpu.h5", tmp_path / "family", images=photos)
    ids, fc, _, attrs = read_all(tmp_path / "bf16.h5")
    pixels = torch.stack([model.processor(Image.open(photos / f"{i}.jpg")) for i in ids])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ref = model.image_features(pixels)
    np.testing.assert_allclose(fc, ref.float().numpy(), atol=1e-5, rtol=0)
    assert attrs["backbone_family"] == "clip-family" and attrs["precision"] == "bf16"
    _, fc_gpu, _, _ = read_all(tmp_path / "gpu.h5")
    _, fc_cpu, _, _ = read_all(tmp_path / "cpu.h5")
    cos = np.sum(fc_gpu * fc_cpu, 1) / np.linalg.norm(fc_gpu, axis=1) / np.linalg.norm(fc_cpu, axis=1)
    assert cos.min() > 0.999 and not np.array_equal(fc_gpu, fc_cpu)
