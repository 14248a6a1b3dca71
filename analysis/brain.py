"""Brain scale: functional lobes of the SAE point cloud (METHODS 1 in docs/methods.md, P1).

Pipeline: block co-occurrence counts ``C`` (and ``T`` blocks) -> five co-occurrence
affinities; decoder rows -> geometry affinity; spectral clustering of each affinity for a
sweep of k; "does geometry follow function?" tests (AMI against a permutation baseline,
logistic regression from decoder directions against random directions); lobe-to-corpus-
subset assignment by per-block winners; top tokens per lobe.

Reference: Li, Michaud, Baek, Engels, Sun, Tegmark, *The Geometry of Concepts: Sparse
Autoencoder Feature Structure*, arXiv 2410.19750, section "Brain scale".
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.linalg import eigh
from scipy.sparse import csgraph
from sklearn.cluster import SpectralClustering, k_means
from sklearn.linear_model import LogisticRegression
from sklearn.manifold import spectral_embedding
from sklearn.metrics import adjusted_mutual_info_score, balanced_accuracy_score, mutual_info_score
from sklearn.metrics.cluster import contingency_matrix
from sklearn.metrics.cluster._expected_mutual_info_fast import expected_mutual_information

AFFINITIES = ("simple_matching", "jaccard", "dice", "overlap", "phi")
KS = (2, 3, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


# --------------------------------------------------------------------------- affinities

def _as_dense_counts(C) -> np.ndarray:
    return np.asarray(C.toarray() if sp.issparse(C) else C, dtype=np.float64)


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0/0 (and x/0) -> 0: METHODS 1, undefined values become 0."""
    out = np.zeros(np.broadcast_shapes(num.shape, den.shape))
    np.divide(num, den, out=out, where=den != 0)
    return out


def _affinity_rows(n11: np.ndarray, ci: np.ndarray, cj: np.ndarray, T: float, name: str) -> np.ndarray:
    """Affinity of rows with counts ``n11`` [r, n] (float64), ``ci`` [r, 1], ``cj`` [1, n]."""
    if name == "simple_matching":
        # n11 + n00 = T - C_ii - C_jj + 2 C_ij
        return (T - ci - cj + 2.0 * n11) / T
    if name == "jaccard":
        return _safe_divide(n11, ci + cj - n11)
    if name == "dice":
        return _safe_divide(2.0 * n11, ci + cj)
    if name == "overlap":
        return _safe_divide(n11, np.minimum(ci, cj))
    if name == "phi":
        # n11 n00 - n10 n01 simplifies to T C_ij - C_ii C_jj; the four margins are
        # C_ii, T - C_ii, C_jj, T - C_jj.
        return phi_coefficient(n11, ci, cj, T) + 1.0
    raise ValueError(f"unknown affinity {name!r}; expected one of {AFFINITIES}")


def _row_chunk(n: int, budget: int = 1 << 24) -> int:
    # a float64 [chunk, n] temporary of at most `budget` entries (128 MB), several of which
    # the formulas hold at once
    return max(1, min(n, budget // max(n, 1)))


def cooccurrence_affinity(C, T: int, name: str, live: np.ndarray | None = None,
                          dtype=np.float64) -> np.ndarray:
    """One co-occurrence affinity between every pair of features.

    Parameters
    ----------
    C : array or sparse [F, F]
        Symmetric block co-occurrence counts; ``C[i, i]`` = blocks where i is present.
    T : int
        Number of blocks.
    name : one of ``AFFINITIES``.
    live : optional boolean [F] mask; the affinity is then among these features only (the
        same values as ``A[np.ix_(live, live)]``, without forming the full matrix).
    dtype : of the result. The values are computed in float64 whatever it is; float32
        halves the memory of the one [n, n] array (1 GB at 16k features).

    Returns
    -------
    [n, n] affinity. With ``n11 = C_ij``, ``n10 = C_ii - C_ij``, ``n01 = C_jj - C_ij``,
    ``n00 = T - C_ii - C_jj + C_ij`` (METHODS 1 table); undefined 0/0 -> 0, and phi is
    shifted by +1 afterwards so it is non-negative. Rows are computed a chunk at a time
    straight from ``C`` (sparse stays sparse), so the only full-size array is the result.
    """
    if name not in AFFINITIES:
        raise ValueError(f"unknown affinity {name!r}; expected one of {AFFINITIES}")
    diag = np.asarray(C.diagonal() if sp.issparse(C) else np.diag(np.asarray(C)), dtype=np.float64)
    idx = np.arange(diag.size) if live is None else np.flatnonzero(np.asarray(live, dtype=bool))
    Cr = C.tocsr() if sp.issparse(C) else np.asarray(C)
    c = diag[idx]
    n = idx.size
    out = np.empty((n, n), dtype=dtype)
    step = _row_chunk(n)
    for s in range(0, n, step):
        rows = idx[s:s + step]
        block = Cr[rows]
        block = block.toarray() if sp.issparse(block) else block
        n11 = np.asarray(block[:, idx] if live is not None else block, dtype=np.float64)
        out[s:s + step] = _affinity_rows(n11, c[s:s + step, None], c[None, :], float(T), name)
    return out


def phi_coefficient(n11, ci, cj, T: float) -> np.ndarray:
    """Unshifted phi of co-occurrence counts ``n11`` with presence counts ``ci``, ``cj``
    (broadcast) out of ``T`` blocks; 0 where undefined (a feature never or always present)."""
    return _safe_divide(T * n11 - ci * cj, np.sqrt(ci * (T - ci) * cj * (T - cj)))


def geometry_affinity(W: np.ndarray, dtype=np.float64) -> np.ndarray:
    """Angular similarity ``1 - arccos(cos) / pi`` of unit decoder rows ``W`` [F, d].

    Computed in float64 a row chunk at a time; ``dtype`` is that of the result only.
    """
    U = np.asarray(W, dtype=np.float64)
    norms = np.linalg.norm(U, axis=1, keepdims=True)
    U = U / np.where(norms == 0, 1.0, norms)
    n = U.shape[0]
    out = np.empty((n, n), dtype=dtype)
    step = _row_chunk(n)
    for s in range(0, n, step):
        cos = np.clip(U[s:s + step] @ U.T, -1.0, 1.0)
        out[s:s + step] = 1.0 - np.arccos(cos) / np.pi
    return out


def dead_features(C) -> np.ndarray:
    """Boolean [F]: features never present in any block (``C_ii == 0``)."""
    diag = C.diagonal() if sp.issparse(C) else np.diag(np.asarray(C))
    return np.asarray(diag) == 0


# --------------------------------------------------------------------------- clustering

def sweep_ks(n_live: int, ks=KS) -> list[int]:
    """The ks of the sweep that a clustering of ``n_live`` points can have."""
    return [int(k) for k in ks if k <= n_live]


def _sign_flip(maps: np.ndarray) -> np.ndarray:
    # sklearn's deterministic flip: each vector's largest-magnitude entry positive
    n_components = maps.shape[1]
    sign = np.sign(maps[np.argmax(np.abs(maps), axis=0), np.arange(n_components)])
    return maps * np.where(sign == 0, 1.0, sign)


def embed(A: np.ndarray, n_components: int, random_state: int = 42, solver: str = "sklearn",
          tol: float = 1e-6) -> np.ndarray:
    """Spectral embedding [n, n_components] of a precomputed affinity, as SpectralClustering.

    Same normalisation as ``sklearn.manifold.spectral_embedding(..., drop_first=False)``:
    eigenvectors of the smallest eigenvalues of the normalised Laplacian, divided by the
    square-root degrees, each vector's largest-magnitude entry made positive.

    solver="sklearn" (the published computation): when many eigenvectors are wanted relative
    to n (``5 n_components + 1 > n``, sklearn's own cut-off for leaving iterative solvers) a
    dense LAPACK solve is used instead of ARPACK, which is far slower there; otherwise
    sklearn's ARPACK path is called. That path factorises the dense shifted Laplacian
    (``O(n^3)``, ~3 min and ~11 GB at n = 16k) and copies ``A`` twice.

    solver="lanczos" (for wide layers): the same eigenvectors from ARPACK on
    ``I + D^-1/2 A D^-1/2`` (= 2I - L, so the wanted ones are its largest and well scaled for
    a relative tolerance) with float32 matrix-vector products and no factorisation. ``A`` is
    overwritten (it becomes the normalised adjacency), so nothing of its size is copied;
    ``tol`` is ARPACK's relative residual tolerance, above float32 rounding. When many
    eigenvectors are wanted (``n_components > n / 80``) the same float32 matrix is instead
    reduced by LAPACK in place (``?syevr``, only the wanted eigenvectors formed): its cost
    (O(n^3), independent of k) is then below ARPACK's, which grows with k and with how close
    the eigenvalues lie. Measured on a planted 8,192-feature phi affinity, two cores: k = 256
    took 72 s by ARPACK and 27 s by LAPACK, k = 1,024 331 s against the same 27 s.
    """
    n = A.shape[0]
    if solver == "lanczos":
        return _lanczos_embedding(A, n_components, random_state, tol)
    if solver != "sklearn":
        raise ValueError(f"solver must be 'sklearn' or 'lanczos', got {solver!r}")
    if 5 * n_components + 1 <= n:
        return spectral_embedding(A, n_components=n_components, random_state=random_state,
                                  drop_first=False)
    lap, dd = csgraph.laplacian(np.asarray(A, dtype=np.float64), normed=True, return_diag=True)
    np.fill_diagonal(lap, 1.0)  # sklearn sets the normalised Laplacian's diagonal to 1
    _, vecs = eigh(lap, subset_by_index=[0, n_components - 1])
    return _sign_flip(vecs / dd[:, None])


# solver="lanczos" hands the eigenproblem to LAPACK from n_components > n / LAPACK_FROM
LAPACK_FROM = 80


def _lanczos_embedding(A: np.ndarray, n_components: int, random_state, tol: float) -> np.ndarray:
    from scipy.sparse.linalg import LinearOperator, eigsh
    from sklearn.utils import check_random_state

    if A.dtype != np.float32:
        raise ValueError("solver='lanczos' works in place on a float32 affinity")
    n = A.shape[0]
    # csgraph.laplacian(normed=True) leaves self-loops out of the degrees, and sklearn then
    # sets the Laplacian's diagonal to 1: L = I - D^-1/2 A0 D^-1/2 with A0 = A, zero diagonal
    np.fill_diagonal(A, 0.0)
    deg = A.sum(axis=1, dtype=np.float64)
    dd = np.sqrt(np.where(deg == 0, 1.0, deg))
    inv = (1.0 / dd).astype(np.float32)
    A *= inv[:, None]
    A *= inv[None, :]

    if LAPACK_FROM * n_components > n:
        # the wanted eigenvectors are those of the largest eigenvalues of D^-1/2 A D^-1/2.
        # A.T: the same symmetric matrix in Fortran order, which LAPACK reduces in place; given
        # A itself (C order) scipy would first copy it (1 GB at 16k features)
        _, vecs = eigh(A.T, subset_by_index=[n - n_components, n - 1], driver="evr",
                       overwrite_a=True, check_finite=False)
        return _sign_flip(vecs[:, ::-1].astype(np.float64) / dd[:, None])

    def matvec(x):
        x = np.asarray(x).reshape(-1)
        return (A @ x.astype(np.float32)).astype(np.float64) + x

    op = LinearOperator((n, n), matvec=matvec, dtype=np.float64)
    v0 = check_random_state(random_state).uniform(-1, 1, n)   # as sklearn's ARPACK start
    # a wider Krylov space than ARPACK's default 2k + 1 for small k: at n = 16k, k = 64 the
    # bulk eigenvalues lie within 1e-3 of each other and ncv = 256 took 680 products against
    # 1,140 (88 s against 138 s), with the same subspace (principal angles' cosines > 0.99998)
    ncv = min(n - 1, max(2 * n_components + 1, 256))
    _, vecs = eigsh(op, k=n_components, which="LA", tol=tol, v0=v0, ncv=ncv)
    vecs = vecs[:, ::-1]            # largest of 2I - L = smallest of L first
    return _sign_flip(vecs / dd[:, None])


def spectral_sweep(A: np.ndarray, ks=KS, random_state: int = 42, n_init: int = 10,
                   per_k: bool = False, solver: str = "sklearn", n_init_large_k: int | None = None,
                   large_k_from: int = 128) -> np.ndarray:
    """Spectral clustering of a precomputed affinity for every k.

    Parameters
    ----------
    A : [n, n] non-negative symmetric affinity (live features only).
    ks : cluster counts (each <= n).
    per_k : False (default) computes the spectral embedding once with ``max(ks)``
        eigenvectors and runs k-means on its first k columns for every k. True is the
        published path: a fresh ``SpectralClustering(affinity='precomputed',
        assign_labels='kmeans')`` per k, recomputing the eigendecomposition every time.
    solver : eigensolver of the one embedding (``embed``); "lanczos" overwrites ``A``.
        Ignored with ``per_k=True``.
    n_init_large_k : k-means restarts of the one-embedding path for ``k >= large_k_from``
        (None: ``n_init`` for every k). Ignored with ``per_k=True``.

    Returns
    -------
    int64 [len(ks), n] labels. The one-embedding path follows sklearn's per-k path: sklearn
    embeds with ``n_components = k`` leading eigenvectors of the normalised Laplacian
    (``drop_first=False``, deterministic sign flip), which are the first k columns of the
    larger embedding, then runs ``k_means(..., random_state, n_init)`` as here. The
    eigenvectors agree to solver precision, not bit for bit (ARPACK's iterations start from a
    random vector and stop at a tolerance), and at large k k-means has many near-equal
    optima that such differences can tip: the labels agree with per-k's as closely as per-k
    agrees with itself under another seed (tests/test_brain.py checks k = 32-64), and are
    identical only where the clustering is well separated.
    """
    ks = [int(k) for k in ks]
    labels = np.empty((len(ks), A.shape[0]), dtype=np.int64)
    if per_k:
        for row, k in enumerate(ks):
            sc = SpectralClustering(n_clusters=k, affinity="precomputed", assign_labels="kmeans",
                                    random_state=random_state, n_init=n_init)
            labels[row] = sc.fit_predict(A)
        return labels
    maps = embed(A, max(ks), random_state, solver=solver)
    for row, k in enumerate(ks):
        restarts = n_init if n_init_large_k is None or k < large_k_from else n_init_large_k
        _, labels[row], _ = k_means(maps[:, :k], k, random_state=random_state, n_init=restarts)
    return labels


def lobes(A: np.ndarray, live: np.ndarray, ks=KS, random_state: int = 42, n_init: int = 10,
          per_k: bool = False) -> tuple[list[int], np.ndarray]:
    """Lobe labels for all features, dead ones excluded.

    ``A`` is the full [F, F] affinity, ``live`` a boolean [F] mask. Returns the ks actually
    used (those <= number of live features) and int16 [len(ks), F] labels with -1 for
    excluded features.
    """
    live = np.asarray(live, dtype=bool)
    ks = sweep_ks(int(live.sum()), ks)
    out = np.full((len(ks), live.size), -1, dtype=np.int16)
    if ks:
        idx = np.flatnonzero(live)
        out[:, idx] = spectral_sweep(A[np.ix_(idx, idx)], ks, random_state, n_init, per_k)
    return ks, out


# --------------------------------------------------------------------------- tests

def _label_entropy(labels: np.ndarray) -> float:
    """Shannon entropy (nats) of a labelling, as used by sklearn's AMI."""
    p = np.unique(labels, return_counts=True)[1] / len(labels)
    return float(-np.sum(p * np.log(p)))


def ami_test(labels_geometry: np.ndarray, labels_cooc: np.ndarray, n_permutations: int = 100,
             random_state: int = 0) -> dict:
    """AMI between two clusterings with a label-permutation baseline.

    Returns ``{"ami", "perm_mean", "perm_std", "z"}``, ``z = (ami - perm_mean) / perm_std``.
    Permuting labels keeps both marginals, so the entropies and the expected mutual
    information (the expensive part of AMI) are computed once and only the mutual
    information is recomputed per permutation; the result equals sklearn's
    ``adjusted_mutual_info_score`` on each permuted labelling (arithmetic normalisation).
    """
    a = np.asarray(labels_geometry)
    b = np.asarray(labels_cooc)
    ami = float(adjusted_mutual_info_score(a, b))
    n = a.size
    emi = expected_mutual_information(contingency_matrix(a, b, sparse=True), n)
    norm = 0.5 * (_label_entropy(a) + _label_entropy(b))
    denom = norm - emi
    rng = np.random.default_rng(random_state)
    perm = np.empty(n_permutations)
    for i in range(n_permutations):
        mi = mutual_info_score(rng.permutation(a), b)
        perm[i] = (mi - emi) / denom if denom != 0 else 0.0
    mean, std = float(perm.mean()), float(perm.std(ddof=1)) if n_permutations > 1 else 0.0
    return {"ami": ami, "perm_mean": mean, "perm_std": std,
            "z": (ami - mean) / std if std > 0 else None}


def _balanced_accuracy(X: np.ndarray, y: np.ndarray, n_train: int, max_iter: int) -> float:
    clf = LogisticRegression(max_iter=max_iter)
    clf.fit(X[:n_train], y[:n_train])
    return float(balanced_accuracy_score(y[n_train:], clf.predict(X[n_train:])))


def regression_test(W: np.ndarray, labels: np.ndarray, n_draws: int = 100,
                    train_fraction: float = 0.8, random_state: int = 0,
                    max_iter: int = 1000) -> dict:
    """Predict co-occurrence lobes from raw decoder directions (logistic regression).

    Parameters
    ----------
    W : [n, d] decoder rows of the clustered (live) features, in feature-index order.
    labels : [n] co-occurrence cluster of each row.
    Train on the first ``train_fraction`` of rows, test on the rest (no shuffling), score
    with balanced accuracy. Baseline: ``n_draws`` i.i.d. Gaussian direction sets of the same
    shape, row-normalised, same labels.

    Returns ``{"accuracy", "random_mean", "random_std", "z"}``; None values when the
    training part holds a single class (nothing to learn).
    """
    W = np.asarray(W, dtype=np.float64)
    y = np.asarray(labels)
    n_train = int(train_fraction * len(y))
    if len(np.unique(y[:n_train])) < 2 or n_train >= len(y):
        return {"accuracy": None, "random_mean": None, "random_std": None, "z": None}
    acc = _balanced_accuracy(W, y, n_train, max_iter)
    rng = np.random.default_rng(random_state)
    rand = np.empty(n_draws)
    for i in range(n_draws):
        R = rng.standard_normal(W.shape)
        R /= np.linalg.norm(R, axis=1, keepdims=True)
        rand[i] = _balanced_accuracy(R, y, n_train, max_iter)
    mean, std = float(rand.mean()), float(rand.std(ddof=1)) if n_draws > 1 else 0.0
    return {"accuracy": acc, "random_mean": mean, "random_std": std,
            "z": (acc - mean) / std if std > 0 else None}


# --------------------------------------------------------------------------- what lobes do

def block_winners(blocks, labels: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Winning lobe of each block.

    Parameters
    ----------
    blocks : sparse or dense 0/1 [B, F] block-by-feature presence.
    labels : [F] lobe per feature, -1 = excluded.

    Returns int64 [B]: ``argmax_lobe |lobe ∩ present| / |lobe|`` (first lobe on ties), -1 for
    blocks in which no clustered feature is present.
    """
    labels = np.asarray(labels)
    keep = labels >= 0
    n_lobes = int(labels.max()) + 1 if keep.any() else 0
    B = sp.csr_matrix(blocks, dtype=np.float64)
    if n_lobes == 0:
        return np.full(B.shape[0], -1, dtype=np.int64)
    cols = np.flatnonzero(keep)
    onehot = sp.csr_matrix((np.ones(cols.size), (cols, labels[cols])),
                           shape=(labels.size, n_lobes))
    sizes = np.bincount(labels[cols], minlength=n_lobes).astype(np.float64)
    sizes[sizes == 0] = np.inf  # an empty lobe label never wins
    out = np.empty(B.shape[0], dtype=np.int64)
    for s in range(0, B.shape[0], chunk):
        counts = (B[s:s + chunk] @ onehot).toarray()
        frac = counts / sizes
        win = frac.argmax(axis=1)
        win[counts.sum(axis=1) == 0] = -1
        out[s:s + chunk] = win
    return out


def lobe_subset_tally(blocks, block_subset: np.ndarray, labels: np.ndarray,
                      n_subsets: int | None = None) -> np.ndarray:
    """Blocks won by each lobe, per corpus subset: int64 [n_lobes, S]."""
    win = block_winners(blocks, labels)
    sub = np.asarray(block_subset, dtype=np.int64)
    n_lobes = int(np.max(labels)) + 1 if np.any(np.asarray(labels) >= 0) else 0
    S = int(n_subsets if n_subsets is not None else (sub.max() + 1 if sub.size else 0))
    tally = np.zeros((n_lobes, S), dtype=np.int64)
    ok = win >= 0
    np.add.at(tally, (win[ok], sub[ok]), 1)
    return tally


def lobe_top_tokens(top_tokens: pd.DataFrame, labels: np.ndarray, n_top: int = 10) -> pd.DataFrame:
    """Most frequent tokens of each lobe.

    ``top_tokens`` is the per-feature table (feature, rank, token, count); firings on the
    same token are summed over the lobe's features. Returns columns lobe, rank, token,
    count (rank 0 = most frequent; ties by token text so the table is deterministic).
    """
    labels = np.asarray(labels)
    df = top_tokens[["feature", "token", "count"]].copy()
    df["lobe"] = labels[df["feature"].to_numpy()]
    df = df[df["lobe"] >= 0]
    agg = df.groupby(["lobe", "token"], as_index=False)["count"].sum()
    agg = agg.sort_values(["lobe", "count", "token"], ascending=[True, False, True])
    agg["rank"] = agg.groupby("lobe").cumcount()
    agg = agg[agg["rank"] < n_top]
    return agg[["lobe", "rank", "token", "count"]].reset_index(drop=True).astype(
        {"lobe": np.int32, "rank": np.int16, "count": np.int64})
