"""Layer-wise latent geometry of raw activations (Ning & Rangaraju, arXiv 2511.21594; METHODS 4).

Plain functions on numpy arrays, scikit-learn style: arrays in, arrays or dicts out, the
published settings as defaults. The capture itself (torch) is ``precompute.latent``; the
files it writes are described in docs/atlas.md ("Latent geometry").

* Capture names - ``slot_names``, ``slot_of``: which stored array row a (layer, kind) is.
* PCA fitted with centring and applied without it - ``fit_pca``, ``pca_from_moments``,
  ``pool_moments``, ``uncentred_pca``. Applying ``X @ components.T`` keeps the origin
  meaningful: a mean offset (the residual stream's bias direction, the huge first-position
  vectors) stays visible instead of being subtracted away.
* ``cosine_umap`` - 3-D UMAP with the cosine metric (published).
* Norms - ``norms_by_position``, ``position0_ratio``, ``norm_summary``; position 0 is always
  reported apart from the others.
* ``separation_score`` - attention versus MLP outputs: cross-validated linear accuracy and
  silhouette, each beside a label-shuffle baseline (this project's score; the paper shows
  the separation in figures only).
* ``helix_score`` - how well each of the first six principal components of a position
  trajectory is one sinusoid of position (GPT-2's learned ``wpe`` traces a helix).
* ``early_tail`` - the low-dimensional tail of early positions entering the dense cloud of
  later ones (rotary models).
"""
from __future__ import annotations

import numpy as np

# the published per-block captures, in forward order. In a pre-norm block the input of the
# attention norm is the residual stream entering the block, and the input of the MLP norm
# is the residual stream after attention, so the paper's six per-block tensors are these five
KINDS = ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post")
# stored once per block: resid_pre of block L is resid_post of block L - 1 (the same tensor)
STORED_KINDS = ("attn_out", "resid_mid", "mlp_out", "resid_post")
EMBED = "blocks.0.hook_resid_pre"          # the embedding output = output_hidden_states[0]
FINAL_NORM = "ln_final.hook_normalized"    # the final norm's output = output_hidden_states[-1]


# --------------------------------------------------------------------------- capture names

def slot_names(n_layers: int) -> list[str]:
    """Names of the stored capture slots, in storage order: the embedding output, then for
    each block attn_out, resid_mid, mlp_out, resid_post, then the final norm's output."""
    return [EMBED] + [f"blocks.{L}.hook_{k}" for L in range(n_layers) for k in STORED_KINDS] + [FINAL_NORM]


def slot_of(n_layers: int, layer: int, kind: str) -> int:
    """Row of ``slot_names(n_layers)`` holding capture ``kind`` of block ``layer``.

    ``kind`` is one of ``KINDS`` (``resid_pre`` of block L > 0 is block L-1's
    ``resid_post``), or ``"embed"`` / ``"final_norm"`` (``layer`` ignored)."""
    if kind == "embed":
        return 0
    if kind == "final_norm":
        return 4 * n_layers + 1
    if kind not in KINDS:
        raise ValueError(f"unknown capture kind {kind!r}; use one of {', '.join(KINDS)}, embed, final_norm")
    if not 0 <= layer < n_layers:
        raise ValueError(f"layer {layer} is outside the model (layers 0..{n_layers - 1})")
    if kind == "resid_pre":
        return 0 if layer == 0 else slot_of(n_layers, layer - 1, "resid_post")
    return 1 + 4 * layer + STORED_KINDS.index(kind)


# --------------------------------------------------------------------------- PCA

def _signed(components: np.ndarray) -> np.ndarray:
    # eigenvectors have no sign; fix it (largest loading positive) so reruns draw the same picture
    idx = np.argmax(np.abs(components), axis=1)
    return components * np.sign(components[np.arange(len(components)), idx])[:, None]


def pca_from_moments(n: int, mean: np.ndarray, m2: np.ndarray, n_components: int = 3) -> dict:
    """Centred PCA from streamed moments.

    Parameters: ``n`` rows, their ``mean`` [d] and centred scatter ``m2`` [d, d]
    (sum of (x - mean)(x - mean)^T). Returns dict with ``components`` [k, d] (unit rows,
    descending variance, sign fixed), ``explained_variance`` [k], ``explained_variance_ratio``
    [k], ``mean`` [d], ``n``. Same result as ``fit_pca`` on the rows themselves.
    """
    if n < 2:
        raise ValueError(f"PCA needs at least 2 rows, got {n}")
    cov = np.asarray(m2, dtype=np.float64) / (n - 1)
    val, vec = np.linalg.eigh((cov + cov.T) / 2)
    val, vec = val[::-1], vec[:, ::-1]
    k = min(n_components, len(val))
    total = float(np.clip(val, 0, None).sum())
    return {"components": _signed(vec[:, :k].T.copy()), "explained_variance": val[:k].copy(),
            "explained_variance_ratio": val[:k] / total if total > 0 else np.zeros(k),
            "mean": np.asarray(mean, dtype=np.float64), "n": int(n)}


def fit_pca(X: np.ndarray, n_components: int = 3) -> dict:
    """PCA of the rows of ``X`` [n, d], fitted with centring (as scikit-learn's ``PCA``).
    Returns the dict of ``pca_from_moments``."""
    X = np.asarray(X, dtype=np.float64)
    mean = X.mean(axis=0)
    Xc = X - mean
    return pca_from_moments(len(X), mean, Xc.T @ Xc, n_components)


def pool_moments(parts: list[tuple[int, np.ndarray, np.ndarray]]) -> tuple[int, np.ndarray, np.ndarray]:
    """Moments ``(n, mean, m2)`` of the union of several row sets, from each set's own
    ``(n, mean, m2)`` (Chan et al.'s parallel update), exact up to rounding."""
    n = sum(p[0] for p in parts)
    mean = sum(p[0] * np.asarray(p[1], dtype=np.float64) for p in parts) / n
    m2 = sum(np.asarray(p[2], dtype=np.float64) + p[0] * np.outer(p[1] - mean, p[1] - mean) for p in parts)
    return n, mean, m2


def uncentred_pca(X: np.ndarray, n_components: int = 3, fit: dict | None = None) -> tuple[np.ndarray, dict]:
    """The published projection: PCA fitted with centring, applied without it.

    ``X`` [n, d]; ``fit`` a ``fit_pca`` / ``pca_from_moments`` result (default: fitted on
    ``X``). Returns ``(X @ components.T`` [n, k], fit). Unlike ``PCA.transform`` nothing is
    subtracted, so the coordinates keep the data's offset from the origin.
    """
    fit = fit if fit is not None else fit_pca(X, n_components)
    return np.asarray(X, dtype=np.float64) @ fit["components"].T, fit


def cosine_umap(X: np.ndarray, n_components: int = 3, n_neighbors: int = 15, min_dist: float = 0.1,
                random_state: int = 42) -> np.ndarray:
    """UMAP with the cosine metric (published), [n, n_components] float32. Rows of zero
    norm have no cosine; they are refused."""
    import umap  # slow import: only here

    X = np.asarray(X, dtype=np.float32)
    if (np.linalg.norm(X, axis=1) == 0).any():
        raise ValueError("cosine UMAP: some rows are all zeros (no direction); drop them first")
    reducer = umap.UMAP(n_components=n_components, metric="cosine", n_neighbors=min(n_neighbors, len(X) - 1),
                        min_dist=min_dist, random_state=random_state, n_jobs=1)
    return reducer.fit_transform(X).astype(np.float32)


# --------------------------------------------------------------------------- norms

def norms_by_position(norms: np.ndarray) -> np.ndarray:
    """Median over documents of the norm at each position: ``norms`` [..., D, T] (NaN where a
    document is shorter) -> [..., T]."""
    return np.nanmedian(np.asarray(norms, dtype=np.float64), axis=-2)


def position0_ratio(norms: np.ndarray) -> np.ndarray:
    """Median norm at position 0 divided by the median norm at every other position:
    ``norms`` [..., D, T] -> [...] (finding 1: very large for almost any first token)."""
    a = np.asarray(norms, dtype=np.float64)
    lead = a.shape[:-2]
    first = np.nanmedian(a[..., 0], axis=-1)
    rest = np.nanmedian(a[..., 1:].reshape(*lead, -1), axis=-1)
    return first / rest


def norm_summary(norms: np.ndarray) -> dict:
    """Per leading index of ``norms`` [..., D, T]: ``median`` (positions >= 1), ``p90``
    (positions >= 1), ``pos0`` (median at position 0) and ``ratio`` = pos0 / median."""
    a = np.asarray(norms, dtype=np.float64)
    rest = a[..., 1:].reshape(*a.shape[:-2], -1)
    med = np.nanmedian(rest, axis=-1)
    pos0 = np.nanmedian(a[..., 0], axis=-1)
    return {"median": med, "p90": np.nanpercentile(rest, 90, axis=-1), "pos0": pos0, "ratio": pos0 / med}


# --------------------------------------------------------------------------- separation

def separation_score(X_a: np.ndarray, X_b: np.ndarray, normalize: bool = False, cv: int = 5,
                     random_state: int = 0, max_iter: int = 1000, paired: bool | None = None) -> dict:
    """How separable two sets of vectors are (attention vs MLP outputs of one layer).

    Parameters
    ----------
    X_a, X_b : [n_a, d], [n_b, d]. When ``paired`` (default: equal lengths), row i of both
        comes from the same token, and cross-validation keeps a token's two rows in one fold
        so that no fold is tested on a token it was trained on.
    normalize : scale every row to unit norm first (separation of directions alone).
    cv : folds of the cross-validated accuracy.

    Returns dict: ``accuracy`` (mean held-out accuracy of a standardised logistic regression),
    ``silhouette`` (Euclidean, labels = set), and both again with the labels shuffled
    (``accuracy_shuffled``, ``silhouette_shuffled``): the chance level of this very data.
    Separable clouds give accuracy near 1; identical distributions give the shuffled values.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import silhouette_score
    from sklearn.model_selection import GroupKFold, StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    A, B = np.asarray(X_a, dtype=np.float64), np.asarray(X_b, dtype=np.float64)
    if A.ndim != 2 or B.ndim != 2 or A.shape[1] != B.shape[1]:
        raise ValueError(f"separation_score needs two [n, d] arrays of one width, got {A.shape} and {B.shape}")
    if min(len(A), len(B)) < cv:
        raise ValueError(f"separation_score needs at least cv={cv} rows per set, got {len(A)} and {len(B)}")
    X = np.vstack([A, B])
    if normalize:
        n = np.linalg.norm(X, axis=1, keepdims=True)
        X = X / np.where(n == 0, 1.0, n)
    y = np.r_[np.zeros(len(A), int), np.ones(len(B), int)]
    paired = (len(A) == len(B)) if paired is None else paired
    rng = np.random.default_rng(random_state)
    y_shuffled = rng.permutation(y)

    def score(labels):
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
        if paired:
            groups = np.r_[np.arange(len(A)), np.arange(len(B))]
            folds = list(GroupKFold(n_splits=cv).split(X, labels, groups))
        else:
            folds = list(StratifiedKFold(cv, shuffle=True, random_state=random_state).split(X, labels))
        acc = float(cross_val_score(clf, X, labels, cv=folds).mean())
        return acc, float(silhouette_score(X, labels))

    acc, sil = score(y)
    acc0, sil0 = score(y_shuffled)
    return {"accuracy": acc, "accuracy_shuffled": acc0, "silhouette": sil, "silhouette_shuffled": sil0,
            "n": int(len(X)), "cv": cv, "normalize": normalize}


def separation(X_attn: np.ndarray, X_mlp: np.ndarray, **kwargs) -> dict:
    """``separation_score`` on the raw vectors and on unit-normalised ones (finding 3 holds
    for both): ``{"raw": {...}, "unit": {...}}``."""
    return {"raw": separation_score(X_attn, X_mlp, normalize=False, **kwargs),
            "unit": separation_score(X_attn, X_mlp, normalize=True, **kwargs)}


# --------------------------------------------------------------------------- positions

def _best_sinusoids(Y: np.ndarray, freqs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column of ``Y`` [T, k]: the largest R^2 of y(t) ~ a cos(2 pi f t) + b sin(2 pi f t)
    + const over ``freqs``, and the frequency reaching it."""
    t = np.arange(len(Y), dtype=np.float64)
    Y = Y - Y.mean(axis=0)
    sst = (Y * Y).sum(axis=0)
    ph = 2 * np.pi * freqs[:, None] * t[None, :]
    C, S = np.cos(ph), np.sin(ph)
    # normal equations of [1, cos, sin] per frequency, solved in one batch
    G = np.empty((len(freqs), 3, 3))
    G[:, 0, 0] = len(t)
    G[:, 0, 1] = G[:, 1, 0] = C.sum(1)
    G[:, 0, 2] = G[:, 2, 0] = S.sum(1)
    G[:, 1, 1] = (C * C).sum(1)
    G[:, 2, 2] = (S * S).sum(1)
    G[:, 1, 2] = G[:, 2, 1] = (C * S).sum(1)
    Ginv = np.linalg.inv(G + 1e-9 * np.eye(3))
    g = np.stack([np.zeros((len(freqs), Y.shape[1])), C @ Y, S @ Y], axis=2)     # [F, k, 3]
    explained = np.einsum("fki,fij,fkj->fk", g, Ginv, g)                          # (centred y: no constant part)
    r2 = explained / np.where(sst > 0, sst, 1.0)
    best = np.argmax(r2, axis=0)
    return np.clip(r2[best, np.arange(Y.shape[1])], 0.0, 1.0), freqs[best]


def helix_score(P: np.ndarray, n_components: int = 6, oversample: int = 4) -> dict:
    """Helix structure of a trajectory over positions.

    ``P`` [T, d]: one vector per position, in position order (a learned positional embedding
    such as GPT-2's ``wpe``, or per-position means of the residual stream). The rows are
    projected onto their first ``n_components`` principal components (published: six); each
    component's coordinate sequence is fitted by one sinusoid of position (frequencies from
    half a cycle over the whole range up to the Nyquist frequency, ``oversample``-fold grid).

    Returns dict: ``score`` = mean R^2 over the components (1: every component is a sinusoid,
    the trajectory a helix; near 0 for unstructured vectors, about 2 ln(oversample T) / T),
    ``r2`` and ``frequency`` (cycles per position) per component, ``explained_variance_ratio``.
    """
    P = np.asarray(P, dtype=np.float64)
    if P.ndim != 2 or len(P) < 8:
        raise ValueError(f"helix_score needs [T, d] with T >= 8 positions, got shape {P.shape}")
    T = len(P)
    fit = fit_pca(P, min(n_components, P.shape[1], T - 1))
    coords = (P - fit["mean"]) @ fit["components"].T
    freqs = np.arange(1, oversample * T + 1) / (2 * oversample * T)   # 1/(2T) .. 1/2
    r2, fr = _best_sinusoids(coords, freqs)
    return {"score": float(np.mean(r2)), "r2": r2.tolist(), "frequency": fr.tolist(),
            "explained_variance_ratio": fit["explained_variance_ratio"].tolist()}


def early_tail(P: np.ndarray, first_position: int = 1, quantile: float = 0.95) -> dict:
    """The tail of early positions entering the dense cloud of later ones.

    ``P`` [T', d]: per-position means of a layer's residual stream for positions
    ``first_position`` .. (position 0 left out: it is its own outlier). The cloud is the
    second half of the positions: centroid ``c`` and RMS radius ``r``. Each position's
    displacement is ``|P_t - c| / r``; the tail ends at the first position whose displacement
    is within the cloud's own ``quantile`` of displacements.

    Returns dict: ``entry_position`` (first position inside the cloud), ``tail_length``
    (positions before it), ``displacement`` (first 16 positions), ``threshold``, and the
    tail's shape: ``participation_ratio`` (sum(l)^2 / sum(l^2) of its covariance eigenvalues;
    1 = a line) and ``top2_fraction`` (variance in its first two components); both None for
    tails shorter than 3. This project's operationalisation of the published figure.
    """
    P = np.asarray(P, dtype=np.float64)
    if P.ndim != 2 or len(P) < 8:
        raise ValueError(f"early_tail needs [T, d] with T >= 8 positions, got shape {P.shape}")
    late = P[len(P) // 2:]
    c = late.mean(axis=0)
    r = float(np.sqrt(((late - c) ** 2).sum(axis=1).mean())) or 1.0
    disp = np.linalg.norm(P - c, axis=1) / r
    thr = float(np.quantile(disp[len(P) // 2:], quantile))
    inside = np.flatnonzero(disp <= thr)
    n_tail = int(inside[0]) if inside.size else len(P)
    pr = top2 = None
    if n_tail >= 3:
        tail = P[:n_tail] - P[:n_tail].mean(axis=0)
        lam = np.clip(np.linalg.svd(tail, compute_uv=False) ** 2, 0, None)
        pr = float(lam.sum() ** 2 / (lam ** 2).sum())
        top2 = float(lam[:2].sum() / lam.sum())
    return {"entry_position": first_position + n_tail, "tail_length": n_tail,
            "displacement": disp[:16].tolist(), "threshold": thr, "participation_ratio": pr,
            "top2_fraction": top2}
