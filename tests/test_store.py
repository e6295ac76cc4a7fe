from __future__ import annotations

import h5py
import numpy as np
import pytest

from feature_extraction.readers import open_features
from feature_extraction.store import FeatureFileError, H5FeatureStore


def _write(path, n=7, d=5, t=3, c=4):
    rng = np.random.default_rng(0)
    ids = [f"img{i}" for i in range(n)]
    fc, grid = rng.normal(size=(n, d)).astype("f4"), rng.normal(size=(n, t, c)).astype("f4")
    with h5py.File(path, "w") as f:
        f.create_dataset("ids", data=np.array(ids, dtype=h5py.string_dtype()))
        f.create_dataset("fc", data=fc)
        f.create_dataset("grid", data=grid)
        f.attrs["grid_hw"] = [1, 3]
    return ids, fc, grid


def test_lookup_in_any_order_with_repeats(tmp_path):
    ids, fc, grid = _write(tmp_path / "f.h5")
    with open_features(tmp_path / "f.h5") as store:
        assert isinstance(store, H5FeatureStore) and len(store) == 7 and "img3" in store
        want = ["img5", "img1", "img5", "img0"]
        got = store.get_many(want)
        idx = [5, 1, 5, 0]
        np.testing.assert_array_equal(got.fc, fc[idx])
        np.testing.assert_array_equal(got.grid, grid[idx])
        assert got.ids == want
        assert store.attrs["grid_hw"] == [1, 3]


def test_batches_cover_file_in_order(tmp_path):
    ids, fc, _ = _write(tmp_path / "f.h5")
    store = open_features(tmp_path / "f.h5")
    parts = list(store.batches(3))
    assert [len(p.ids) for p in parts] == [3, 3, 1]
    np.testing.assert_array_equal(np.concatenate([p.fc for p in parts]), fc)


def test_missing_id_and_missing_file_name_what_is_wrong(tmp_path):
    _write(tmp_path / "f.h5")
    store = open_features(tmp_path / "f.h5")
    with pytest.raises(FeatureFileError, match=r"f\.h5.*'nope'"):
        store.get_many(["img1", "nope"])
    with pytest.raises(FeatureFileError, match="no such"):
        open_features(tmp_path / "absent.h5")
