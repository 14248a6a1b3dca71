"""3-D layouts of the SAE point cloud and decoder-cosine neighbours.

* ``pca_coords`` - the 3-D PCA view (galaxy.pca_view), axes ordered by variance.
* ``umap_coords`` - 3-D UMAP with the cosine metric and a fixed seed.
* ``align_layers`` - keeps the picture from spinning when the user switches layers.

Alignment choice. Features differ from layer to layer, so coordinates cannot be matched
point by point. What layers of one model share is the d_model space (the residual stream).
Each layout gets a *screen map*: the d_model direction each screen axis follows, the
cross-covariance ``A = Xᶜᵀ Yᶜ`` [d, 3] between centred decoder rows and centred coordinates
(for PCA this is the principal axes times their variances). Layer L is then aligned to
the already aligned layer L-1 through those maps:

* PCA: only the sign of each axis is chosen (axis j flipped when ``A_L[:, j] · A_{L-1}[:, j]
  < 0``), so x/y/z stay PC1/PC2/PC3.
* UMAP: axes carry no meaning, so a full orthogonal Procrustes rotation ``R`` (reflections
  allowed) minimising ``‖A_L R - A_{L-1}‖`` is applied.

The first layer (and any layer whose d_model differs from its predecessor) gets a canonical
orientation instead: UMAP coordinates are rotated to their own principal axes, and every
axis is signed so that the coordinates have positive skewness.
"""
from __future__ import annotations

import numpy as np

from analysis.galaxy import pca_view


def pca_coords(W: np.ndarray) -> np.ndarray:
    """3-D PCA coordinates [F, 3] (float64), variance along axis j = λ_j."""
    coords, _, _ = pca_view(W, 3)
    return coords


def umap_coords(W: np.ndarray, n_neighbors: int = 15, min_dist: float = 0.1,
                random_state: int = 42) -> np.ndarray:
    """3-D UMAP [F, 3] of the decoder rows with the cosine metric (McInnes et al. 2018)."""
    import umap  # imported here: slow import, only needed for this layout

    n = W.shape[0]
    reducer = umap.UMAP(n_components=3, metric="cosine", n_neighbors=min(n_neighbors, n - 1),
                        min_dist=min_dist, random_state=random_state, n_jobs=1)
    return reducer.fit_transform(np.asarray(W, dtype=np.float32)).astype(np.float64)


def screen_map(W: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Cross-covariance [d, 3] between centred decoder rows and centred coordinates."""
    Xc = np.asarray(W, dtype=np.float64) - np.asarray(W).mean(axis=0, dtype=np.float64)
    Yc = Y - Y.mean(axis=0)
    return Xc.T @ Yc / max(len(Y) - 1, 1)


def canonical_orientation(Y: np.ndarray, rotate: bool) -> np.ndarray:
    """Centre ``Y``; optionally rotate to its principal axes; sign axes by positive skewness."""
    Yc = Y - Y.mean(axis=0)
    if rotate:
        _, vec = np.linalg.eigh(np.cov(Yc, rowvar=False))
        Yc = Yc @ vec[:, ::-1]
    skew = np.sum(Yc ** 3, axis=0)
    return Yc * np.where(skew < 0, -1.0, 1.0)


def align_to(Y: np.ndarray, W: np.ndarray, ref_map: np.ndarray, rotate: bool) -> np.ndarray:
    """Align centred coordinates ``Y`` of decoder ``W`` to a reference screen map.

    ``rotate=False``: per-axis sign flips; ``rotate=True``: orthogonal Procrustes.
    """
    A = screen_map(W, Y)
    if not rotate:
        return Y * np.where(np.sum(A * ref_map, axis=0) < 0, -1.0, 1.0)
    U, _, Vt = np.linalg.svd(A.T @ ref_map)
    return Y @ (U @ Vt)


def align_one(W: np.ndarray, Y: np.ndarray, previous: tuple[np.ndarray, np.ndarray] | None,
              rotate: bool) -> np.ndarray:
    """Align one layer's raw coordinates ``Y`` [F, 3] (decoder ``W``) to ``previous`` =
    (decoder, already aligned coordinates) of the preceding layer; canonical orientation
    when there is none or its d_model differs. Returns centred float32 coordinates."""
    Y = np.asarray(Y, dtype=np.float64)
    if previous is None or previous[0].shape[1] != W.shape[1]:
        Y = canonical_orientation(Y, rotate)
    else:
        ref = screen_map(previous[0], np.asarray(previous[1], dtype=np.float64))
        Y = align_to(Y - Y.mean(axis=0), W, ref, rotate)
    return Y.astype(np.float32)


def align_layers(decoders: list[np.ndarray], coords: list[np.ndarray], rotate: bool) -> list[np.ndarray]:
    """Align per-layer layouts in layer order (see module docstring).

    Parameters
    ----------
    decoders : per layer, decoder rows [F_L, d_L].
    coords : per layer, raw 3-D coordinates [F_L, 3].
    rotate : False for PCA (sign flips only), True for UMAP (Procrustes).

    Returns the aligned, centred coordinates (float32).
    """
    out, prev = [], None
    for W, Y in zip(decoders, coords):
        out.append(align_one(W, Y, prev, rotate))
        prev = (W, out[-1])
    return out


def neighbors(W: np.ndarray, K: int = 16, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Top-K decoder-cosine neighbours of every feature, self and dead (zero) rows excluded, best first.

    The cosine matrix is formed ``chunk`` rows at a time (``chunk × F`` floats), so 65k
    features fit in memory. Returns ``(indices int32 [F, K], cosines float32 [F, K])``;
    ``K`` is clipped to F-1.
    """
    U = np.asarray(W, dtype=np.float32)
    norms = np.linalg.norm(U, axis=1, keepdims=True)
    dead = norms[:, 0] == 0
    U = U / np.where(norms == 0, 1.0, norms)
    F = U.shape[0]
    K = min(K, F - 1)
    idx = np.empty((F, K), dtype=np.int32)
    cos = np.empty((F, K), dtype=np.float32)
    for s in range(0, F, chunk):
        S = U[s:s + chunk] @ U.T
        S[:, dead] = -np.inf              # a dead feature (zero row) is nobody's neighbour
        rows = np.arange(S.shape[0])
        S[rows, s + rows] = -np.inf
        part = np.argpartition(-S, K - 1, axis=1)[:, :K]
        vals = np.take_along_axis(S, part, axis=1)
        order = np.argsort(-vals, axis=1, kind="stable")
        idx[s:s + chunk] = np.take_along_axis(part, order, axis=1)
        cos[s:s + chunk] = np.take_along_axis(vals, order, axis=1)
    return idx, cos
