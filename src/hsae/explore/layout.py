"""2-D maps of decoder rows for the browser: UMAP for large sets, PCA for small ones."""

from __future__ import annotations

import warnings

import numpy as np

UMAP_MIN = 200  # below this many points UMAP's neighbour graph is too sparse to beat PCA


def pca2(x: np.ndarray) -> np.ndarray:
    """First two principal components of the rows of x, [n, 2] (zeros for fewer than 2 rows)."""
    x = np.asarray(x, np.float64)
    if len(x) < 2:
        return np.zeros((len(x), 2))
    x = x - x.mean(0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    out = u[:, :2] * s[:2]
    return np.pad(out, ((0, 0), (0, 2 - out.shape[1])))


def map2(x: np.ndarray, method: str = "auto", seed: int = 0) -> np.ndarray:
    """[n, 2] coordinates of the rows of x, scaled to [0, 1]: UMAP (cosine) or PCA."""
    # a handful of points has no neighbour graph to speak of: PCA whatever was asked
    if len(x) >= 16 and (method == "umap" or (method == "auto" and len(x) >= UMAP_MIN)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # umap warns that a fixed seed disables parallelism
            import umap

            y = umap.UMAP(n_neighbors=min(15, len(x) - 1), metric="cosine", random_state=seed).fit_transform(x)
    else:
        y = pca2(x)
    y = np.asarray(y, np.float64)
    lo, span = y.min(0), np.ptp(y, 0)
    return (y - lo) / np.where(span > 0, span, 1.0)
