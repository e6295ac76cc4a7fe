"""The vector sample a sizing report is measured on: strided rows of a feature file, or clustered synthetic data."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from foundations.errors import UserError
from foundations.rows import normalise_rows
from retrieval.indexing.synthetic import clustered_vectors


def sizing_sample(features: Path | None, sample: int, queries: int, dim: int, batch_size: int = 8192,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(sample, queries)``, L2-normalised: strided rows of ``features``, or clustered synthetic vectors."""
    if features is None:
        x = clustered_vectors(sample + queries, dim, seed=seed)
        return x[:sample], x[sample:]
    from feature_extraction.readers import open_features

    with open_features(features) as store:
        n = len(store)
        wanted = sample + queries
        if n < 2 * queries:
            raise UserError(f"{features}: {n} vectors is too few for a sizing sample of {queries} queries")
        step = max(1, n // wanted)
        parts = []
        for start, feats in zip(range(0, n, batch_size), store.batches(batch_size)):
            rows = np.arange(start, start + len(feats.ids))
            parts.append(feats.fc[(rows % step) == 0].astype(np.float32))  # (b, D) strided subset
        x = normalise_rows(np.concatenate(parts)[:wanted])
    order = np.random.default_rng(seed).permutation(len(x))
    q = min(queries, len(x) // 2)
    return x[order[q:]], x[order[:q]]
