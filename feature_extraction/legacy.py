"""Readers for the feature layouts of VL-T5, VL_adapter and CLIP-ViL behind the ``FeatureStore`` interface.

Layouts, as written and read by the original code (file/line references in ``docs/extraction.md``):

* **VL-T5 (one HDF5 for all images)** - j-min/VL-T5 ``feature_extraction/tsv_to_h5.py`` and
  ``detectron2_proposal_maxnms.py``: ``f[img_id]`` is a group with ``features`` (36, 2048) float32 region
  features, ``boxes`` (36, 4) x1, y1, x2, y2 **in pixels**, scalars ``img_h``/``img_w`` and ``obj_id``,
  ``obj_conf``, ``attr_id``, ``attr_conf``.  Its data loaders (``vqa_data.py``) divide x by ``img_w`` and y by
  ``img_h`` and clamp to [0, 1]; we return boxes normalised the same way.
* **VL_adapter CLIP grids (one HDF5 per image)** - ylsung/VL_adapter ``feature_extraction/coco_CLIP.py``:
  ``DIR/{img_id}.h5`` holding group ``img_id`` with ``features`` of shape (h*w, C) - already flattened row-major,
  e.g. (49, 2048) for RN101 at 224 px, fp16 as the GPU model produced it - and no boxes (its ``vqa_clip_data.py``
  uses all-zero boxes).  Any other groups/datasets are ignored.
* **CLIP-ViL (two folders of numpy files)** - clip-vil/CLIP-ViL ``caption/scripts/clip_prepro_feats.py``:
  ``{out}_clip_{model}_fc/{id}.npy`` (D,) and ``{out}_clip_{model}_att/{id}.npz`` with key ``feat`` (h, w, C)
  (its loader also accepts the key ``z``).  We read one folder holding both, or either folder of such a pair.

The VL-T5 region features (and VL_adapter grids) come back as ``Features.grid`` (B, T, C); ``fc`` is ``None``
where the layout has no pooled vector.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from feature_extraction.store import FeatureFileError, Features, FeatureStore, open_h5

logger = logging.getLogger(__name__)


def _stack(path: Path, ids: Sequence[str], arrays: list[np.ndarray], what: str) -> np.ndarray:
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise FeatureFileError(f"{path}: {what} of {list(ids)[:5]} have different shapes {sorted(shapes)}; "
                               "read them one id at a time")
    return np.stack(arrays) if arrays else np.zeros((0, 0), np.float32)


def _region_group(group: h5py.Group) -> tuple[np.ndarray, np.ndarray | None]:
    """``features`` and, when present, ``boxes`` normalised by ``img_w``/``img_h`` (VL-T5's loader rule)."""
    feats = group["features"][()]
    if "boxes" not in group:
        return feats, None
    boxes = group["boxes"][()].astype(np.float32)
    if "img_w" in group and "img_h" in group:
        boxes[:, (0, 2)] /= float(group["img_w"][()])
        boxes[:, (1, 3)] /= float(group["img_h"][()])
    return feats, np.clip(boxes, 0.0, 1.0)


def _region_features(path: Path, ids: Sequence[str], parts: list[tuple[np.ndarray, np.ndarray | None]]) -> Features:
    """Stack per-id (features, boxes) pairs; boxes only when every id has them."""
    boxes = [b for _, b in parts]
    has_boxes = bool(parts) and all(b is not None for b in boxes)
    return Features(list(ids), None, _stack(path, ids, [f for f, _ in parts], "features"),
                    _stack(path, ids, boxes, "boxes") if has_boxes else None)  # type: ignore[arg-type]


class VLT5H5Store(FeatureStore):
    """One HDF5 file, one group per image id (VL-T5 / LXMERT-style region features)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._file = open_h5(self.path)
        self._ids = [k for k, v in self._file.items() if isinstance(v, h5py.Group) and "features" in v]

    _attrs = {"layout": "vl-t5-h5"}

    has_grid = True

    def get_many(self, ids: Sequence[str]) -> Features:
        self.rows(ids)  # raises naming missing ids
        return _region_features(self.path, ids, [_region_group(self._file[i]) for i in ids])

    def close(self) -> None:
        if self._file.id.valid:
            self._file.close()


class VLAdapterDirStore(FeatureStore):
    """A folder of ``{id}.h5`` files (searched recursively; id = relative path without ``.h5``)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._files = {p.relative_to(self.path).with_suffix("").as_posix(): p for p in sorted(self.path.rglob("*.h5"))}
        self._ids = list(self._files)

    _attrs = {"layout": "vl-adapter-h5-per-image"}

    has_grid = True

    def _read_one(self, item_id: str) -> tuple[np.ndarray, np.ndarray | None]:
        with open_h5(self._files[item_id]) as f:
            if item_id in f and isinstance(f[item_id], h5py.Group):
                return _region_group(f[item_id])
            groups = [g for g in f.values() if isinstance(g, h5py.Group) and "features" in g]
            if len(groups) != 1:
                raise FeatureFileError(f"{self._files[item_id]}: expected group {item_id!r} with 'features'")
            return _region_group(groups[0])

    def get_many(self, ids: Sequence[str]) -> Features:
        self.rows(ids)
        return _region_features(self.path, ids, [self._read_one(i) for i in ids])


class ClipVilStore(FeatureStore):
    """``{id}.npy`` fc vectors and ``{id}.npz['feat']`` grids, in one folder or a ``*_fc``/``*_att`` pair."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        fc_dir, att_dir = self._pair(self.path)
        self._fc = {p.stem: p for p in sorted(fc_dir.glob("*.npy"))} if fc_dir else {}
        self._att = {p.stem: p for p in sorted(att_dir.glob("*.npz"))} if att_dir else {}
        if self._fc and self._att and self._fc.keys() != self._att.keys():
            logger.warning("%s: %d ids have fc but no grid or the reverse; using ids that have both", self.path,
                           len(self._fc.keys() ^ self._att.keys()))
        keys = (self._fc.keys() & self._att.keys()) if self._fc and self._att else (self._fc or self._att).keys()
        self._ids = sorted(keys)

    @staticmethod
    def _pair(path: Path) -> tuple[Path | None, Path | None]:
        fc_dir = path if any(path.glob("*.npy")) else None
        att_dir = path if any(path.glob("*.npz")) else None
        for mine, other in (("_att", "_fc"), ("_fc", "_att")):
            sibling = path.with_name(path.name[: -len(mine)] + other) if path.name.endswith(mine) else None
            if sibling is not None and sibling.is_dir():
                fc_dir = fc_dir or (sibling if other == "_fc" else None)
                att_dir = att_dir or (sibling if other == "_att" else None)
        return fc_dir, att_dir

    @property
    def attrs(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {"layout": "clip-vil-npy-npz"}
        if self._att and self._ids:
            grid = self._load_grid(self._ids[0], flatten=False)
            if grid.ndim == 3:
                attrs["grid_hw"] = list(grid.shape[:2])
        return attrs

    @property
    def has_grid(self) -> bool:
        return bool(self._att)

    def _load_grid(self, item_id: str, flatten: bool = True) -> np.ndarray:
        with np.load(self._att[item_id]) as z:
            grid = z["feat"] if "feat" in z else z["z"]
        return grid.reshape(-1, grid.shape[-1]) if flatten else grid  # (h, w, C) -> (h*w, C)

    def get_many(self, ids: Sequence[str]) -> Features:
        self.rows(ids)
        fc = _stack(self.path, ids, [np.load(self._fc[i]) for i in ids], "fc vectors") if self._fc else None
        grid = _stack(self.path, ids, [self._load_grid(i) for i in ids], "grids") if self._att else None
        return Features(list(ids), fc, grid)
