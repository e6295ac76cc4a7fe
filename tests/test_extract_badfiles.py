"""Bad input never stops a run: a folder with 9 kinds of bad files plus 7 convertible modes ends with every good
image written (features equal to the model on the expected RGB image) and every bad one reported with its
reason - in the summary, in the file's skipped record and in the ``.skipped.tsv`` sidecar. The same with
``--precision bf16`` and with ``--decode gpu`` (whose converted files all take the CPU path, counted by reason)."""

from __future__ import annotations

import clip
import numpy as np
import pytest
import torch
from helpers_extract import extract_with, make_bad_files, make_convertible_files, read_all

from feature_extraction.tiny import make_image_folder
from feature_extraction.writer import read_skip_record

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")  # clip.load

MAX_PIXELS = 300 * 300
MODES = {"fp32": {}, "bf16": {"precision": "bf16"}, "decode-gpu": {"decode": "gpu"}}


@pytest.mark.parametrize("mode", list(MODES))
def test_bad_files_are_skipped_with_reasons_and_good_ones_written(mode, tiny_vit_pt, tmp_path):
    folder = tmp_path / "imgs"
    make_image_folder(folder, 5, size=(120, 90))
    bad = make_bad_files(folder / "bad", MAX_PIXELS)
    convertible = make_convertible_files(folder / "modes")
    out = tmp_path / "f.h5"
    summary = extract_with(out, tiny_vit_pt, images=folder, max_pixels=MAX_PIXELS, batch_size=4, num_workers=2,
                           **MODES[mode])

    ids, fc, _, _ = read_all(out)
    good = {f"img_{i:05d}" for i in range(5)} | {f"modes/{k}" for k in convertible}
    assert set(ids) == good and summary.written == len(good)
    record = {s.item_id: s for s in read_skip_record(out)}
    assert {k: s.category for k, s in record.items()} == {f"bad/{k}": v for k, v in bad.items()}
    assert all(s.detail and s.source.endswith(s.item_id.split("/")[1] + s.source[-4:]) for s in record.values())
    assert sum(summary.skipped.values()) == len(bad) == 9 and summary.skipped["not an image"] == 3
    assert "skipped 9:" in summary.text() and "truncated" in summary.text()
    sidecar = summary.sidecar.read_text().splitlines()
    assert sidecar[0] == "id\tcategory\tdetail\tsource" and len(sidecar) == 1 + len(bad)

    # Converted images are encoded exactly as the model encodes the expected RGB image.
    model, preprocess = clip.load(str(tiny_vit_pt), device="cpu", jit=False)
    names = sorted(convertible)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
        ref = model.encode_image(torch.stack([preprocess(convertible[n]) for n in names]))
    rows = [ids.index(f"modes/{n}") for n in names]
    np.testing.assert_allclose(fc[rows], ref.float().numpy(), atol=1e-5, rtol=0)
    if mode == "decode-gpu":  # PNG/TIFF data (whatever the suffix) and the CMYK JPEG: the CPU path, by reason
        assert summary.decoded_on_cpu == {"not a JPEG": 6, "CMYK JPEG": 1}
        assert "decoded on the CPU instead of the device: 7: 1 CMYK JPEG, 6 not a JPEG" in summary.text()
    else:
        assert not summary.decoded_on_cpu

    # A rerun does not retry known-bad files: it is a no-op that says so.
    again = extract_with(out, tiny_vit_pt, images=folder, max_pixels=MAX_PIXELS, **MODES[mode])
    assert again.nothing_to_do and again.written == 0 and "nothing to do" in again.text()


def test_retry_skipped_reencodes_a_fixed_file(tiny_vit_pt, tmp_path):
    folder = tmp_path / "imgs"
    make_image_folder(folder, 3, size=(60, 40))
    (folder / "later.jpg").write_bytes(b"")
    out = tmp_path / "f.h5"
    extract_with(out, tiny_vit_pt, images=folder)
    make_image_folder(tmp_path / "fixed", 1, size=(60, 40), seed=5)
    (folder / "later.jpg").write_bytes((tmp_path / "fixed" / "img_00000.jpg").read_bytes())
    assert extract_with(out, tiny_vit_pt, images=folder).nothing_to_do
    summary = extract_with(out, tiny_vit_pt, images=folder, retry_skipped=True)
    assert summary.written == 1 and read_all(out)[0][-1] == "later" and read_skip_record(out) == []
    assert summary.sidecar is None and not (tmp_path / "f.skipped.tsv").exists()
