"""Export a feature file to VL_adapter's CLIP layout: one ``{id}.h5`` per image holding group ``id/features``.

    vlt5r export-vladapter feats.h5 data_clip_RN101_att [--fc-dir data_clip_RN101_fc]

Follows what ylsung/VL_adapter ``feature_extraction/coco_CLIP.py`` writes and ``VL-T5/src/vqa_clip_data.py``
reads: ``h5py.File(DIR / f"{img_id}.h5")[f"{img_id}/features"]`` of shape (h*w, C).  Our grid rows are already
(h*w, C) row-major, so they are copied unchanged (same dtype).  With ``--fc-dir`` the pooled vector is also
written as ``features`` of shape (1, D), the shape that VL_adapter's ``vis_pooling_output`` loader (same code
path, ``data_clip_{type}_fc`` folder) handles.  Each file is written to a temporary name and renamed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import h5py
import numpy as np

from feature_extraction.store import FeatureFileError, FeatureStore

logger = logging.getLogger(__name__)


def _write_one(directory: Path, item_id: str, features: np.ndarray) -> None:
    path = directory / f"{item_id}.h5"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        f.create_group(item_id).create_dataset("features", data=features, track_times=False)
    os.replace(tmp, path)


def export_vladapter(store: FeatureStore, out_dir: str | Path, fc_dir: str | Path | None = None,
                     batch_size: int = 256) -> int:
    """Write every item of ``store`` in VL_adapter's layout; returns the number of items written."""
    out_dir = Path(out_dir)
    if not getattr(store, "has_grid", False):
        raise FeatureFileError(f"{store.path}: has no grid to export (extracted with --no-grid, or text features)")
    n = 0
    for part in store.batches(batch_size):
        for row, item_id in enumerate(part.ids):
            _write_one(out_dir, item_id, part.grid[row])  # (h*w, C)
            if fc_dir is not None and part.fc is not None:
                _write_one(Path(fc_dir), item_id, part.fc[row][None, :])  # (1, D)
        n += len(part.ids)
    logger.info("exported %d items to %s", n, out_dir)
    return n


if __name__ == "__main__":  # the old entry point: the same as `vlt5r export-vladapter`
    import sys

    from vlt5r.drivers.export_vladapter import main

    sys.exit(main())
