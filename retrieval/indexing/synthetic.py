"""Clustered synthetic embeddings for ANN tests, sizing and benchmarks (structured data, as faiss' own tests use).

A Gaussian mixture on the unit sphere: each cluster is a random unit centre plus a low-rank spread (``rank``
directions; ``spread`` is the typical norm of a point's offset from its unit centre) and a little isotropic noise,
then L2-normalised. Real CLIP embeddings are similarly clustered with a
low intrinsic dimension; i.i.d. Gaussian vectors would make every ANN method look bad (no structure to exploit).
"""

from __future__ import annotations

import numpy as np

CENTRES_SEED = 1234  # the mixture itself is fixed per (dim, n_clusters, rank); ``seed`` only draws points


def clustered_vectors(n: int, dim: int, *, n_clusters: int = 200, rank: int = 16, spread: float = 1.2,
                      noise: float = 0.2, seed: int = 0) -> np.ndarray:
    """(n, dim) float32 unit vectors drawn from a fixed mixture; different ``seed`` = fresh points (queries)."""
    mix = np.random.default_rng(CENTRES_SEED + 7919 * dim + n_clusters + 31 * rank)
    centres = mix.standard_normal((n_clusters, dim)).astype(np.float32)  # (C, D)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    bases = mix.standard_normal((n_clusters, rank, dim)).astype(np.float32) / np.sqrt(rank * dim)  # (C, R, D)
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 65536):  # bounded temporaries for large n
        m = min(65536, n - start)
        label = rng.integers(0, n_clusters, m)
        z = rng.standard_normal((m, rank)).astype(np.float32)  # (m, R)
        x = centres[label]  # (m, D)
        for c in np.unique(label):  # per cluster: (m_c, R) @ (R, D), no (m, R, D) temporary
            rows = label == c
            x[rows] += spread * (z[rows] @ bases[c])
        x += noise * rng.standard_normal((m, dim)).astype(np.float32) / np.sqrt(dim)
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out
