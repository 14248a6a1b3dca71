"""Universality of SAE feature spaces (METHODS 5 in docs/methods.md).

Reference: Lan, Torr, Meek, Khakzar, Krueger and Barez, *Sparse Autoencoders Reveal
Universal Feature Spaces Across Large Language Models*, arXiv 2410.06981 (2024).

Two SAE sets (A and B) are run over the same text. This module holds the pure-numpy parts:

* **Alignment** (``align_offsets``): the unit that is correlated. With one tokenizer the
  units are the tokens. With two tokenizers a unit is a smallest character span whose two
  ends are token boundaries of *both* tokenizations; it covers one or more whole tokens on
  each side, and exactly the same characters on both. A feature's activation on a unit is the
  maximum of its activations on the unit's tokens (``unit_max``).
* **Correlation** (``correlation_blocks``, ``correlation_matrix``): Pearson correlation of
  every A feature with every B feature over the units, i.e. ``Z_Aᵀ Z_B / N`` with ``Z`` the
  z-scored activations, accumulated from sparse activation chunks (sums, sums of squares,
  cross-products) so that no N x F dense matrix is ever formed, in column blocks of B so that
  the F_A x F_B block stays under a memory budget.
* **Pairing** (``best_matches``, ``pair_features``, ``pair_filters``): many-to-one (each B
  feature with its best A feature), one-to-one (published rule: first B feature seen keeps an
  A feature; or the B feature with the highest correlation keeps it), and the published
  filters (correlation <= 0.1; top-5 tokens all punctuation/special or sharing none).
* **Similarity of paired decoder directions** (``svcca``, ``rsa``, ``similarity_null``):
  SVCCA (centre, keep the singular directions explaining 99 % of the variance on each side,
  mean canonical correlation); P3's published variant that kept one direction by mistake is
  ``svcca(..., variant="published")``. RSA: Spearman correlation of the off-diagonal entries
  of the two Pearson similarity matrices of decoder rows. Nulls shuffle the pairing (permute
  the rows of one side); ``p = (1 + #{null >= observed}) / (1 + n_shuffles)``.
* **Semantic subspaces** (``load_keywords``, ``keyword_members``, ``whole_word``): keyword
  groups from ``analysis/keywords.tsv`` (or a user file of the same format).
* **The comparison store** (``ComparisonManifest``, ``open_comparison``,
  ``validate_comparison``): the files that ``saegeo compare`` writes (docs/atlas.md,
  "Comparisons").
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, Field, ValidationError

from analysis.atlas import FileInfo

KEYWORDS_FILE = Path(__file__).with_name("keywords.tsv")
COMPARISON_KIND = "saegeo-comparison"
COMPARISON_SCHEMA = 1


# =========================================================================== alignment


@dataclass
class Alignment:
    """Units of one document shared by two tokenizations.

    ``start[u]:end[u]`` are the characters of unit ``u``; its tokens on side A are
    ``tokens_a[ptr_a[u]:ptr_a[u + 1]]`` (indices into side A's token list), likewise for B.
    ``dropped`` counts spans between common boundaries whose tokens did not cover the same
    characters on both sides (a tokenizer that skips or normalises characters); they are
    not units. ``excluded_a`` / ``excluded_b`` count tokens in no unit (special tokens,
    tokens of dropped spans).
    """

    start: np.ndarray
    end: np.ndarray
    ptr_a: np.ndarray
    tokens_a: np.ndarray
    ptr_b: np.ndarray
    tokens_b: np.ndarray
    dropped: int = 0
    excluded_a: int = 0
    excluded_b: int = 0

    @property
    def n_units(self) -> int:
        return len(self.start)


def identity_alignment(offsets: np.ndarray, keep: np.ndarray | None = None) -> Alignment:
    """One unit per token: the alignment of two SAE sets that share a tokenizer.

    Parameters
    ----------
    offsets : int array [T, 2], character span of each token.
    keep : bool array [T] or None, tokens to use (False: special tokens).
    """
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    idx = np.arange(len(offsets)) if keep is None else np.flatnonzero(keep)
    ptr = np.arange(len(idx) + 1, dtype=np.int64)
    return Alignment(offsets[idx, 0].copy(), offsets[idx, 1].copy(), ptr, idx.astype(np.int64), ptr.copy(),
                     idx.astype(np.int64).copy(), 0, len(offsets) - len(idx), len(offsets) - len(idx))


def _inside(offsets: np.ndarray, n_chars: int) -> np.ndarray:
    """bool [n_chars + 1]: position c lies strictly inside some token (s < c < e)."""
    diff = np.zeros(n_chars + 2, dtype=np.int64)
    long = offsets[offsets[:, 1] - offsets[:, 0] >= 2]
    np.add.at(diff, long[:, 0] + 1, 1)
    np.add.at(diff, long[:, 1], -1)
    return np.cumsum(diff)[: n_chars + 1] > 0


def align_offsets(offsets_a, offsets_b, keep_a=None, keep_b=None, n_chars: int | None = None) -> Alignment:
    """Align two tokenizations of one text by character offsets.

    A position ``c`` in the text is a *boundary* of a tokenization when no token of it
    strictly contains ``c`` (``s < c < e``). The units are the spans between consecutive
    positions that are boundaries of both tokenizations (only token starts and ends are
    candidates), i.e. the finest partition of the text into spans made of whole tokens on
    each side. A token belongs to the unit that contains its span. A unit is kept when its
    tokens cover the same characters on both sides and it has at least one token on each;
    otherwise it is counted in ``dropped``.

    Byte-level tokenizers split one character into several tokens that report the same
    span; they fall into one unit together, as they should.

    Parameters
    ----------
    offsets_a, offsets_b : int arrays [T_A, 2] and [T_B, 2], character spans ``(start,
        end)`` of the tokens in order (a fast tokenizer's ``offset_mapping``).
    keep_a, keep_b : bool arrays or None; False marks tokens to leave out (special tokens,
        BOS). Their characters then count as not covered on that side.
    n_chars : length of the text (default: the largest end offset).

    Returns
    -------
    Alignment
    """
    oa = np.asarray(offsets_a, dtype=np.int64).reshape(-1, 2)
    ob = np.asarray(offsets_b, dtype=np.int64).reshape(-1, 2)
    ka = np.ones(len(oa), bool) if keep_a is None else np.asarray(keep_a, bool)
    kb = np.ones(len(ob), bool) if keep_b is None else np.asarray(keep_b, bool)
    # empty spans (some tokenizers give (0, 0) to tokens they synthesise) carry no characters
    ka = ka & (oa[:, 1] > oa[:, 0])
    kb = kb & (ob[:, 1] > ob[:, 0])
    ia, ib = np.flatnonzero(ka), np.flatnonzero(kb)
    va, vb = oa[ia], ob[ib]
    if n_chars is None:
        n_chars = int(max(va[:, 1].max(initial=0), vb[:, 1].max(initial=0)))
    empty = Alignment(*(np.zeros(0, np.int64),) * 2, np.zeros(1, np.int64), np.zeros(0, np.int64),
                      np.zeros(1, np.int64), np.zeros(0, np.int64), 0, len(oa), len(ob))
    if len(va) == 0 or len(vb) == 0:
        return empty
    cand = np.unique(np.concatenate([va.ravel(), vb.ravel()]))
    cand = cand[(cand >= 0) & (cand <= n_chars)]
    cuts = cand[~_inside(va, n_chars)[cand] & ~_inside(vb, n_chars)[cand]]
    n_int = len(cuts) - 1
    if n_int < 1:
        return empty
    # each token -> the span between consecutive cuts that holds it (no cut is inside a token)
    ua = np.searchsorted(cuts, va[:, 0], side="right") - 1
    ub = np.searchsorted(cuts, vb[:, 0], side="right") - 1
    ok_a = (ua >= 0) & (ua < n_int) & (va[:, 1] <= cuts[np.clip(ua + 1, 0, n_int)])
    ok_b = (ub >= 0) & (ub < n_int) & (vb[:, 1] <= cuts[np.clip(ub + 1, 0, n_int)])
    cnt_a = np.bincount(ua[ok_a], minlength=n_int)
    cnt_b = np.bincount(ub[ok_b], minlength=n_int)
    # the same characters covered on both sides: no character inside the span covered by one only
    mismatch = _covered(va[ok_a], n_chars) != _covered(vb[ok_b], n_chars)
    cs = np.concatenate([[0], np.cumsum(mismatch)])
    same = cs[cuts[1:]] == cs[cuts[:-1]]
    unit = (cnt_a > 0) & (cnt_b > 0) & same
    dropped = int((((cnt_a > 0) | (cnt_b > 0)) & ~unit).sum())
    new_id = np.cumsum(unit) - 1

    def side(u, ok, idx, v, cnt):
        take = ok & unit[np.clip(u, 0, n_int - 1)]
        order = np.flatnonzero(take)
        order = order[np.argsort(u[order], kind="stable")]
        ptr = np.concatenate([[0], np.cumsum(cnt[unit])]).astype(np.int64)
        return ptr, idx[order].astype(np.int64), v[order], new_id[u[order]]

    pa, ta, vsa, uida = side(ua, ok_a, ia, va, cnt_a)
    pb, tb, _, _ = side(ub, ok_b, ib, vb, cnt_b)
    n_units = int(unit.sum())
    starts = np.full(n_units, np.iinfo(np.int64).max)
    ends = np.zeros(n_units, np.int64)
    np.minimum.at(starts, uida, vsa[:, 0])
    np.maximum.at(ends, uida, vsa[:, 1])
    return Alignment(starts, ends, pa, ta, pb, tb, dropped, len(oa) - len(ta), len(ob) - len(tb))


def _covered(offsets: np.ndarray, n_chars: int) -> np.ndarray:
    """bool [n_chars]: character covered by some token."""
    diff = np.zeros(n_chars + 1, dtype=np.int64)
    np.add.at(diff, offsets[:, 0], 1)
    np.add.at(diff, offsets[:, 1], -1)
    return np.cumsum(diff)[:n_chars] > 0


def unit_max(acts, ptr: np.ndarray, tokens: np.ndarray) -> sp.csr_matrix:
    """Activation of every feature on every unit: the maximum over the unit's tokens.

    Parameters
    ----------
    acts : [T, F] activations of one document's tokens (scipy sparse or dense); activations
        are taken to be >= 0 (ReLU, TopK and JumpReLU SAEs), absent entries are 0.
    ptr, tokens : the unit -> tokens map of an ``Alignment`` side (``ptr_a``, ``tokens_a``).

    Returns
    -------
    scipy.sparse.csr_matrix float32 [U, F]
    """
    acts = sp.csr_matrix(acts, dtype=np.float32)
    U = len(ptr) - 1
    unit_of_token = np.repeat(np.arange(U), np.diff(ptr))
    sub = acts[tokens]                       # rows in unit order
    coo = sub.tocoo()
    rows = unit_of_token[coo.row]
    keys = rows.astype(np.int64) * acts.shape[1] + coo.col
    order = np.lexsort((-coo.data, keys))
    keys, vals = keys[order], coo.data[order]
    first = np.ones(len(keys), bool)
    first[1:] = keys[1:] != keys[:-1]
    keys, vals = keys[first], vals[first]    # the largest value of each (unit, feature)
    return sp.csr_matrix((vals, (keys // acts.shape[1], keys % acts.shape[1])), shape=(U, acts.shape[1]),
                         dtype=np.float32)


# =========================================================================== correlation


def feature_moments(X: sp.spmatrix | np.ndarray, chunk: int = 65536) -> tuple[int, np.ndarray, np.ndarray]:
    """Number of units, per-feature sums and sums of squares (float64), chunk by chunk."""
    n, F = X.shape
    s, q = np.zeros(F), np.zeros(F)
    for i in range(0, n, chunk):
        c = X[i:i + chunk]
        if sp.issparse(c):
            c = sp.csr_matrix(c)
            d = c.data.astype(np.float64)
            s += np.bincount(c.indices, d, minlength=F)
            q += np.bincount(c.indices, d * d, minlength=F)
        else:
            c = np.asarray(c, dtype=np.float64)
            s += c.sum(0)
            q += (c * c).sum(0)
    return n, s, q


def _add_product(out: np.ndarray, A: sp.csr_matrix, B: sp.csr_matrix) -> None:
    """``out += A.T @ B`` for sparse chunks, touching only the non-zero products."""
    P = sp.csr_matrix(A.T @ B)
    P.sum_duplicates()
    if P.nnz == 0:
        return
    rows = np.repeat(np.arange(P.shape[0], dtype=np.int64), np.diff(P.indptr))
    flat = out.reshape(-1)
    flat[rows * out.shape[1] + P.indices] += P.data


def correlation_blocks(A, B, *, chunk_units: int = 8192, max_bytes: int = 1 << 30,
                       block_b: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Pearson correlations of every A feature with every B feature, block by block.

    The correlation over N units is ``Z_Aᵀ Z_B / N`` with ``Z`` each feature's activations
    minus its mean, divided by its (population) standard deviation. It is computed as
    ``(C / N - μ_A μ_Bᵀ) / (σ_A σ_Bᵀ)`` from the per-feature sums, sums of squares and the
    cross-products ``C = Aᵀ B``, accumulated in float64 from chunks of ``chunk_units``
    units. Sparse inputs stay sparse (only non-zero products are added), so no N x F dense
    matrix is formed. When the F_A x F_B float64 block exceeds ``max_bytes``, B's features
    are taken ``block_b`` at a time, one pass over the units per block. Features that never
    vary get correlation 0.

    Parameters
    ----------
    A : [N, F_A] activations (scipy sparse, preferably CSR, or dense) of SAE set A.
    B : [N, F_B] activations of SAE set B on the same units.
    chunk_units : units per chunk. max_bytes : memory budget of one correlation block.
    block_b : B features per block (default: as many as ``max_bytes`` allows).

    Yields
    ------
    cols : int array, the B features of this block.
    corr : float64 [F_A, len(cols)].

    References
    ----------
    Lan et al., arXiv 2410.06981, section 3 (activation correlation pairing).
    """
    if A.shape[0] != B.shape[0]:
        raise ValueError(f"A has {A.shape[0]} units, B has {B.shape[0]}: the activations must be on the same units")
    n, Fa, Fb = A.shape[0], A.shape[1], B.shape[1]
    if n < 2:
        raise ValueError("at least two aligned units are needed for a correlation")
    sparse = sp.issparse(A) and sp.issparse(B)
    if sparse:
        A, B = sp.csr_matrix(A), sp.csc_matrix(B)
    _, sa, qa = feature_moments(A)
    _, sb, qb = feature_moments(sp.csr_matrix(B) if sparse else B)
    ma, mb = sa / n, sb / n
    sda = np.sqrt(np.maximum(qa / n - ma * ma, 0.0))
    sdb = np.sqrt(np.maximum(qb / n - mb * mb, 0.0))
    with np.errstate(divide="ignore"):
        inv_a = np.where(sda > 0, 1.0 / sda, 0.0)   # a feature that never varies correlates 0
        inv_b = np.where(sdb > 0, 1.0 / sdb, 0.0)
    if block_b is None:
        block_b = max(1, min(Fb, max_bytes // (8 * max(Fa, 1))))
    for b0 in range(0, Fb, block_b):
        cols = np.arange(b0, min(Fb, b0 + block_b))
        Bc = B[:, b0:cols[-1] + 1]
        if sparse:
            Bc = sp.csr_matrix(Bc)
        C = np.zeros((Fa, len(cols)))
        for i in range(0, n, chunk_units):
            if sparse:
                _add_product(C, A[i:i + chunk_units], Bc[i:i + chunk_units])
            else:
                C += np.asarray(A[i:i + chunk_units], np.float64).T @ np.asarray(Bc[i:i + chunk_units], np.float64)
        # (C / N - μ_A μ_Bᵀ) / (σ_A σ_Bᵀ) in place, a band of rows at a time (no second F_A x F_B buffer)
        for r0 in range(0, Fa, 1024):
            band = C[r0:r0 + 1024]
            band /= n
            band -= np.outer(ma[r0:r0 + 1024], mb[cols])
            band *= inv_a[r0:r0 + 1024, None]
            band *= inv_b[None, cols]
        yield cols, C


def correlation_matrix(A, B, **kw) -> np.ndarray:
    """The whole F_A x F_B Pearson matrix (``correlation_blocks`` assembled; small F only)."""
    out = np.empty((A.shape[1], B.shape[1]))
    for cols, block in correlation_blocks(A, B, **kw):
        out[:, cols] = block
    return out


def correlation_dense_reference(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Naive reference: z-score dense [N, F] activations, ``Z_Aᵀ Z_B / N`` (tests, bench)."""
    A = np.asarray(A.toarray() if sp.issparse(A) else A, np.float64)
    B = np.asarray(B.toarray() if sp.issparse(B) else B, np.float64)
    sa, sb = A.std(0), B.std(0)
    Za = (A - A.mean(0)) / np.where(sa > 0, sa, 1.0)
    Zb = (B - B.mean(0)) / np.where(sb > 0, sb, 1.0)
    Za[:, sa == 0] = 0
    Zb[:, sb == 0] = 0
    return Za.T @ Zb / A.shape[0]


def best_matches(A, B, **kw) -> tuple[np.ndarray, np.ndarray]:
    """Many-to-one pairing: for every B feature, the A feature it correlates with most.

    Returns ``(best_a [F_B] int64, corr [F_B] float64)``; ties go to the lowest A index.
    Takes the arguments of ``correlation_blocks``; memory stays within one block.
    """
    best = np.zeros(B.shape[1], np.int64)
    val = np.zeros(B.shape[1])
    for cols, block in correlation_blocks(A, B, **kw):
        i = block.argmax(0)
        best[cols], val[cols] = i, block[i, np.arange(len(cols))]
    return best, val


def pair_features(best_a: np.ndarray, corr: np.ndarray, mode: Literal["many_to_one", "one_to_one"] = "many_to_one",
                  rule: Literal["first", "highest"] = "first", eligible: np.ndarray | None = None) -> np.ndarray:
    """Which B features keep their pair.

    Parameters
    ----------
    best_a, corr : from ``best_matches``.
    mode : ``"many_to_one"`` keeps every B feature (several may share an A feature);
        ``"one_to_one"`` keeps at most one B feature per A feature.
    rule : for one-to-one, which B feature keeps a shared A feature: ``"first"`` - the
        first seen in B's feature order (P3's published rule), ``"highest"`` - the one with
        the highest correlation (ties: the first).
    eligible : bool [F_B] or None; B features that take part (the others are never kept and
        never claim an A feature - apply the filters first when they should decide).

    Returns
    -------
    bool [F_B]
    """
    n = len(best_a)
    ok = np.ones(n, bool) if eligible is None else np.asarray(eligible, bool).copy()
    if mode == "many_to_one":
        return ok
    if mode != "one_to_one":
        raise ValueError(f"unknown pairing mode {mode!r}; use many_to_one or one_to_one")
    idx = np.flatnonzero(ok)
    if rule == "first":
        order = idx
    elif rule == "highest":
        order = idx[np.lexsort((idx, -corr[idx]))]
    else:
        raise ValueError(f"unknown one-to-one rule {rule!r}; use first or highest")
    _, first = np.unique(best_a[order], return_index=True)
    keep = np.zeros(n, bool)
    keep[order[first]] = True
    return keep


# =========================================================================== tokens and filters


def is_punctuation_or_special(token: str, specials: Iterable[str] = ()) -> bool:
    """True for a token that is a special token, empty or whitespace, or made only of
    punctuation and symbol characters (Unicode categories P* and S*)."""
    if token in set(specials):
        return True
    t = token.strip()
    return not t or all(unicodedata.category(ch)[0] in "PS" for ch in t)


def top_unit_tokens(acts: sp.spmatrix, unit_text: np.ndarray | list[str], k: int = 5,
                    pool: int = 50) -> list[list[str]]:
    """Each feature's top-``k`` activating tokens: the distinct texts (whitespace stripped)
    of its highest-activation units, best first, taken from its ``pool`` strongest units.

    Parameters
    ----------
    acts : [U, F] unit activations (sparse). unit_text : text of each unit.
    """
    A = sp.csc_matrix(acts)
    text = np.asarray(unit_text, dtype=object)
    out = []
    for f in range(A.shape[1]):
        rows, vals = A.indices[A.indptr[f]:A.indptr[f + 1]], A.data[A.indptr[f]:A.indptr[f + 1]]
        rows = rows[vals > 0]
        vals = vals[vals > 0]
        if len(rows) > pool:
            sel = np.argpartition(-vals, pool)[:pool]
            rows, vals = rows[sel], vals[sel]
        seen: list[str] = []
        for r in rows[np.lexsort((rows, -vals))]:
            t = str(text[r]).strip()
            if t not in seen:
                seen.append(t)
                if len(seen) == k:
                    break
        out.append(seen)
    return out


def pair_filters(corr: np.ndarray, tokens_a: list[list[str]], tokens_b: list[list[str]], best_a: np.ndarray,
                 specials: Iterable[str] = ()) -> dict[str, np.ndarray]:
    """The published filters' verdicts for every B feature's pair.

    Returns bool arrays [F_B]: ``punctuation`` - the top tokens of A's or of B's feature are
    all punctuation or special tokens (or it has none); ``shared`` - the two top-token lists
    share at least one token (case-insensitive). The correlation threshold is applied by the
    caller (``corr > min_corr``).
    """
    specials = set(specials)
    punct = np.zeros(len(best_a), bool)
    shared = np.zeros(len(best_a), bool)
    for b, a in enumerate(best_a):
        ta, tb = tokens_a[a], tokens_b[b]
        punct[b] = all(is_punctuation_or_special(t, specials) for t in ta) or \
            all(is_punctuation_or_special(t, specials) for t in tb)
        shared[b] = bool({t.lower() for t in ta} & {t.lower() for t in tb})
    return {"punctuation": punct, "shared": shared}


# =========================================================================== SVCCA and RSA


def _reduced_basis(X: np.ndarray, variance: float, published: bool) -> np.ndarray:
    """Orthonormal basis [n, k] of the centred rows' top singular directions."""
    X = np.asarray(X, np.float64)
    X = X - X.mean(0)
    n, d = X.shape
    if n > d:
        # thousands of pairs of a few hundred dimensions: the left singular vectors from the
        # d x d Gram matrix's eigenvectors (U = X V / s), about 3x faster than the SVD of X.
        # Squaring loses precision only in directions below ~1e-6 of the largest singular
        # value, which 99 % of the variance never needs; they are cut off as rank deficiency.
        energy, V = np.linalg.eigh(X.T @ X)
        energy, V = energy[::-1].clip(0), V[:, ::-1]
        s, tol = np.sqrt(energy), 1e-6
    else:
        U, s, _ = np.linalg.svd(X, full_matrices=False)
        energy, tol = s ** 2, 1e-10
    total = energy.sum()
    if total <= 0:
        return np.zeros((n, 0))
    k = 1 if published else int(np.searchsorted(np.cumsum(energy) / total, variance - 1e-12) + 1)
    k = min(k, int((s > s[0] * tol).sum()))
    return X @ (V[:, :k] / s[:k]) if n > d else U[:, :k]


def _cca_mean(Ux: np.ndarray, Uy: np.ndarray) -> float:
    if Ux.shape[1] == 0 or Uy.shape[1] == 0:
        return 0.0
    rho = np.linalg.svd(Ux.T @ Uy, compute_uv=False)
    return float(np.clip(rho, 0.0, 1.0).mean())


def svcca(X: np.ndarray, Y: np.ndarray, variance: float = 0.99,
          variant: Literal["correct", "published"] = "correct") -> float:
    """Singular-vector canonical correlation analysis of paired decoder rows.

    Each side is centred (column means removed), reduced to its top singular directions
    explaining ``variance`` of the variance, and the mean of the canonical correlations
    between the two reduced sets is returned (the canonical correlations are the singular
    values of ``U_Xᵀ U_Y`` for orthonormal bases ``U`` of the reduced sets).

    Parameters
    ----------
    X : [n, d_A] decoder rows of the paired A features; Y : [n, d_B] of their B partners,
        row ``i`` of ``X`` paired with row ``i`` of ``Y``. ``d_A`` and ``d_B`` may differ.
    variance : fraction of variance kept on each side (published: 0.99).
    variant : ``"correct"`` (default) or ``"published"``: P3's code kept exactly one singular
        direction on each side because of a normalisation error, so its value is the
        correlation of the two first principal components (about 0.29 on data where the
        correct SVCCA is about 0.999).

    Returns
    -------
    float in [0, 1]

    References
    ----------
    Raghu et al., SVCCA, NeurIPS 2017; Lan et al., arXiv 2410.06981, section 3.
    """
    X, Y = _check_pair(X, Y)
    pub = _variant(variant)
    return _cca_mean(_reduced_basis(X, variance, pub), _reduced_basis(Y, variance, pub))


def _variant(variant: str) -> bool:
    if variant not in ("correct", "published"):
        raise ValueError(f"unknown SVCCA variant {variant!r}; use correct or published")
    return variant == "published"


def _check_pair(X, Y) -> tuple[np.ndarray, np.ndarray]:
    X, Y = np.asarray(X, np.float64), np.asarray(Y, np.float64)
    if X.ndim != 2 or Y.ndim != 2 or len(X) != len(Y):
        raise ValueError(f"paired rows needed: X is {X.shape}, Y is {Y.shape}")
    if len(X) < 3:
        raise ValueError(f"{len(X)} pairs: at least 3 are needed to compare two sets of directions")
    return X, Y


def _offdiag_ranks(X: np.ndarray) -> np.ndarray:
    """Centred ranks of the upper off-diagonal entries of the rows' Pearson similarity
    matrix, as a symmetric [n, n] matrix with zero diagonal."""
    with np.errstate(invalid="ignore", divide="ignore"):
        S = np.corrcoef(X)
    # a constant row has no correlation (0); rounding makes equal similarities tie exactly
    S = np.round(np.nan_to_num(S, nan=0.0), 12)
    n = len(X)
    iu = np.triu_indices(n, 1)
    _, inv, cnt = np.unique(S[iu], return_inverse=True, return_counts=True)
    r = (np.cumsum(cnt) - (cnt - 1) / 2.0)[inv]        # average ranks of ties, 1-based
    r -= r.mean()
    R = np.zeros((n, n), dtype=np.float32)   # ranks of up to 2^24 entries are exact; halves the null's traffic
    R[iu] = r
    return R + R.T


def rsa(X: np.ndarray, Y: np.ndarray) -> float:
    """Representational similarity of paired decoder rows.

    Each side's similarity matrix is the Pearson correlation between its rows (decoder
    directions); the score is the Spearman correlation of the two matrices' entries above
    the diagonal.

    Parameters
    ----------
    X : [n, d_A], Y : [n, d_B] paired decoder rows (row ``i`` with row ``i``).

    Returns
    -------
    float in [-1, 1]

    References
    ----------
    Kriegeskorte et al. 2008; Lan et al., arXiv 2410.06981, section 3.
    """
    X, Y = _check_pair(X, Y)
    return _rank_corr(_offdiag_ranks(X), _offdiag_ranks(Y))


def _rank_corr(Rx: np.ndarray, Ry: np.ndarray) -> float:
    rx, ry = Rx.ravel().astype(np.float64), Ry.ravel().astype(np.float64)
    den = np.sqrt((rx @ rx) * (ry @ ry))
    return float((rx @ ry) / den) if den > 0 else 0.0


def permutation_p(observed: float, null: np.ndarray) -> float:
    """``(1 + #{null >= observed}) / (1 + len(null))``: never 0, exact under exchangeability."""
    null = np.asarray(null)
    return float((1 + np.sum(null >= observed - 1e-12)) / (1 + len(null)))


def similarity_null(X: np.ndarray, Y: np.ndarray, measure: Literal["svcca", "rsa"], n_shuffles: int = 100,
                    seed: int = 0, variance: float = 0.99,
                    variant: Literal["correct", "published"] = "correct") -> dict[str, Any]:
    """A similarity with its row-shuffle null and permutation p-value.

    The pairing is destroyed by permuting the rows of ``Y`` ``n_shuffles`` times (seeded)
    and recomputing the measure. The reductions that do not depend on the pairing (SVCCA's
    singular bases, RSA's rank matrices) are computed once and permuted.

    Returns
    -------
    dict with ``value``, ``p`` (``permutation_p``), ``null_mean``, ``null_std``,
    ``n_shuffles``, ``null`` (array [n_shuffles]).
    """
    X, Y = _check_pair(X, Y)
    rng = np.random.default_rng(seed)
    if measure == "svcca":
        pub = _variant(variant)
        Ux, Uy = _reduced_basis(X, variance, pub), _reduced_basis(Y, variance, pub)
        value = _cca_mean(Ux, Uy)
        null = np.array([_cca_mean(Ux, Uy[rng.permutation(len(Uy))]) for _ in range(n_shuffles)])
    elif measure == "rsa":
        Rx, Ry = _offdiag_ranks(X), _offdiag_ranks(Y)
        rx = Rx.ravel()
        den = np.sqrt(float(rx.astype(np.float64) @ rx) * float(Ry.ravel().astype(np.float64) @ Ry.ravel()))

        def score(p):   # sum_ij Rx[i, j] Ry[p_i, p_j], observed and shuffled alike
            return float(np.dot(rx, Ry.take(p, 0).take(p, 1).ravel())) / den if den > 0 else 0.0

        value = score(np.arange(len(Ry)))
        null = np.array([score(rng.permutation(len(Ry))) for _ in range(n_shuffles)])
    else:
        raise ValueError(f"unknown measure {measure!r}; use svcca or rsa")
    return {"value": value, "p": permutation_p(value, null), "null_mean": float(null.mean()) if len(null) else None,
            "null_std": float(null.std()) if len(null) else None, "n_shuffles": int(n_shuffles), "null": null}


# =========================================================================== semantic subspaces


def load_keywords(path: str | os.PathLike | None = None) -> dict[str, set[str]]:
    """Keyword groups: ``group<TAB>keyword`` lines (``#`` starts a comment), lower-cased.

    ``path`` defaults to the shipped ``analysis/keywords.tsv`` (time, calendar, people and
    roles, nature, emotions, month names, countries, biology); a user file of the same format
    replaces it (copy the shipped file and add lines to extend it).
    """
    path = Path(path) if path is not None else KEYWORDS_FILE
    if not path.is_file():
        raise ValueError(f"keyword file {path} does not exist")
    groups: dict[str, set[str]] = {}
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split("\t")]
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"{path}:{i}: expected 'group<TAB>keyword', got {line!r}")
        groups.setdefault(parts[0], set()).add(parts[1].lower())
    if not groups:
        raise ValueError(f"keyword file {path} holds no keywords")
    return groups


_WORD = re.compile(r"\w", re.UNICODE)


def whole_word(text: str, start: int, end: int) -> bool:
    """Whether ``text[start:end]`` (leading and trailing whitespace ignored) is a whole word
    of ``text``: the characters just outside it are not word characters."""
    piece = text[start:end]
    s = start + (len(piece) - len(piece.lstrip()))
    e = end - (len(piece) - len(piece.rstrip()))
    if e <= s:
        return False
    before = text[s - 1] if s > 0 else " "
    after = text[e] if e < len(text) else " "
    return not _WORD.match(before) and not _WORD.match(after)


def keyword_members(top_token: list[str], top_is_word: np.ndarray, groups: dict[str, set[str]]) -> dict[str, np.ndarray]:
    """Features of each keyword group.

    A feature belongs to a group when its top activating token (stripped, lower-cased) is
    one of the group's keywords and, at that top activation, stands as a whole word in its
    context (``whole_word``; "may" inside "mayor" does not count).

    Parameters
    ----------
    top_token : text of each feature's highest-activation unit ("" for a feature that never
        fires). top_is_word : bool per feature, ``whole_word`` of that unit.

    Returns
    -------
    {group: sorted int array of features}
    """
    low = [t.strip().lower() for t in top_token]
    out = {}
    for g, words in groups.items():
        out[g] = np.array([f for f, t in enumerate(low) if t in words and top_is_word[f]], dtype=np.int64)
    return out


# =========================================================================== the comparison store


class AtlasRef(BaseModel):
    """One side of a comparison: the atlas and what produced its activations."""

    path: str
    title: str = ""
    model: str
    model_source: str = ""
    tokenizer: str = ""
    layers: list[int]
    saes: dict[str, str] = Field(default_factory=dict)       # layer -> SAE source
    widths: dict[str, int] = Field(default_factory=dict)     # layer -> features


class AlignmentInfo(BaseModel):
    same_tokenizer: bool
    unit: str                     # what a unit is, in words
    n_documents: int
    n_chars: int
    n_units: int
    n_tokens_a: int
    n_tokens_b: int
    excluded_tokens_a: int = 0
    excluded_tokens_b: int = 0
    dropped_spans: int = 0


class ComparisonManifest(BaseModel):
    """``manifest.json`` of a comparison folder (docs/atlas.md, "Comparisons")."""

    kind: Literal["saegeo-comparison"] = COMPARISON_KIND
    schema_version: int = COMPARISON_SCHEMA
    title: str = ""
    created: str = Field(default_factory=lambda: _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
    a: AtlasRef
    b: AtlasRef
    corpus: dict[str, Any] = Field(default_factory=dict)
    alignment: AlignmentInfo
    configs: dict[str, Any] = Field(default_factory=dict)
    software: dict[str, str] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)
    files: dict[str, FileInfo] = Field(default_factory=dict)

    def pair_file(self, layer_a: int, layer_b: int) -> str:
        return f"pairs/{layer_a}_{layer_b}.parquet"


def comparison_shapes(m: ComparisonManifest) -> dict[str, list[int] | None]:
    """The files a comparison must hold and their array shapes (None: not an array)."""
    La, Lb = len(m.a.layers), len(m.b.layers)
    out: dict[str, list[int] | None] = {f"{name}.npy": [La, Lb] for name in
                                        ("svcca", "svcca_p", "rsa", "rsa_p", "n_pairs")}
    out["summary.json"] = None
    out["subspaces.parquet"] = None
    for la in m.a.layers:
        for lb in m.b.layers:
            out[m.pair_file(la, lb)] = None
    return out


def is_comparison(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a comparison manifest (rather than an atlas)."""
    try:
        raw = json.loads((Path(path) / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(raw, dict) and raw.get("kind") == COMPARISON_KIND


def validate_comparison(path: str | os.PathLike, verify: Literal["checksum", "size"] = "checksum") -> list[str]:
    """Every problem with the comparison at ``path``, one line each (empty: sound)."""
    from analysis.atlas import _npy_header, _sha256

    path = Path(path)
    mpath = path / "manifest.json"
    if not path.is_dir():
        return [f"{path}: no such comparison directory"]
    if not mpath.is_file():
        return [f"{mpath}: missing - this is not a complete comparison (an interrupted write, or the wrong folder)"]
    try:
        raw = json.loads(mpath.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return [f"{mpath}: not valid JSON ({e})"]
    if not isinstance(raw, dict) or raw.get("kind") != COMPARISON_KIND:
        return [f"{mpath}: not a comparison manifest (an atlas? open it with open_atlas)"]
    if raw.get("schema_version") != COMPARISON_SCHEMA:
        return [f"{mpath}: unknown comparison schema version {raw.get('schema_version')!r} "
                f"(this saegeo reads version {COMPARISON_SCHEMA})"]
    try:
        m = ComparisonManifest.model_validate(raw)
        files = m.files
    except ValidationError as e:
        err = e.errors()[0]
        return [f"{mpath}: invalid manifest field {'.'.join(str(x) for x in err['loc'])!r}: {err['msg']}"]
    problems = []
    for rel, shape in comparison_shapes(m).items():
        info = files.get(rel)
        if info is None:
            problems.append(f"{path / rel}: missing from the manifest's files")
        elif shape is not None and info.shape != shape:
            problems.append(f"{path / rel}: shape {info.shape}, the manifest's layers imply {shape}")
    for rel, info in files.items():
        f = path / rel
        if not f.is_file():
            problems.append(f"{f}: missing (listed in the manifest)")
            continue
        if f.stat().st_size != info.bytes:
            problems.append(f"{f}: size {f.stat().st_size} bytes, manifest says {info.bytes} (truncated or replaced)")
            continue
        if info.kind == "npy":
            shape, dtype, _ = _npy_header(f)
            if list(shape) != info.shape or dtype.str != info.dtype:
                problems.append(f"{f}: array is {dtype.str}{list(shape)}, manifest says {info.dtype}{info.shape}")
                continue
        if verify == "checksum" and _sha256(f) != info.sha256:
            problems.append(f"{f}: checksum mismatch (the file changed after the comparison was written)")
    return problems


class Comparison:
    """An opened, validated comparison (arrays memory-mapped, tables read on demand)."""

    def __init__(self, path: Path, manifest: ComparisonManifest):
        self.path = path
        self.manifest = manifest

    def array(self, name: str) -> np.ndarray:
        return np.load(self.path / f"{name}.npy", mmap_mode="r", allow_pickle=False)

    def pairs(self, layer_a: int, layer_b: int):
        import pyarrow.parquet as pq

        if layer_a not in self.manifest.a.layers or layer_b not in self.manifest.b.layers:
            raise KeyError(f"layer pair ({layer_a}, {layer_b}) is not in this comparison "
                           f"(A layers {self.manifest.a.layers}, B layers {self.manifest.b.layers})")
        return pq.read_table(self.path / self.manifest.pair_file(layer_a, layer_b)).to_pandas()

    def subspaces(self):
        import pyarrow.parquet as pq

        return pq.read_table(self.path / "subspaces.parquet").to_pandas()

    def summary(self) -> dict:
        return json.loads((self.path / "summary.json").read_text())


def open_comparison(path: str | os.PathLike, verify: Literal["checksum", "size"] = "checksum") -> Comparison:
    """Open and validate a comparison; raises ``analysis.atlas.AtlasError`` (one line) on a problem."""
    from analysis.atlas import AtlasError

    path = Path(path).resolve()
    problems = validate_comparison(path, verify)
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise AtlasError(problems[0] + more)
    return Comparison(path, ComparisonManifest.model_validate_json((path / "manifest.json").read_text()))
