"""Open any feature file: the registry of feature-file layouts and :func:`open_features`.

Layouts (DESIGN.md §3): ours (``ids`` / ``fc`` / ``grid`` datasets, :class:`~feature_extraction.store.H5FeatureStore`)
and the legacy ones of :mod:`feature_extraction.legacy` (VL-T5 one-file HDF5, VL_adapter one ``.h5`` per image,
CLIP-ViL ``.npy`` / ``.npz`` folders). :data:`FEATURE_LAYOUTS` is a dict literal of lazy builders (as DPR's
``BIENCODER_INITIALIZERS``): neither :mod:`~feature_extraction.store` nor :mod:`~feature_extraction.legacy` imports
this module, so the factory that must know every layout sits above both and there is no import cycle.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import h5py

from feature_extraction.store import FeatureFileError, FeatureStore, open_h5

logger = logging.getLogger(__name__)


def _ours(path: Path) -> FeatureStore:
    from feature_extraction.store import H5FeatureStore

    return H5FeatureStore(path)


def _vlt5_h5(path: Path) -> FeatureStore:
    from feature_extraction.legacy import VLT5H5Store

    return VLT5H5Store(path)


def _vladapter_dir(path: Path) -> FeatureStore:
    from feature_extraction.legacy import VLAdapterDirStore

    return VLAdapterDirStore(path)


def _clip_vil(path: Path) -> FeatureStore:
    from feature_extraction.legacy import ClipVilStore

    return ClipVilStore(path)


FEATURE_LAYOUTS: dict[str, Callable[[Path], FeatureStore]] = {
    "vlt5-retrieval": _ours,  # one HDF5: ids (N,), fc (N, D), grid (N, T, C)
    "vlt5-h5": _vlt5_h5,  # VL-T5: one HDF5, f[img_id]['features'] (+ boxes)
    "vladapter-dir": _vladapter_dir,  # VL_adapter: DIR/{img_id}.h5, group img_id / features
    "clip-vil": _clip_vil,  # CLIP-ViL: {id}.npy fc + {id}.npz['feat'] grid
}


def detect_layout(path: str | Path) -> str:
    """The :data:`FEATURE_LAYOUTS` key of what is on disk at ``path``; an unknown layout raises naming the file."""
    path = Path(path)
    if not path.exists():
        raise FeatureFileError(f"{path}: no such feature file or directory")
    if path.is_file():
        if h5py.is_hdf5(path):
            with open_h5(path) as f:
                if "ids" in f and "fc" in f:
                    return "vlt5-retrieval"
                first = next(iter(f.values()), None)
                if isinstance(first, h5py.Group) and "features" in first:
                    return "vlt5-h5"
        raise FeatureFileError(f"{path}: not a feature file in a known layout (ours: ids/fc/grid datasets; VL-T5: "
                               "f[img_id]['features'])")
    if any(path.rglob("*.h5")):
        return "vladapter-dir"
    return "clip-vil"  # the reader also looks for the sibling *_fc / *_att folder of a CLIP-ViL pair


def open_features(path: str | Path) -> FeatureStore:
    """Open ``path`` with the reader of its layout (:func:`detect_layout`); close it (or use ``with``) when done."""
    layout = detect_layout(path)
    store = FEATURE_LAYOUTS[layout](Path(path))
    if layout == "clip-vil" and not store.ids:
        raise FeatureFileError(f"{path}: folder holds no {{id}}.h5 (VL_adapter) or {{id}}.npy/.npz (CLIP-ViL) files")
    logger.debug("%s: %s layout, %d items", path, layout, len(store))
    return store
