"""Each feature's top co-occurrence partners from block presences, in bounded memory.

``top_partners`` forms ``C = Bᵀ B`` a chunk of rows at a time and keeps, per feature, the
diagonal and the ``k`` largest off-diagonal counts (exact). The co-occurrence of wide layers
(issue 12) is this matrix, whether formed by the precompute (``precompute.cooccur``) or by a
synthetic atlas (``analysis.synthetic``); ``top_per_row`` also selects the kNN graphs of
``analysis.wide``. numpy and scipy only: the precompute imports this module.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def top_per_row(indptr: np.ndarray, indices: np.ndarray, score: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask over CSR entries: the ``k`` highest ``score`` of each row, ties to the
    lower column (for float scores the columns must be sorted within rows).

    One int64 sort of a composite key (row, score descending, column) instead of a
    three-key lexsort, which was 10x slower on the 10 M entries of a 16k-row chunk.
    """
    n_rows = indptr.size - 1
    row = np.repeat(np.arange(n_rows, dtype=np.int64), np.diff(indptr))
    if score.size == 0:
        return np.zeros(0, dtype=bool)
    if np.issubdtype(score.dtype, np.integer):
        s = score.astype(np.int64)
        desc = s.max() - s
        n_cols = int(indices.max()) + 1
        width = (int(desc.max()) + 1) * n_cols
        if n_rows * width >= 2 ** 62:
            raise ValueError("too many rows, columns and score levels for one int64 key")
        key = row * width + desc * n_cols + indices
    else:
        # the position of each entry in a stable descending sort of the scores; entries are
        # in row-major order with sorted columns, so ties already stand lower column first
        by_score = np.argsort(-score, kind="stable")
        pos = np.empty(score.size, np.int64)
        pos[by_score] = np.arange(score.size)
        key = row * score.size + pos
    order = np.argsort(key)
    rank = np.empty(order.size, np.int64)
    rank[order] = np.arange(order.size) - indptr[row[order]]
    return rank < k


def top_partners(blocks, k: int = 32, chunk: int = 16384, dtype=np.int32,
                 max_entries: int | None = None) -> sp.csr_matrix:
    """Sparse co-occurrence ``C = Bᵀ B`` restricted to each feature's top partners.

    Parameters
    ----------
    blocks : sparse [T, F] 0/1 block-by-feature presence ``B`` (METHODS 1).
    k : partners kept per feature (largest off-diagonal counts; ties: lower column). The
        precompute forms wide layers' ``cooc.npz`` with this function (``precompute.cooccur``).
    chunk : features whose rows of ``C`` are formed at once; memory is that of those rows.
    max_entries : if given, fewer rows per chunk where needed so that a chunk holds at most
        this many entries of ``C`` (one row at least; a row's entries are bounded by the sum of
        its blocks' sizes and by F), which bounds the memory whatever the presences.

    Returns
    -------
    CSR [F, F] of ``dtype``: the diagonal (``C_ii``, blocks where i is present) and, for every
    feature, its ``k`` top partners, symmetrised by union - an entry kept by either row is
    stored in both, always with the exact count ``C_ij``.
    """
    B = sp.csr_matrix(blocks, dtype=np.int32)
    B.data[:] = 1
    F = B.shape[1]
    Bt = B.T.tocsr()
    rows, cols, vals = [], [], []
    for s, e in _row_chunks(Bt, np.diff(B.indptr), chunk, max_entries):
        part = (Bt[s:e] @ B).tocsr()                    # exact counts of these rows, sparse
        r = np.repeat(np.arange(part.shape[0]), np.diff(part.indptr))
        off = part.indices != r + s
        score = np.where(off, part.data, -1).astype(np.int64)   # the diagonal is kept aside
        keep = top_per_row(part.indptr, part.indices, score, k) & off
        rows.append(r[keep] + s)
        cols.append(part.indices[keep])
        vals.append(part.data[keep])
    r, c, v = (np.concatenate(x) if x else np.zeros(0, np.int64) for x in (rows, cols, vals))
    diag = np.asarray(B.sum(axis=0)).ravel()
    # union: (i, j) kept by row i or by row j is stored both ways, with the exact count
    # (the maximum of a kept count and an absent 0)
    C = sp.csr_matrix((v, (r, c)), shape=(F, F), dtype=np.int64)
    C = C.maximum(C.T).tocsr()
    C = C + sp.diags(diag.astype(np.int64), format="csr", dtype=np.int64)
    C.sort_indices()
    return C.astype(dtype)


def _row_chunks(Bt, block_sizes: np.ndarray, chunk: int, max_entries: int | None) -> list[tuple[int, int]]:
    """Row ranges ``[s, e)`` of ``C = Bt Bᵀ`` covering all rows: at most ``chunk`` rows each and,
    with ``max_entries``, at most that many entries by a bound on each row's (one row at least)."""
    F = Bt.shape[0]
    if max_entries is None:
        return [(s, min(F, s + chunk)) for s in range(0, F, chunk)]
    bound = np.minimum(Bt @ block_sizes.astype(np.int64), F)    # entries of each row, at most
    cum = np.concatenate([[0], np.cumsum(bound)])
    out, s = [], 0
    while s < F:
        e = int(np.searchsorted(cum, cum[s] + max_entries, side="right")) - 1
        e = min(max(e, s + 1), s + chunk, F)
        out.append((s, e))
        s = e
    return out
