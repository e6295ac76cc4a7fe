"""Legacy layouts, written here the way VL-T5, VL_adapter and CLIP-ViL write them, read through
``open_features``; the VL_adapter export round-trips (library call and CLI)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from helpers_extract import extract_with, read_all

from vlt5r.drivers import export_vladapter as export_cli
from feature_extraction.export_vladapter import export_vladapter
from feature_extraction.legacy import ClipVilStore, VLAdapterDirStore, VLT5H5Store
from feature_extraction.readers import open_features
from feature_extraction.store import FeatureFileError
from feature_extraction.tiny import make_image_folder

rng = np.random.default_rng(0)


def test_vlt5_single_file_with_pixel_boxes(tmp_path):
    """tsv_to_h5.py layout: f[img_id] group with features (36, 2048), boxes in pixels, img_h/img_w, obj/attr."""
    feats = {i: rng.normal(size=(5, 7)).astype("f4") for i in ("COCO_1", "COCO_2", "COCO_3")}
    boxes = {i: rng.uniform(0, 1, size=(5, 4)).astype("f4") * [640, 480, 640, 480] for i in feats}
    with h5py.File(tmp_path / "val2014_obj36.h5", "w") as f:
        for i in feats:
            grp = f.create_group(i)
            grp["features"], grp["boxes"] = feats[i], boxes[i]
            grp["img_w"], grp["img_h"] = 640, 480
            grp["obj_id"], grp["obj_conf"] = np.arange(5), np.ones(5, "f4")
    store = open_features(tmp_path / "val2014_obj36.h5")
    assert isinstance(store, VLT5H5Store) and len(store) == 3 and "COCO_2" in store
    got = store.get_many(["COCO_3", "COCO_1"])
    np.testing.assert_array_equal(got.grid, np.stack([feats["COCO_3"], feats["COCO_1"]]))
    np.testing.assert_allclose(got.boxes[1], boxes["COCO_1"] / [640, 480, 640, 480], rtol=1e-6)
    assert got.fc is None and got.boxes.max() <= 1.0 and store.attrs["layout"] == "vl-t5-h5"
    with pytest.raises(FeatureFileError, match="'nope'"):
        store.get_many(["nope"])


def test_vladapter_file_per_image_with_nested_ids(tmp_path):
    """coco_CLIP.py layout: DIR/{img_id}.h5 holding group img_id / features (h*w, C), fp16, no boxes."""
    grids = {i: rng.normal(size=(49, 16)).astype("f2") for i in ("100", "200", "sub/300")}
    for item_id, grid in grids.items():
        (tmp_path / item_id).parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(tmp_path / f"{item_id}.h5", "w") as f:
            f.create_group(item_id)["features"] = grid
    store = open_features(tmp_path)
    assert isinstance(store, VLAdapterDirStore) and store.ids == ["100", "200", "sub/300"]
    got = store.get_many(["sub/300", "100"])
    assert got.grid.dtype == np.float16 and got.boxes is None
    np.testing.assert_array_equal(got.grid, np.stack([grids["sub/300"], grids["100"]]))


@pytest.mark.parametrize("paired", [False, True])
def test_clipvil_npy_fc_and_npz_grid(tmp_path, paired):
    """clip_prepro_feats.py (CLIP-ViL) layout: {id}.npy (D,) and {id}.npz['feat'] (h, w, C)."""
    fc_dir = tmp_path / ("coco_clip_RN50_fc" if paired else "feats")
    att_dir = tmp_path / "coco_clip_RN50_att" if paired else fc_dir
    fc_dir.mkdir(), att_dir.mkdir(exist_ok=True)
    fcs = {i: rng.normal(size=(12,)).astype("f4") for i in ("391895", "522418")}
    atts = {i: rng.normal(size=(3, 3, 8)).astype("f4") for i in fcs}
    for i in fcs:
        np.save(fc_dir / i, fcs[i])
        np.savez_compressed(att_dir / i, feat=atts[i])
    store = open_features(att_dir)
    assert isinstance(store, ClipVilStore) and store.ids == ["391895", "522418"]
    got = store.get_many(["522418"])
    np.testing.assert_array_equal(got.fc, fcs["522418"][None])
    np.testing.assert_array_equal(got.grid, atts["522418"].reshape(1, 9, 8))
    assert store.attrs["grid_hw"] == [3, 3] and store.has_grid


def test_unknown_layouts_are_named(tmp_path):
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["something"] = np.zeros(3)
    with pytest.raises(FeatureFileError, match="known layout"):
        open_features(tmp_path / "x.h5")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FeatureFileError, match="holds no"):
        open_features(tmp_path / "empty")


def test_vladapter_export_round_trips(tiny_resnet_pt, tmp_path, capsys):
    make_image_folder(tmp_path / "imgs", 5, size=(120, 90), subdirs=2)
    extract_with(tmp_path / "f.h5", tiny_resnet_pt, images=tmp_path / "imgs", dtype="float16")
    ids, fc, grid, _ = read_all(tmp_path / "f.h5")
    with open_features(tmp_path / "f.h5") as store:
        assert export_vladapter(store, tmp_path / "att", fc_dir=tmp_path / "fc") == 5
    with h5py.File(tmp_path / "att" / f"{ids[0]}.h5", "r") as f:  # exactly what VL_adapter's loader reads
        feats = f[f"{ids[0]}/features"][...]
    assert feats.shape == (9, 256) and feats.dtype == np.float16
    back = open_features(tmp_path / "att")
    assert back.ids == ids
    np.testing.assert_array_equal(back.get_many(ids).grid, grid)
    np.testing.assert_array_equal(open_features(tmp_path / "fc").get_many(ids).grid[:, 0], fc)

    assert export_cli.main([str(tmp_path / "f.h5"), str(tmp_path / "att2")]) == 0
    assert "exported 5 items" in capsys.readouterr().out
    np.testing.assert_array_equal(open_features(tmp_path / "att2").get_many(ids).grid, grid)
