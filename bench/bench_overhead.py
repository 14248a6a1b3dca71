"""Overhead of SAE encoding plus every statistic, as a fraction of the bare model forward pass.

    python bench/bench_overhead.py [--quick] [--width 2048] [--layers 3 10 17 24]

Runs the embedded SmolLM2 on the same batches of the default corpus twice: once the bare
forward pass to the deepest layer (the reference), once the capture + SAE encoding of every
layer + ``LayerStats.update`` (firing, co-occurrence, histograms, contexts, tokens). Prints
(time with statistics - bare time) / bare time. The SAEs are random TopK SAEs of the given
width (the cost does not depend on the weights). Aim: <= 15 % on CPU.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from precompute.cooccur import LayerStats  # noqa: E402
from precompute.corpus import open_corpus, tokenize_corpus  # noqa: E402
from precompute.models import hook_name, load_model  # noqa: E402
from precompute.pipeline import _batch_ids, _batches, _flat, _unflat, _vocab  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer tokens and two layers")
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--layers", type=int, nargs="*", default=[3, 10, 17, 24])
    ap.add_argument("--tokens", type=int, default=16_384)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.quick:
        args.tokens, args.layers = 4096, [3, 10]
    if args.threads:
        torch.set_num_threads(args.threads)
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

    lm = load_model("smollm2", device="cpu")
    tc = tokenize_corpus(open_corpus("default"), lm.tokenize, seq_len=512, max_tokens=args.tokens, progress=False)
    batches = _batches(tc, 8)
    hooks = [hook_name(L) for L in args.layers]
    torch.manual_seed(0)
    saes = [TopKSAE(TopKSAEConfig(d_in=lm.d_model, d_sae=args.width, k=args.k,
                                  metadata=SAEMetadata(hook_name=h))) for h in hooks]
    vocab = _vocab(lm)
    stats = [LayerStats(args.width, tc.subsets, vocab, threshold=0.0, block_size=128) for _ in hooks]
    deepest = [hook_name(max(args.layers))]
    lm.capture(_batch_ids(tc, *batches[0], lm.bos_token_id)[0][:, :16], hooks)   # warm up

    def bare():
        t = time.perf_counter()
        for start, stop in batches:
            lm.capture(_batch_ids(tc, start, stop, lm.bos_token_id)[0], deepest)
        return time.perf_counter() - t

    def full():
        t = time.perf_counter()
        for start, stop in batches:
            ids, lens = _batch_ids(tc, start, stop, lm.bos_token_id)
            acts = lm.capture(ids, hooks)
            with torch.no_grad():
                for h, sae, st in zip(hooks, saes, stats):
                    f = sae.encode(_flat(acts[h], lens))
                    st.update(_unflat(f, lens), ids[:, 1:], torch.arange(start, stop),
                              torch.from_numpy(tc.subset_ids[start:stop].astype("int64")), lens)
        for st in stats:
            st.finalize()
        return time.perf_counter() - t

    # interleave and keep the best of two, so a busy machine hurts both alike
    t_bare, t_full = min(bare(), bare()), None
    t_full = min(full(), full())
    t_bare = min(t_bare, bare())
    n = tc.n_tokens
    print(f"tokens {n}, layers {args.layers}, width {args.width}, k {args.k}, threads {torch.get_num_threads()}")
    print(f"bare forward (to layer {max(args.layers)}): {t_bare:.2f} s ({n / t_bare:.0f} tok/s)")
    print(f"forward + SAE encode + statistics:       {t_full:.2f} s ({n / t_full:.0f} tok/s)")
    print(f"overhead ratio (full - bare) / bare: {(t_full - t_bare) / t_bare:.3f}  (aim <= 0.15)")


if __name__ == "__main__":
    main()
