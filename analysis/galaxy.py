"""Galaxy scale: the shape of the SAE point cloud (METHODS 3 in docs/methods.md, P1).

Eigenvalue spectrum of the decoder covariance and its power-law fit, an isotropic Gaussian
baseline, the clustering entropy (Kozachenko-Leonenko nearest-neighbour estimate) and the
negentropy, and the 3-D PCA view of the cloud.

Reference: Li et al., *The Geometry of Concepts: Sparse Autoencoder Feature Structure*,
arXiv 2410.19750, section "Large-scale structure"; Kozachenko & Leonenko (1987), *Sample
estimate of the entropy of a random vector*, Probl. Inf. Transm. 23(2).
"""
from __future__ import annotations

import numpy as np
from scipy import stats
from scipy.special import digamma, gammaln
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors

RANKS = (11, 150)  # 1-based ranks of the power-law fit (array indices 10..149)


def covariance(W: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Covariance [d, d] of the rows of ``W`` [F, d] (mean-centred, ddof=1), float64,
    accumulated in row chunks so float32 decoders of 65k features are not copied whole."""
    W = np.asarray(W)
    F, d = W.shape
    mean = W.mean(axis=0, dtype=np.float64)
    G = np.zeros((d, d))
    for s in range(0, F, chunk):
        X = W[s:s + chunk].astype(np.float64) - mean
        G += X.T @ X
    return G / max(F - 1, 1)


def spectrum(W: np.ndarray) -> np.ndarray:
    """Eigenvalues [d] of the mean-centred decoder covariance, descending (float64)."""
    return np.linalg.eigvalsh(covariance(W))[::-1].copy()


def fit_ranks(d: int, ranks=RANKS) -> tuple[int, int]:
    """1-based rank range of the fit, clipped to ``d``; tiny spectra (fewer than 3 ranks left
    after rank 11) fall back to all ranks from 1."""
    lo, hi = ranks
    hi = min(hi, d)
    if hi - lo + 1 < 3:
        lo = 1
    return lo, hi


def power_law_fit(eigenvalues: np.ndarray, ranks=RANKS) -> dict:
    """Least-squares fit of ``log10 λ_r = a - α log10 r`` over 1-based ranks ``ranks``.

    Returns ``{"alpha", "intercept", "ci95", "ranks", "stderr"}`` where ``ci95`` is the
    half-width ``t(0.975, n-2) × stderr`` of α. Non-positive eigenvalues inside the range
    are left out (their logarithm is undefined).
    """
    lam = np.asarray(eigenvalues, dtype=np.float64)
    lo, hi = fit_ranks(lam.size, ranks)
    r = np.arange(lo, hi + 1)
    y = lam[lo - 1:hi]
    ok = y > 0
    x, y = np.log10(r[ok]), np.log10(y[ok])
    n = x.size
    if n < 3:
        return {"alpha": None, "intercept": None, "ci95": None, "stderr": None,
                "ranks": [int(lo), int(hi)]}
    res = stats.linregress(x, y)
    ci = float(stats.t.ppf(0.975, n - 2) * res.stderr)
    return {"alpha": float(-res.slope), "intercept": float(res.intercept), "ci95": ci,
            "stderr": float(res.stderr), "ranks": [int(lo), int(hi)]}


def isotropic_baseline(n_features: int, d: int, seed: int = 0, ranks=RANKS) -> dict:
    """Power-law fit of an isotropic Gaussian cloud of the same shape (slope ≈ 0).

    Returns the fit of ``power_law_fit`` plus ``"slope"`` = -alpha (the fitted log-log slope).
    """
    rng = np.random.default_rng(seed)
    G = rng.standard_normal((n_features, d), dtype=np.float32)
    fit = power_law_fit(spectrum(G), ranks)
    fit["slope"] = None if fit["alpha"] is None else -fit["alpha"]
    return fit


# --------------------------------------------------------------------------- entropy

def _log_unit_ball(d: int) -> float:
    return (d / 2) * np.log(np.pi) - gammaln(d / 2 + 1)


def nn_distances(X: np.ndarray, k: int = 1) -> np.ndarray:
    """Euclidean distance of every row of ``X`` to its k-th nearest other row."""
    nn = NearestNeighbors(n_neighbors=k + 1).fit(X)
    dist, _ = nn.kneighbors(X)
    return dist[:, k]


def kl_terms(rho: np.ndarray, d: int, k: int = 1, eigenvalues=None,
             estimator: str = "textbook") -> tuple[np.ndarray, float]:
    """Split an entropy estimate into per-point terms and a constant: H = mean(terms) + const.

    textbook (Kozachenko-Leonenko): ``H = ψ(n) - ψ(k) + log V_d + (d/n) Σ log ρ_i``.
    published (P1 code): ``H = d·mean log(ρ_i + 0.01) + mean_j log λ_j + log(n-1) - ψ(k+1)``
    with ``λ_j`` the PCA eigenvalues.
    """
    n = rho.size
    if estimator == "textbook":
        return d * np.log(rho), float(digamma(n) - digamma(k) + _log_unit_ball(d))
    if estimator == "published":
        lam = np.asarray(eigenvalues, dtype=np.float64)
        return d * np.log(rho + 0.01), float(np.mean(np.log(lam)) + np.log(n - 1) - digamma(k + 1))
    raise ValueError(f"unknown estimator {estimator!r}; expected 'textbook' or 'published'")


def kl_entropy(X: np.ndarray, k: int = 1, n_bootstrap: int = 30, seed: int = 0,
               estimator: str = "textbook", eigenvalues=None) -> dict:
    """Differential entropy (nats) of the points ``X`` [n, d] from nearest-neighbour distances.

    textbook: the estimate is a mean of per-point terms plus a constant, and the bootstrap
    resamples those per-point terms (resampling the points would duplicate some, and a
    duplicate's nearest neighbour is itself at ρ = 0, whose log is -inf).

    published: the P1 authors' procedure exactly - each replicate resamples the *points* with
    replacement and recomputes the nearest neighbours on the resample, so the ~63 % of drawn
    points that have a duplicate get ρ = 0 and contribute ``d·log(0.01)``; the eigenvalues are
    those of the sample (computed once). This is what yields their large negentropies.

    Returns ``{"estimate", "mean", "std", "ci95", "estimator", "k"}``: the estimate on the
    sample (textbook) or on the sample without resampling (published), and the mean, standard
    deviation and ``t(0.975, B-1) × std / sqrt(B)`` (the published "t·SE") of the ``B =
    n_bootstrap`` replicates.
    """
    X = np.asarray(X, dtype=np.float64)
    n, d = X.shape
    rho = nn_distances(X, k)
    terms, const = kl_terms(rho, d, k, eigenvalues, estimator)
    rng = np.random.default_rng(seed)
    if estimator == "published":
        boot = []
        for _ in range(n_bootstrap):
            Xb = X[rng.integers(0, n, n)]
            tb, cb = kl_terms(nn_distances(Xb, k), d, k, eigenvalues, estimator)
            boot.append(tb.mean() + cb)
        boot = np.array(boot)
    else:
        boot = np.array([terms[rng.integers(0, n, n)].mean() + const for _ in range(n_bootstrap)])
    std = float(boot.std(ddof=1)) if n_bootstrap > 1 else 0.0
    ci = float(stats.t.ppf(0.975, n_bootstrap - 1) * std / np.sqrt(n_bootstrap)) if n_bootstrap > 1 else 0.0
    return {"estimate": float(terms.mean() + const), "mean": float(boot.mean()), "std": std, "ci95": ci,
            "estimator": estimator, "k": int(k)}


def gaussian_entropy(eigenvalues: np.ndarray) -> float:
    """Entropy (nats) of a Gaussian with covariance eigenvalues λ: (d/2)(1 + ln 2π) + ½ Σ ln λ."""
    lam = np.asarray(eigenvalues, dtype=np.float64)
    return float(lam.size / 2 * (1 + np.log(2 * np.pi)) + 0.5 * np.sum(np.log(lam)))


def clustering_entropy(W: np.ndarray, n_samples: int = 5000, n_components: int = 100,
                       k: int = 1, n_bootstrap: int = 30, seed: int = 0,
                       estimator: str = "textbook", gaussian_null: bool = True) -> dict:
    """Clustering entropy and negentropy of a point cloud (METHODS 3).

    Sample ``n_samples`` rows of ``W`` (seed ``seed``, without replacement), z-score each
    dimension, keep ``n_components`` principal components, estimate the entropy with the
    nearest-neighbour estimator and bootstrap it. The negentropy is the entropy of a
    Gaussian with the same component variances minus the estimate (bootstrap mean); its
    std is the bootstrap std and ``negentropy_ci95`` the published t·SE.

    ``gaussian_null``: also run the same estimator on a Gaussian sample of the same n and
    the same component variances, whose true negentropy is 0; its ``null_negentropy`` shows
    the estimator's own bias in this many dimensions (large for the published variant, and
    not zero for the textbook one at n = 5,000 in 100 dimensions). Returns a JSON-ready dict.
    """
    W = np.asarray(W)
    rng = np.random.default_rng(seed)
    n = min(n_samples, W.shape[0])
    idx = np.sort(rng.choice(W.shape[0], n, replace=False))
    X = W[idx].astype(np.float64)
    std = X.std(axis=0)
    X = (X - X.mean(axis=0)) / np.where(std == 0, 1.0, std)
    m = min(n_components, X.shape[1], n - 1)
    pca = PCA(n_components=m, svd_solver="full").fit(X)
    Z = pca.transform(X)
    lam = pca.explained_variance_
    ent = kl_entropy(Z, k=k, n_bootstrap=n_bootstrap, seed=seed, estimator=estimator,
                     eigenvalues=lam)
    h_gauss = gaussian_entropy(lam)
    out = {"entropy": ent["mean"], "entropy_std": ent["std"], "entropy_point": ent["estimate"],
           "gaussian_entropy": h_gauss, "negentropy": h_gauss - ent["mean"],
           "negentropy_std": ent["std"], "negentropy_ci95": ent["ci95"], "estimator": estimator, "k": int(k),
           "n_samples": int(n), "n_components": int(m), "n_bootstrap": int(n_bootstrap)}
    if gaussian_null:
        G = np.random.default_rng(seed + 1).standard_normal((n, m)) * np.sqrt(lam)
        lam_g = PCA(n_components=m, svd_solver="full").fit(G).explained_variance_
        null = kl_entropy(G, k=k, n_bootstrap=n_bootstrap, seed=seed, estimator=estimator, eigenvalues=lam_g)
        out["null_negentropy"] = gaussian_entropy(lam_g) - null["mean"]
        out["null_negentropy_std"] = null["std"]
    return out


def pca_view(W: np.ndarray, n_components: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """3-D PCA view of the cloud: centred rows projected on the top principal axes.

    The coordinates along axis j have variance λ_j, i.e. unit-variance (whitened) scores
    scaled by sqrt(λ_j), so the anisotropic "galaxy" shape is kept. Returns
    ``(coords [F, 3], axes [3, d], eigenvalues [3])``.
    """
    C = covariance(W)
    lam, vec = np.linalg.eigh(C)
    order = np.argsort(lam)[::-1][:n_components]
    axes = vec[:, order].T
    mean = np.asarray(W).mean(axis=0, dtype=np.float64)
    coords = (np.asarray(W, dtype=np.float64) - mean) @ axes.T
    return coords, axes, lam[order]
