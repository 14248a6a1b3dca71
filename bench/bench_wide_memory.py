"""Peak memory and time of co-occurrence and clustering at 16k, 65k, 262k and 1M features.

The wide path (analysis/wide.py, issue 12) against the published dense path as reference
where the dense one can run on this machine (24 GB shared by three people): each width runs
in its own process, on one synthetic layer of planted lobes drawn sparsely (each feature
present in ~12 blocks of its lobe's topic, one block per feature; analysis.synthetic), and
prints per step the wall time and the peak resident memory of that process (sampled every
20 ms, above what the process held before the step).

* co-occurrence - wide: ``wide.top_partners`` (top 32 partners per feature, blocked sparse
  product); dense: the full ``Bᵀ B`` as the dense accumulator of precompute.cooccur holds it,
  a float32 [F, F] (4 F² bytes);
* clustering (phi, k = 2..64 or ``--ks``) - wide: phi on the stored pairs, 15-NN graph, sparse spectral
  embedding, k-means per k; dense: ``brain.cooccurrence_affinity`` float32 + Lanczos
  embedding + k-means (the published path at 16k, issue 11);
* precompute co-occurrence (``--stats``): ``precompute.cooccur.LayerStats`` fed the same
  synthetic activations at each width (Zipf(1) feature frequencies, ``--l0`` firing features
  per token, 4-token blocks, so a block holds the few hundred features of a real 256-token
  block at a 64th of the activations to feed), once accumulating the full C (the sparse path
  every layer above 16,384 features took before) and once keeping block presences and forming
  the top 32 partners at the end (the wide path now); time, peak memory (VmHWM, the 268 MB
  activation buffer at 262k included) and what the co-occurrence holds before ``finalize``;
* UMAP (``--umap``, 32,768 features): fitted on a 5,000-feature sample and extended by
  nearest-sample interpolation or by umap's ``transform``; time, and for both the planted
  lobes' separation in 3-D (silhouette of a 5,000-feature subsample) and how many of each
  feature's 10 nearest 3-D neighbours are among its 10 nearest decoder-cosine ones.

    python bench/bench_wide_memory.py                       # 16k, 65k, 262k, 1M
    python bench/bench_wide_memory.py --widths 16384 65536
    python bench/bench_wide_memory.py --widths 1048576 --ks 2 4 8 16   # quicker at 1M
    python bench/bench_wide_memory.py --umap                # the UMAP extension comparison
    python bench/bench_wide_memory.py --stats               # precompute co-occurrence, 16k-262k
    python bench/bench_wide_memory.py --stats --quick       # 65k, 512 blocks
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench_wide import Peak  # noqa: E402  (peak RSS sampled by a thread; same folder)

KS = [2, 4, 8, 16, 32, 64]
DENSE_MAX = 16384        # 4 F^2 bytes: 1 GiB at 16k, 17 GB at 65k (this machine: 24 GB, shared)


def layer(F: int, d: int = 64, n_lobes: int = 4, seed: int = 0):
    from analysis.synthetic import _sparse_presence

    rng = np.random.default_rng(seed)
    lobes = rng.integers(0, n_lobes, F)
    rate = np.clip(rng.lognormal(0.0, 0.5, size=F), 0.2, 3.0)
    topic = rng.integers(0, n_lobes, size=F)          # one block per feature
    B = _sparse_presence(rng, lobes, rate, topic, n_lobes, (12.0, 0.3))
    return lobes, B


def child(F: int, dense: bool, ks=KS) -> dict:
    import scipy.sparse as sp
    from sklearn.metrics import adjusted_mutual_info_score as ami

    from analysis import brain, wide

    peak = Peak()
    out: dict = {"F": F}
    lobes, B = layer(F)
    T = B.shape[0]
    base = peak.reset()
    out["input_gb"] = base / 1e9
    t = time.perf_counter()
    C = wide.top_partners(B, 32)
    out["wide_cooc"] = (time.perf_counter() - t, peak.reset() / 1e9, int(C.nnz))
    live = np.asarray(C.diagonal()) > 0
    t = time.perf_counter()
    G = wide.knn_graph(wide.pair_affinity(C, T, "phi", live), 15)
    lab_w = wide.sparse_spectral_sweep(G, ks, 42, 1)
    out["wide_cluster"] = (time.perf_counter() - t, peak.reset() / 1e9)
    out["wide_ami_planted_k4"] = float(ami(lobes[live], lab_w[1]))
    del G
    if dense:
        Bf = sp.csr_matrix(B, dtype=np.float32)
        t = time.perf_counter()
        Cd = (Bf.T @ Bf).toarray()                    # the dense accumulator's [F, F] float32
        out["dense_cooc"] = (time.perf_counter() - t, peak.reset() / 1e9)
        Cs = sp.csr_matrix(Cd.astype(np.int32))
        del Cd
        t = time.perf_counter()
        A = brain.cooccurrence_affinity(Cs, T, "phi", live, np.float32)
        lab_d = brain.spectral_sweep(A, ks, 42, 10, solver="lanczos")
        del A
        out["dense_cluster"] = (time.perf_counter() - t, peak.reset() / 1e9)
        out["dense_ami_planted_k4"] = float(ami(lobes[live], lab_d[1]))
        out["ami_wide_dense"] = {k: float(ami(lab_d[r], lab_w[r])) for r, k in enumerate(ks)}
    return out


def umap_child(F: int, n_sample: int) -> dict:
    from sklearn.metrics import silhouette_score

    from analysis import wide

    rng = np.random.default_rng(0)
    lobes = rng.integers(0, 8, F)
    W = (rng.normal(size=(8, 64))[lobes] * 0.6 + rng.normal(size=(F, 64))).astype(np.float32)
    out = {"F": F, "n_sample": n_sample}
    sub = rng.choice(F, 5000, replace=False)
    U = W / np.linalg.norm(W, axis=1, keepdims=True)
    q = sub[:500]
    cos = U[q] @ U.T
    cos[np.arange(q.size), q] = -np.inf
    near_d = np.argpartition(-cos, 10, axis=1)[:, :10]
    for extend in ("interpolate", "transform"):
        t = time.perf_counter()
        Y = wide.umap_sampled(W, n_sample, extend)
        dist = ((Y[q, None, :] - Y[None, :, :]) ** 2).sum(-1)
        dist[np.arange(q.size), q] = np.inf
        near_y = np.argpartition(dist, 10, axis=1)[:, :10]
        out[extend] = {"seconds": time.perf_counter() - t,
                       "silhouette_planted": float(silhouette_score(Y[sub], lobes[sub])),
                       "knn_kept_10": float(np.mean([np.intersect1d(a, b).size / 10 for a, b in zip(near_d, near_y)]))}
    return out


def stats_child(F: int, n_blocks: int, path: str, l0: int = 75) -> dict:
    """LayerStats over ``n_blocks`` blocks of synthetic activations; ``path`` "full" (the whole C
    accumulated) or "wide" (presences kept, top partners at finalize)."""
    import torch

    from precompute.cooccur import LayerStats

    peak = Peak()
    bs, N, T = 4, 4, 64                               # 64 blocks per update
    rng = np.random.default_rng(0)
    order = rng.permutation(F)
    cdf = np.cumsum(1.0 / np.arange(1, F + 1))
    cdf /= cdf[-1]                                    # Zipf(1) over features in random order
    paths = {"full": dict(dense_max_features=0, wide_from=F), "wide": dict(wide_from=min(F - 1, 16384))}
    # few bins and contexts: their [F, ...] arrays would otherwise dominate the update time
    st = LayerStats(F, ["a"], [str(i) for i in range(100)], block_size=bs, hist_bins=8, top_k_contexts=1,
                    context_left=0, context_right=0, max_stored_blocks=1000, **paths[path])
    acts = torch.zeros(N, T, F)
    out: dict = {"F": F, "path": path, "input_gb": acts.numel() * 4 / 1e9}
    t_feed = 0.0
    for i in range(n_blocks // (N * T // bs)):
        acts.zero_()
        f = order[np.searchsorted(cdf, rng.random((N * T, l0)))]
        acts.view(N * T, F).numpy()[np.arange(N * T)[:, None], f] = 1.0 + rng.exponential(1.0, (N * T, l0))
        t = time.perf_counter()
        st.update(acts, torch.from_numpy(rng.integers(0, 100, (N, T))), N * i + np.arange(N), np.zeros(N, int))
        t_feed += time.perf_counter() - t
    st._flush_cooc()
    C = st.cooc_csr                                   # what the co-occurrence holds now
    held = (sum(a.nbytes for a in st.pres_features + st.pres_sizes) if st.wide
            else C.data.nbytes + C.indices.nbytes + C.indptr.nbytes)
    out.update(feed=(t_feed, peak.reset() / 1e9), held_bytes=int(held), pairs=int(st.cooc_csr.nnz),
               presences=int(sum(a.size for a in st.pres_features)))
    t = time.perf_counter()
    r = st.finalize()
    out.update(finalize=(time.perf_counter() - t, peak.reset() / 1e9), n_blocks=r.n_blocks, cooc_nnz=int(r.cooc.nnz),
               presences_per_block=float(r.blocks.sum(1).mean()))
    # VmHWM: this process's own peak (ru_maxrss would count a parent's pages at fork too)
    hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM")][0].split()[1]
    out["vmhwm_gb"] = int(hwm) * 1024 / 1e9
    return out


def stats_table(widths, n_blocks: int, l0: int) -> None:
    print(f"LayerStats co-occurrence, {n_blocks} blocks, {l0} firing features per token")
    print(f"{'features':>9} {'path':<6} {'feed s':>7} {'finalize s':>10} {'held GB':>8} {'peak GB':>8}  notes")
    for F in widths:
        res = {}
        for path in ("full", "wide"):
            r = subprocess.run([sys.executable, __file__, "--stats-child", str(F), "--path", path,
                                "--blocks", str(n_blocks), "--l0", str(l0)], capture_output=True, text=True)
            if r.returncode != 0:
                print(f"{F:>9} {path:<6} failed: {(r.stderr.strip().splitlines() or [r.returncode])[-1]}")
                continue
            o = res[path] = json.loads(r.stdout.strip().splitlines()[-1])
            what = (f"{o['pairs']:,} entries accumulated" if path == "full"
                    else f"{o['presences']:,} presences kept; {o['cooc_nnz'] / F:.0f} stored entries per feature")
            print(f"{F:>9} {path:<6} {o['feed'][0]:7.1f} {o['finalize'][0]:10.1f} {o['held_bytes'] / 1e9:8.3f} "
                  f"{o['vmhwm_gb']:8.2f}  {what}; {o['presences_per_block']:.0f} features per block")
        if len(res) == 2:
            f, w = res["full"], res["wide"]
            seconds = {p: o["feed"][0] + o["finalize"][0] for p, o in res.items()}
            print(f"{F:>9} {'':<6} full / wide: time {seconds['full'] / seconds['wide']:.1f}x, "
                  f"peak {f['vmhwm_gb'] / w['vmhwm_gb']:.1f}x (activation buffer {w['input_gb']:.2f} GB in both)")
        sys.stdout.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", type=int, nargs="+", default=[16384, 65536, 262144, 1048576])
    ap.add_argument("--umap", action="store_true", help="compare the two UMAP extensions (32k features)")
    ap.add_argument("--ks", type=int, nargs="+", default=KS, help="cluster counts (2 and 4 at least)")
    ap.add_argument("--quick", action="store_true", help="4,096 (with the dense reference) and 65,536 features, k <= 8")
    ap.add_argument("--stats", action="store_true", help="precompute co-occurrence: full C against top partners")
    ap.add_argument("--blocks", type=int, default=2048, help="--stats: blocks fed")
    ap.add_argument("--l0", type=int, default=75, help="--stats: firing features per token")
    ap.add_argument("--stats-child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--path", default="wide", help=argparse.SUPPRESS)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--umap-child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stats_child:
        print(json.dumps(stats_child(args.stats_child, args.blocks, args.path, args.l0)))
        return
    if args.stats:
        if args.quick:
            args.widths, args.blocks = [65536], 512
        # up to 262k: the activation buffer alone is 1 MB a token there (4 at 1M)
        stats_table([F for F in args.widths if F <= 262144], args.blocks, args.l0)
        return
    if args.quick:
        args.widths, args.ks = [4096, 65536], [2, 4, 8]
    if args.child:
        print(json.dumps(child(args.child, args.child <= DENSE_MAX, args.ks)))
        return
    if args.umap_child:
        print(json.dumps(umap_child(args.umap_child, 5000)))
        return
    if args.umap:
        r = subprocess.run([sys.executable, __file__, "--umap-child", "32768"], capture_output=True, text=True)
        print(r.stdout.strip().splitlines()[-1] if r.returncode == 0 else r.stderr[-2000:])
        return
    print(f"k = {args.ks}")
    print(f"{'features':>9} {'step':<28} {'time s':>8} {'peak GB':>8}")
    for F in args.widths:
        r = subprocess.run([sys.executable, __file__, "--child", str(F), "--ks", *map(str, args.ks)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            print(f"{F:>9} failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
            continue
        o = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"{F:>9} {'input (blocks, sparse)':<28} {'':>8} {o['input_gb']:8.2f}")
        print(f"{F:>9} {'co-occurrence, wide':<28} {o['wide_cooc'][0]:8.1f} {o['wide_cooc'][1]:8.2f}"
              f"   ({o['wide_cooc'][2] / F:.0f} stored entries per feature)")
        print(f"{F:>9} {'clustering, wide (phi)':<28} {o['wide_cluster'][0]:8.1f} {o['wide_cluster'][1]:8.2f}"
              f"   AMI to planted lobes (k=4) {o['wide_ami_planted_k4']:.3f}")
        if "dense_cooc" in o:
            for step in ("cooc", "cluster"):
                w, d = o[f"wide_{step}"], o[f"dense_{step}"]
                name = "co-occurrence" if step == "cooc" else "clustering (phi)"
                print(f"{F:>9} {name + ', dense':<28} {d[0]:8.1f} {d[1]:8.2f}"
                      f"   dense / wide: time {d[0] / w[0]:.1f}x, peak {d[1] / w[1]:.1f}x")
            print(f"{F:>9} {'':<28} AMI to planted (k=4) {o['dense_ami_planted_k4']:.3f}; "
                  f"AMI wide vs dense per k: " + ", ".join(f"{k}: {v:.2f}" for k, v in o["ami_wide_dense"].items()))
        else:
            print(f"{F:>9} {'dense path':<28} cannot run here: one [F, F] float32 is {4 * F * F / 1e9:.0f} GB")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
