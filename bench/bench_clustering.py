"""Clustering sweep of METHODS 1: published per-k SpectralClustering vs one embedding per affinity.

For every affinity (five co-occurrence ones + geometry) and every k of the sweep, the
reference recomputes ``SpectralClustering(affinity='precomputed', assign_labels='kmeans',
random_state=42)`` per k, as the published code did; ``analysis.brain.spectral_sweep``
computes the spectral embedding once (max k eigenvectors) and runs k-means per k on it.
Prints wall time of both, the speed-up, and the agreement (AMI between the two label sets)
per k.

Data: planted hierarchical lobes (topics nested 2 -> 4 -> ... -> 128), so clusterings at
every k have something to find.

    python bench/bench_clustering.py            # 2,048 features, k <= 256 (a few minutes)
    python bench/bench_clustering.py --quick    # 600 features, k <= 64
    python bench/bench_clustering.py --full     # 16,384 features, all k (hours on 2 cores)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.metrics import adjusted_mutual_info_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from analysis import brain  # noqa: E402


def planted(n_features: int, n_blocks: int, d: int = 64, depth: int = 7, seed: int = 0):
    """Co-occurrence counts and decoder rows with nested topics (2**depth leaves)."""
    rng = np.random.default_rng(seed)
    leaf = rng.integers(0, 2 ** depth, n_features)
    topic = rng.integers(0, 2 ** depth, n_blocks)
    p = np.full((n_blocks, n_features), 0.002)
    for level in range(1, depth + 1):   # sharing a deeper ancestor raises the rate
        shift = depth - level
        p += 0.02 * ((leaf[None, :] >> shift) == (topic[:, None] >> shift))
    B = sp.csr_matrix(rng.random((n_blocks, n_features)) < p, dtype=np.float64)
    C = (B.T @ B).toarray()
    W = np.zeros((n_features, d))
    for level in range(1, depth + 1):
        centres = rng.standard_normal((2 ** level, d)) * (1.5 ** (depth - level)) * 0.5
        W += centres[leaf >> (depth - level)]
    W += rng.standard_normal((n_features, d)) * 0.5
    return C, n_blocks, W


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--affinities", default=",".join([*brain.AFFINITIES, "geometry"]))
    args = ap.parse_args()
    if args.full:
        F, max_k = 16384, 1024
    elif args.quick:
        F, max_k = 600, 64
    else:
        F, max_k = 2048, 256
    ks = [k for k in brain.KS if k <= max_k]
    C, T, W = planted(F, n_blocks=4 * F)
    live = ~brain.dead_features(C)
    idx = np.flatnonzero(live)
    print(f"features {F} (live {idx.size}), blocks {T}, ks {ks}")
    total_ref = total_new = 0.0
    agree_all = []
    for name in args.affinities.split(","):
        A = brain.geometry_affinity(W) if name == "geometry" else brain.cooccurrence_affinity(C, T, name)
        A = A[np.ix_(idx, idx)]
        t0 = time.perf_counter()
        ref = brain.spectral_sweep(A, ks, per_k=True)
        t_ref = time.perf_counter() - t0
        t0 = time.perf_counter()
        new = brain.spectral_sweep(A, ks)
        t_new = time.perf_counter() - t0
        agree = [adjusted_mutual_info_score(r, n) for r, n in zip(ref, new)]
        agree_all += agree
        total_ref += t_ref
        total_new += t_new
        print(f"{name:16s} per-k {t_ref:8.1f}s  one-embedding {t_new:8.1f}s  speed-up {t_ref / t_new:5.1f}x  "
              f"agreement (AMI) per k: " + " ".join(f"{a:.2f}" for a in agree), flush=True)
    print(f"TOTAL per-k {total_ref:.1f}s  one-embedding {total_new:.1f}s  speed-up {total_ref / total_new:.1f}x  "
          f"agreement min {min(agree_all):.2f} median {np.median(agree_all):.2f}")


if __name__ == "__main__":
    main()
