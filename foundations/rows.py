"""Row-wise L2 normalisation (cosine = inner product on unit rows), one definition for numpy and torch."""

from __future__ import annotations

import numpy as np


def normalise_rows(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """``x / ||x||`` per row in float32; an all-zero row stays zero (never NaN)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, eps)
