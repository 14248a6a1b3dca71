"""The geometry of wide SAEs (65k to 1M features) in bounded memory (issue 12, item 2).

At the published width (16,384 features, METHODS 1) the geometry stage forms each affinity
as a dense float32 [F, F] matrix: 1 GB at 16k, 17 GB at 65k, 275 GB at 262k. Above a width
threshold (``GeometryConfig.wide_from``) the stage takes this path instead, in which nothing
of size F x F exists:

* **co-occurrence** is a sparse matrix of each feature's top partners (``top_partners``:
  the diagonal and the ``k`` largest off-diagonal counts of every row, symmetrised by union,
  exact counts for every pair kept), computed from the block-by-feature presence matrix a
  column chunk at a time - the same rule as ``precompute.cooccur`` with ``cooc_topk``;
* **lobes** come from a sparse k-nearest-neighbour affinity: each METHODS 1 affinity is
  evaluated on the stored pairs only (``pair_affinity``), each feature keeps its
  ``n_neighbors`` highest (``knn_graph``), and the spectral embedding is that of this sparse
  graph (``sparse_embedding``: the same normalisation as ``brain.embed``, ARPACK on sparse
  products, regularised so a graph in pieces still embeds its lobes). The geometry affinity is the angular similarity on a decoder-cosine kNN graph.
  This is the usual sparse form of spectral clustering (von Luxburg, *A tutorial on
  spectral clustering*, Statistics and Computing 17, 2007, section 2.2: the k-nearest-
  neighbour graph); it is an approximation of the published dense clustering, whose
  agreement tests/test_wide.py measures where both run;
* **UMAP** is fitted on a random sample of features and extended to the rest
  (``umap_sampled``);
* **decoder-cosine neighbours** (cards, the geometry kNN graph) come from NN-descent
  (``nndescent_neighbors``), or from an inverted file (``ivf_neighbors``, faster and of far
  lower recall); ``neighbor_recall`` measures either against the exact table.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from analysis import brain
from analysis.partners import top_partners, top_per_row  # noqa: F401  (top_partners: the wide co-occurrence)


# --------------------------------------------------------------------------- affinities

def pair_affinity(C, T: int, name: str, live: np.ndarray | None = None) -> sp.csr_matrix:
    """One co-occurrence affinity (METHODS 1 table) on the stored off-diagonal pairs of ``C``.

    Parameters
    ----------
    C : sparse symmetric [F, F] counts (the full ``Bᵀ B`` or ``top_partners``); only stored
        entries are evaluated - a pair that never co-occurs (``C_ij = 0``) is no candidate
        neighbour, which for simple matching (dominated by ``n00``) is a real restriction.
    live : optional boolean [F]; the result is among these features, in their order.

    Returns CSR float32 [n, n] with zero diagonal; values as ``brain.cooccurrence_affinity``
    (phi shifted by +1) at every stored pair.
    """
    C = sp.coo_matrix(C)
    diag = np.zeros(C.shape[0])
    on = C.row == C.col
    diag[C.row[on]] = C.data[on]
    i, j, n11 = C.row[~on], C.col[~on], C.data[~on].astype(np.float64)
    vals = brain._affinity_rows(n11, diag[i], diag[j], float(T), name).astype(np.float32)
    n = C.shape[0]
    if live is not None:
        # renumber among the live features; a pair with a dead end (none in a real C: a
        # feature never present co-occurs with nothing) is dropped
        live = np.asarray(live, dtype=bool)
        pos = np.cumsum(live) - 1
        keep = live[i] & live[j]
        i, j, vals, n = pos[i[keep]], pos[j[keep]], vals[keep], int(live.sum())
    return sp.csr_matrix((vals, (i, j)), shape=(n, n))


def knn_graph(A, n_neighbors: int = 15) -> sp.csr_matrix:
    """Sparse kNN affinity: each row's ``n_neighbors`` largest entries, symmetrised by maximum.

    ``A`` is a sparse [n, n] affinity (non-negative). Returns CSR float32 [n, n]: ``G_ij =
    A_ij`` when j is among i's neighbours or i among j's (ties: lower column), else 0.
    """
    A = sp.csr_matrix(A, dtype=np.float32)
    A.sort_indices()
    keep = top_per_row(A.indptr, A.indices, A.data.astype(np.float64), n_neighbors)
    row = np.repeat(np.arange(A.shape[0]), np.diff(A.indptr))
    G = sp.csr_matrix((A.data[keep], (row[keep], A.indices[keep])), shape=A.shape)
    G.eliminate_zeros()
    return G.maximum(G.T).tocsr()


def geometry_knn(W: np.ndarray, neighbors: np.ndarray, cosines: np.ndarray) -> sp.csr_matrix:
    """Angular-similarity kNN graph (METHODS 1 geometry affinity) from a neighbour table.

    ``neighbors`` int [n, m] / ``cosines`` [n, m] are each row's decoder-cosine neighbours
    (indices into the same n rows; -1 = none). Returns CSR float32 [n, n], symmetrised by maximum.
    """
    n, m = neighbors.shape
    sim = 1.0 - np.arccos(np.clip(np.asarray(cosines, np.float64), -1, 1)) / np.pi
    ok = (neighbors >= 0).ravel()          # -1: no neighbour found (fillers of ivf_neighbors)
    G = sp.csr_matrix((sim.ravel()[ok].astype(np.float32),
                       (np.repeat(np.arange(n), m)[ok], neighbors.ravel()[ok])), shape=(n, n))
    G.setdiag(0)
    G.eliminate_zeros()
    return G.maximum(G.T).tocsr()


def ivf_neighbors(W: np.ndarray, K: int = 16, n_cells: int | None = None, n_probe: int = 8,
                  random_state: int = 0, sample: int = 20000, n_iter: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Approximate top-``K`` decoder-cosine neighbours by an inverted-file search.

    The exact table (``layout.neighbors``) costs F² d: about 20 minutes at 262k features on
    two cores. Here unit rows are assigned to ``n_cells`` cells (spherical k-means of a
    sample, default ``sqrt(F)`` cells) and each row is compared with the rows of the
    ``n_probe`` cells whose centres are nearest to its own cell's centre: about F² d
    n_probe / n_cells work (Jégou, Douze, Schmid, *Product quantization for nearest
    neighbor search*, IEEE TPAMI 33, 2011, the IVF stage). Dead (zero) rows are nobody's
    neighbour; a row whose probed cells hold fewer than K others gets -1 / -inf fillers.

    Returns ``(indices int32 [F, K], cosines float32 [F, K])``, best first, as
    ``layout.neighbors``; ``neighbor_recall`` measures the overlap with the exact table.
    """
    U = np.asarray(W, dtype=np.float32)
    norms = np.linalg.norm(U, axis=1)
    dead = norms == 0
    U = U / np.where(dead, 1.0, norms)[:, None]
    F = U.shape[0]
    K = min(K, F - 1)
    n_cells = n_cells or max(1, int(np.sqrt(F)))
    rng = np.random.default_rng(random_state)
    X = U[rng.choice(np.flatnonzero(~dead), size=min(sample, int((~dead).sum())), replace=False)]
    # spherical k-means, a few Lloyd steps: the cells only need to be compact, not optimal
    centres = X[rng.choice(X.shape[0], size=min(n_cells, X.shape[0]), replace=False)].copy()
    n_cells = centres.shape[0]
    for _ in range(n_iter):
        lab = np.argmax(X @ centres.T, axis=1)
        sums = np.zeros_like(centres)
        np.add.at(sums, lab, X)
        empty = np.linalg.norm(sums, axis=1) == 0
        sums[empty] = centres[empty]
        centres = sums / np.linalg.norm(sums, axis=1, keepdims=True)
    live = np.flatnonzero(~dead)               # dead rows belong to no cell: nobody's neighbour
    cell = np.empty(live.size, np.int64)
    for s in range(0, live.size, 65536):
        cell[s:s + 65536] = np.argmax(U[live[s:s + 65536]] @ centres.T, axis=1)
    order = live[np.argsort(cell, kind="stable")]
    start = np.searchsorted(np.sort(cell), np.arange(n_cells + 1))
    # a cell's own centre is its nearest, so its rows lead the candidates and row i of the
    # cell is candidate i (self-exclusion without a mask)
    sim = centres @ centres.T
    np.fill_diagonal(sim, np.inf)
    probe = np.argsort(-sim, axis=1)[:, :min(n_probe, n_cells)]
    idx = np.full((F, K), -1, dtype=np.int32)
    cos = np.full((F, K), -np.inf, dtype=np.float32)
    for c in range(n_cells):
        rows = order[start[c]:start[c + 1]]
        if rows.size == 0:
            continue
        cand = np.concatenate([order[start[p]:start[p + 1]] for p in probe[c]])
        S = U[rows] @ U[cand].T
        S[np.arange(rows.size), np.arange(rows.size)] = -np.inf
        k = min(K, cand.size - 1)
        if k <= 0:
            continue
        part = np.argpartition(-S, k - 1, axis=1)[:, :k]
        vals = np.take_along_axis(S, part, axis=1)
        best = np.argsort(-vals, axis=1, kind="stable")
        idx[rows, :k] = cand[np.take_along_axis(part, best, axis=1)]
        cos[rows, :k] = np.take_along_axis(vals, best, axis=1)
    idx[~np.isfinite(cos)] = -1
    return idx, cos


def nndescent_neighbors(W: np.ndarray, K: int = 16, n_candidates: int = 48, random_state: int = 0,
                        n_jobs: int | None = None, exact_upto: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Approximate top-``K`` decoder-cosine neighbours by NN-descent (pynndescent).

    NN-descent (Dong, Charikar, Li, *Efficient k-nearest neighbor graph construction for
    generic similarity measures*, WWW 2011) starts from random-projection-tree neighbours and
    refines a graph of ``n_candidates`` neighbours per row by comparing each row with its
    neighbours' neighbours; work grows about as F n_candidates² d instead of F² d. The graph
    is wider than ``K`` because its width buys recall (bench/bench_wide_neighbors.py, 65,536 x
    128: of the 16 exact neighbours 0.88 found with 32 candidates, 0.97 with 48).
    The ``K`` best of each row are then ranked by their exact float32 cosines.

    Up to ``exact_upto`` live rows (default: four graph widths, too few for its trees) the
    candidates come from the exact table instead. pynndescent compiles its parallel functions
    with numba in every new process, about a minute of CPU that numba cannot cache. Dead (zero)
    rows are nobody's neighbour and get -1 / -inf fillers, as do rows short of ``K``
    neighbours. Returns ``(indices int32 [F, K], cosines float32 [F, K])``, best
    first, as ``layout.neighbors``.
    """
    U = _unit(W)
    norms = np.linalg.norm(np.asarray(W, dtype=np.float32), axis=1)
    live = np.flatnonzero(norms > 0)
    F = U.shape[0]
    K = min(K, F - 1)
    idx = np.full((F, K), -1, dtype=np.int32)
    cos = np.full((F, K), -np.inf, dtype=np.float32)
    if live.size < 2 or K <= 0:
        return idx, cos
    m = min(max(n_candidates, K) + 1, live.size)      # the graph lists each row itself too
    X = np.ascontiguousarray(U[live])
    if live.size <= (4 * m if exact_upto is None else exact_upto):
        from analysis.layout import neighbors as exact

        g, _ = exact(X, m - 1)
    else:
        from pynndescent import NNDescent

        g, _ = NNDescent(X, metric="cosine", n_neighbors=m, random_state=random_state, n_jobs=n_jobs,
                         low_memory=True).neighbor_graph
    g = np.asarray(g, dtype=np.int64)
    # drop each row itself and missing entries (-1), keep the graph's order otherwise
    ok = (g >= 0) & (g != np.arange(live.size)[:, None])
    first = np.argsort(~ok, axis=1, kind="stable")[:, :K]
    g, ok = np.take_along_axis(g, first, axis=1), np.take_along_axis(ok, first, axis=1)
    # exact cosines of the kept pairs, a chunk of rows at a time, then best first
    c = np.empty(g.shape, dtype=np.float32)
    step = max(1, 2 ** 24 // (g.shape[1] * X.shape[1]))    # 64 MB of gathered rows at a time
    for s in range(0, live.size, step):
        c[s:s + step] = np.einsum("id,ikd->ik", X[s:s + step], X[np.maximum(g[s:s + step], 0)])
    c[~ok] = -np.inf
    best = np.argsort(-c, axis=1, kind="stable")
    g, c = np.take_along_axis(g, best, axis=1), np.take_along_axis(c, best, axis=1)
    k = g.shape[1]
    idx[live, :k] = np.where(np.isfinite(c), live[g], -1)
    cos[live, :k] = c
    return idx, cos


def neighbor_recall(W: np.ndarray, idx: np.ndarray, n_queries: int = 500, random_state: int = 0) -> float:
    """Mean fraction of the exact top-K decoder-cosine neighbours that ``idx`` [F, K] holds,
    on ``n_queries`` random live rows (exact cosines against all rows for those only)."""
    U = np.asarray(W, dtype=np.float32)
    norms = np.linalg.norm(U, axis=1)
    U = U / np.where(norms == 0, 1.0, norms)[:, None]
    live = np.flatnonzero(norms > 0)
    q = np.random.default_rng(random_state).choice(live, size=min(n_queries, live.size), replace=False)
    K = idx.shape[1]
    S = U[q] @ U.T
    S[:, norms == 0] = -np.inf
    S[np.arange(q.size), q] = -np.inf
    exact = np.argpartition(-S, K - 1, axis=1)[:, :K]
    return float(np.mean([np.intersect1d(exact[i], idx[q[i]]).size / K for i in range(q.size)]))


# --------------------------------------------------------------------------- clustering

def sparse_embedding(G, n_components: int, random_state: int = 42, tol: float = 1e-5,
                     regularization: float | None = 1.0) -> np.ndarray:
    """Spectral embedding [n, n_components] of a sparse affinity graph ``G`` [n, n].

    The normalisation of ``brain.embed`` (sklearn's ``spectral_embedding``, ``drop_first=
    False``): eigenvectors of the smallest eigenvalues of the normalised Laplacian ``L = I -
    D^-1/2 A D^-1/2`` (self-loops left out of the degrees), divided by the square-root degrees,
    each vector's largest-magnitude entry made positive. Found by ARPACK as the largest of
    ``2I - L`` with sparse products: memory O(nnz + n * ncv).

    ``regularization`` = tau / (mean degree): ``A = G + (tau / n) 1 1ᵀ``, applied implicitly
    (a rank-one term in each product, nothing of size n x n). A kNN graph can fall apart into
    many small components - an approximate neighbour search makes that likely - and the
    embedding then spends its vectors on them instead of on the lobes; the dense affinities
    of the published path are complete graphs and never do. Regularised spectral clustering
    (Amini, Chen, Bickel, Levina, Annals of Statistics 41, 2013; Qin & Rohe, NeurIPS 2013, who
    take tau = the mean degree, the default here) joins them. None or 0: ``A = G`` exactly.
    """
    from scipy.sparse.linalg import LinearOperator, eigsh
    from sklearn.utils import check_random_state

    G = sp.csr_matrix(G, dtype=np.float64)
    G.setdiag(0)
    G.eliminate_zeros()
    n = G.shape[0]
    deg = np.asarray(G.sum(axis=1)).ravel()
    tau = float(regularization or 0.0) * float(deg.mean()) if n else 0.0
    deg = deg + tau                                    # row sums of G + (tau / n) 1 1ᵀ
    dd = np.sqrt(np.where(deg == 0, 1.0, deg))
    inv = 1.0 / dd
    M = (sp.diags(inv) @ G @ sp.diags(inv)).tocsr()

    def matvec(x):
        x = np.asarray(x).reshape(-1)
        y = M @ x + x
        if tau:
            y += inv * (tau / n) * float(inv @ x)
        return y

    op = LinearOperator((n, n), matvec=matvec, dtype=np.float64)
    v0 = check_random_state(random_state).uniform(-1, 1, n)
    ncv = min(n - 1, max(2 * n_components + 1, 64))
    _, vecs = eigsh(op, k=n_components, which="LA", tol=tol, v0=v0, ncv=ncv)
    vecs = vecs[:, ::-1]
    return brain._sign_flip(vecs / dd[:, None])


def sparse_spectral_sweep(G, ks, random_state: int = 42, n_init: int = 1) -> np.ndarray:
    """Spectral clustering of a sparse graph for every k: one embedding with ``max(ks)``
    vectors, k-means on its first k columns (``brain.spectral_sweep``'s one-embedding path).

    Returns int64 [len(ks), n] labels.
    """
    from sklearn.cluster import k_means

    ks = [int(k) for k in ks]
    maps = sparse_embedding(G, max(ks), random_state)
    labels = np.empty((len(ks), G.shape[0]), dtype=np.int64)
    for row, k in enumerate(ks):
        _, labels[row], _ = k_means(maps[:, :k], k, random_state=random_state, n_init=n_init)
    return labels


# --------------------------------------------------------------------------- UMAP

def _unit(W: np.ndarray) -> np.ndarray:
    U = np.asarray(W, dtype=np.float32)
    return U / np.maximum(np.linalg.norm(U, axis=1, keepdims=True), 1e-12)


def interpolate_from_sample(W: np.ndarray, sample: np.ndarray, Y_sample: np.ndarray, n_neighbors: int = 5,
                            chunk: int = 4096) -> np.ndarray:
    """Coordinates for every row of ``W`` from those of a sample: each row gets the mean of
    its ``n_neighbors`` nearest sample points' coordinates (decoder cosine), weighted by
    cosine; sample rows keep their own. Work F x n_sample x d; memory [chunk, n_sample]."""
    U = _unit(W)
    S = U[sample]
    Y = np.empty((U.shape[0], Y_sample.shape[1]), dtype=np.float64)
    k = min(n_neighbors, len(sample))
    for s in range(0, U.shape[0], chunk):
        cos = U[s:s + chunk] @ S.T
        part = np.argpartition(-cos, k - 1, axis=1)[:, :k]
        w = np.maximum(np.take_along_axis(cos, part, axis=1), 0).astype(np.float64) + 1e-6
        Y[s:s + chunk] = np.einsum("ij,ijc->ic", w / w.sum(1, keepdims=True), Y_sample[part])
    Y[sample] = Y_sample
    return Y


def umap_sampled(W: np.ndarray, n_sample: int = 10000, extend: str = "interpolate", n_neighbors: int = 15,
                 min_dist: float = 0.1, random_state: int = 42) -> np.ndarray:
    """3-D UMAP [F, 3] fitted on ``n_sample`` random rows and extended to the rest.

    ``extend="interpolate"``: nearest-sample interpolation (``interpolate_from_sample``);
    ``extend="transform"``: umap's own ``UMAP.transform`` (places each new point by its
    neighbours in the fitted graph and a short optimisation). bench/bench_wide_memory.py
    measures both. The sample is drawn with ``random_state``.
    """
    from analysis.layout import umap_coords

    F = W.shape[0]
    rng = np.random.default_rng(random_state)
    sample = np.sort(rng.choice(F, size=min(n_sample, F), replace=False))
    if extend == "transform":
        import umap

        reducer = umap.UMAP(n_components=3, metric="cosine", n_neighbors=min(n_neighbors, len(sample) - 1),
                            min_dist=min_dist, random_state=random_state, n_jobs=1)
        Ys = reducer.fit_transform(np.asarray(W, np.float32)[sample]).astype(np.float64)
        rest = np.setdiff1d(np.arange(F), sample)
        Y = np.empty((F, 3))
        Y[sample] = Ys
        for s in range(0, rest.size, 65536):
            Y[rest[s:s + 65536]] = reducer.transform(np.asarray(W, np.float32)[rest[s:s + 65536]])
        return Y
    if extend != "interpolate":
        raise ValueError(f"extend must be 'interpolate' or 'transform', got {extend!r}")
    Ys = umap_coords(np.asarray(W)[sample], n_neighbors, min_dist, random_state)
    return interpolate_from_sample(W, sample, Ys)
