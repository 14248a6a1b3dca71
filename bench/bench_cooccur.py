"""Benchmark: block co-occurrence as in the published code vs precompute.cooccur.LayerStats.

Reference (published approach): for every 256-token block, compute the feature presence
vector b and add its outer product, C += outer(b, b), one block at a time (numpy, int64).
saegeo, measured twice on the same activations:
* "cooccur speedup": LayerStats' co-occurrence path alone (firings -> block presence ->
  buffered, tiled B^T B -> CSR), the like-for-like comparison;
* "all statistics": the full LayerStats.update + finalize (also firing counts, subset counts,
  histograms, top contexts, top tokens, stored blocks).

Inputs: random SAE activations with a realistic sparsity pattern (each token fires L0
features drawn from a Zipf(1) feature-frequency law, values 1 + Exp(1); Zipf(1.2) token ids),
documents of 1,024 tokens after BOS, batches of 8 documents. Generation is not timed. The
co-occurrence counts of all three are checked for equality. On a shared, oversubscribed
machine pass --threads 1: torch's thread pool then stops dominating the small kernels.

    python bench/bench_cooccur.py            # F = 4096, 2048 blocks (the reference takes 1-2 min)
    python bench/bench_cooccur.py --quick    # F = 2048, 256 blocks
    python bench/bench_cooccur.py --device cuda
"""
import argparse
import time

import numpy as np
import torch

from precompute.cooccur import LayerStats, _firing_indices


def make_batch(rng, n_docs, seq_len, F, l0, p):
    """Dense activations [n_docs, seq_len, F] with l0 firing features per token."""
    acts = torch.zeros(n_docs, seq_len, F)
    idx = torch.from_numpy(rng.choice(F, size=(n_docs, seq_len, l0), p=p))
    vals = torch.from_numpy(1.0 + rng.exponential(1.0, size=(n_docs, seq_len, l0))).float()
    acts.scatter_(2, idx, vals)
    tokens = torch.from_numpy(np.minimum(rng.zipf(1.2, size=(n_docs, seq_len)), 32_000) - 1)
    return acts, tokens


def reference_update(C, acts, block_size, threshold):
    """Published approach: one block's outer product at a time."""
    a = acts.numpy()
    for d in range(a.shape[0]):
        for start in range(0, a.shape[1] - block_size + 1, block_size):
            b = (a[d, start:start + block_size] > threshold).any(0).astype(np.int64)
            C += np.outer(b, b)


def saegeo_cooc(stats, acts, doc_ids):
    """LayerStats' co-occurrence path alone (firings -> block presence -> buffered B^T B)."""
    N, T, F = acts.shape
    flat = _firing_indices(acts, stats.threshold)
    nt = flat // F
    n = nt // T
    lengths = torch.full((N,), T, device=acts.device)
    stats._update_blocks(n, nt - n * T, flat - nt * F, torch.zeros(N, dtype=torch.int64, device=acts.device),
                         lengths, doc_ids.to(acts.device))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small size (F=2048, 256 blocks)")
    ap.add_argument("--features", type=int, default=None)
    ap.add_argument("--blocks", type=int, default=None)
    ap.add_argument("--l0", type=int, default=40, help="features firing per token")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    F = args.features or (2048 if args.quick else 4096)
    n_blocks = args.blocks or (256 if args.quick else 2048)
    seq_len, block_size, n_docs, threshold = 1024, 256, 8, 1.0
    blocks_per_batch = n_docs * (seq_len // block_size)
    n_batches = max(1, n_blocks // blocks_per_batch)

    p = 1.0 / np.arange(1, F + 1)
    p /= p.sum()
    rng = np.random.default_rng(0)
    vocab = [f"tok{i}" for i in range(32_000)]
    make = lambda: LayerStats(F, ["a", "b"], vocab, threshold=threshold,  # noqa: E731
                              block_size=block_size, device=args.device)
    cooc_only, stats = make(), make()
    C_ref = np.zeros((F, F), np.int64)
    t_ref = t_cooc = t_all = 0.0
    density = []
    for i in range(n_batches):
        acts, tokens = make_batch(rng, n_docs, seq_len, F, args.l0, p)
        t0 = time.perf_counter()
        reference_update(C_ref, acts, block_size, threshold)
        t_ref += time.perf_counter() - t0
        acts_d, tokens_d = acts.to(args.device), tokens.to(args.device)
        doc_ids = torch.arange(i * n_docs, (i + 1) * n_docs)
        _sync(args.device)
        t0 = time.perf_counter()
        saegeo_cooc(cooc_only, acts_d, doc_ids)
        _sync(args.device)
        t1 = time.perf_counter()
        stats.update(acts_d, tokens_d, doc_ids, doc_ids % 2)
        _sync(args.device)
        t_cooc += t1 - t0
        t_all += time.perf_counter() - t1
        density.append((acts.view(-1, block_size, F) > threshold).any(1).float().mean().item())
    t0 = time.perf_counter()
    C_new = cooc_only.finalize().cooc
    t_cooc += time.perf_counter() - t0
    t0 = time.perf_counter()
    result = stats.finalize()
    t_all += time.perf_counter() - t0

    n_expected = n_batches * blocks_per_batch
    identical = (result.n_blocks == n_expected and np.array_equal(C_new.toarray(), C_ref)
                 and np.array_equal(result.cooc.toarray(), C_ref))
    n_tok = n_batches * n_docs * seq_len
    print(f"F={F}, blocks={result.n_blocks}, tokens={n_tok}, L0={args.l0}, "
          f"features present per block: {np.mean(density):.1%}, device={args.device}, "
          f"torch threads={torch.get_num_threads()}")
    print(f"all statistics (LayerStats.update + finalize): {t_all:.2f} s, {n_tok / t_all:,.0f} "
          f"tokens/s, {t_ref / t_all:.1f}x faster than the reference's co-occurrence alone")
    print(f"cooccur speedup: {t_ref / t_cooc:.1f}x (reference {t_ref:.2f} s, saegeo {t_cooc:.2f} s, "
          f"counts {'identical' if identical else 'DIFFER'})")
    if not identical:
        raise SystemExit(1)


def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
