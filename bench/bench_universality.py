"""Correlation of two SAE feature sets over aligned units (METHODS 5): chunked sparse against dense.

    python bench/bench_universality.py            # 16,384 x 16,384 features over 1M units (~k 32 active)
    python bench/bench_universality.py --quick    # a minute or so

Synthetic activations: every unit has ``k`` active features on each side (gamma-distributed
values), and B's features are a noisy permutation of A's for half of them, so the pairing has
something to find. Two implementations, measured in the same run:

* **chunked** (``analysis.universality.best_matches``): sums, sums of squares and sparse
  cross-products accumulated chunk by chunk in float64, the F_A x F_B block kept under a
  memory budget, argmax per B feature;
* **dense reference**: the activations as dense [N, F] float64 arrays, z-scored, ``Z_Aᵀ Z_B / N``
  (the naive published form), argmax per B feature - on a size where it fits.

Printed: time and peak traced memory (tracemalloc: numpy and scipy buffers) of each, their
ratios, and that both pick the same partners. The large run is the chunked one alone (the
reference would need 2 x 1M x 16k x 8 bytes = 262 GB), with its own time and peak memory.
"""
from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.universality import best_matches, correlation_dense_reference  # noqa: E402


def make(n: int, F: int, k: int, seed: int = 0) -> tuple[sp.csr_matrix, sp.csr_matrix, np.ndarray]:
    """A and B [n, F], k active features per unit; B's first half of features copy a random
    permutation of A's (scaled, noised), the rest are independent."""
    rng = np.random.default_rng(seed)

    def acts():
        cols = rng.integers(0, F, size=(n, k))          # duplicates within a row are summed: fine
        vals = rng.gamma(2.0, 1.0, size=(n, k)).astype(np.float32)
        m = sp.csr_matrix((vals.ravel(), cols.ravel(), np.arange(0, n * k + 1, k)), shape=(n, F))
        m.sum_duplicates()
        return m

    A, B = acts(), acts()
    perm = rng.permutation(F)
    half = F // 2
    Bc = sp.csc_matrix(B)
    Ac = sp.csc_matrix(A)
    copy = Ac[:, perm[:half]].multiply(rng.uniform(0.5, 2.0, half).astype(np.float32)).tocsc()
    copy.data *= rng.uniform(0.9, 1.1, copy.nnz).astype(np.float32)
    B = sp.hstack([copy, Bc[:, half:]]).tocsr()
    return A, B, perm[:half]


def measure(fn):
    tracemalloc.start()
    t = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, dt, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a minute or so)")
    ap.add_argument("--k", type=int, default=32)
    args = ap.parse_args()
    k = args.k
    # reference-sized comparison: both implementations on the same data
    n_ref, f_ref = (20_000, 1024) if args.quick else (40_000, 2048)
    A, B, planted = make(n_ref, f_ref, k)
    (best_c, corr_c), t_c, m_c = measure(lambda: best_matches(A, B))

    def dense():
        C = correlation_dense_reference(A, B)
        i = C.argmax(0)
        return i, C[i, np.arange(C.shape[1])]

    (best_d, corr_d), t_d, m_d = measure(dense)
    half = f_ref // 2
    print(f"reference size: {n_ref:,} units, {f_ref:,} x {f_ref:,} features, k = {k}")
    print(f"  chunked sparse : {t_c:8.2f} s   peak {m_c / 2**20:9.1f} MiB")
    print(f"  dense reference: {t_d:8.2f} s   peak {m_d / 2**20:9.1f} MiB")
    print(f"  ratio dense / chunked: time {t_d / t_c:.1f}x, peak memory {m_d / m_c:.1f}x")
    print(f"  same partners: {np.mean(best_c == best_d):.4f}; max |corr difference| "
          f"{np.abs(corr_c - corr_d).max():.2e}; planted partners found {np.mean(best_c[:half] == planted):.4f}")

    # the published scale: chunked alone
    n_big, f_big = (200_000, 4096) if args.quick else (1_000_000, 16_384)
    A, B, planted = make(n_big, f_big, k, seed=1)
    data = (A.data.nbytes + A.indices.nbytes + A.indptr.nbytes) * 2
    (best, corr), t_b, m_b = measure(lambda: best_matches(A, B))
    dense_bytes = 2 * n_big * f_big * 8
    print(f"large: {n_big:,} units, {f_big:,} x {f_big:,} features, k = {k} "
          f"(sparse inputs {data / 2**20:.0f} MiB, held outside the measurement)")
    print(f"  chunked sparse : {t_b:8.2f} s   peak {m_b / 2**20:9.1f} MiB  "
          f"({n_big * k / t_b / 1e6:.2f} M active entries per second per side)")
    print(f"  the dense reference would hold {dense_bytes / 2**30:,.0f} GiB of z-scores "
          f"({dense_bytes / m_b:,.0f}x the chunked peak)")
    print(f"  planted partners found {np.mean(best[:f_big // 2] == planted):.4f}")
    svcca_null(n_pairs=2000 if args.quick else 4000)


def svcca_null(n_pairs: int, d_a: int = 576, d_b: int = 640, n_shuffles: int = 20) -> None:
    """SVCCA with its row-shuffle null on paired decoder rows of the embedded models' shapes:
    ``similarity_null`` (reduced bases from the d x d Gram matrix) against the same null with
    the bases from the SVD of the rows (the reference: ``numpy.linalg.svd``)."""
    from analysis import universality as U

    rng = np.random.default_rng(2)
    X = rng.standard_normal((n_pairs, 64)) @ rng.standard_normal((64, d_a)) + 0.3 * rng.standard_normal((n_pairs, d_a))
    Y = X[:, :d_a] @ rng.standard_normal((d_a, d_b)) / 24 + 0.5 * rng.standard_normal((n_pairs, d_b))

    def reference():
        def basis(M):
            M = M - M.mean(0)
            u, sv, _ = np.linalg.svd(M, full_matrices=False)
            k = int(np.searchsorted(np.cumsum(sv ** 2) / (sv ** 2).sum(), 0.99 - 1e-12) + 1)
            return u[:, :k]
        ux, uy = basis(X), basis(Y)
        r = np.random.default_rng(0)
        obs = U._cca_mean(ux, uy)
        return obs, np.array([U._cca_mean(ux, uy[r.permutation(len(uy))]) for _ in range(n_shuffles)])

    t = time.perf_counter()
    got = U.similarity_null(X, Y, "svcca", n_shuffles=n_shuffles, seed=0)
    t_g = time.perf_counter() - t
    t = time.perf_counter()
    obs, null = reference()
    t_r = time.perf_counter() - t
    print(f"SVCCA with a {n_shuffles}-shuffle null, {n_pairs:,} pairs of {d_a} / {d_b} dimensions")
    print(f"  Gram-matrix bases: {t_g:8.2f} s   SVD reference: {t_r:8.2f} s   ratio {t_r / t_g:.1f}x")
    print(f"  |value difference| {abs(got['value'] - obs):.1e}; max |null difference| "
          f"{np.abs(got['null'] - null).max():.1e}")


if __name__ == "__main__":
    main()
