"""Overhead of SAE encoding plus every statistic, as a fraction of the bare model forward pass.

    python bench/bench_overhead.py [--quick] [--model smollm2] [--dtype float32] [--width 2048]
                                   [--layers 3 10 17 24]

Runs an embedded model on the same batches of the default corpus twice: once the bare
forward pass to the deepest layer (the reference), once the capture + SAE encoding of every
layer + ``LayerStats.update`` (firing, co-occurrence, histograms, contexts, tokens). Prints
(time with statistics - bare time) / bare time. The SAEs are random TopK SAEs of the given
width (the cost does not depend on the weights) and encode in float32 whatever the model's
dtype, as the pipeline does. Aim: <= 15 % on CPU in float32. ``bench_dtype.py`` reuses
``measure`` per dtype.
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

LAYERS = {"smollm2": [3, 10, 17, 24], "gemma3-270m": [2, 6, 10, 14]}


def measure(lm, tc, layers, width: int = 2048, k: int = 32, batch: int = 8,
            repeats: int = 2) -> tuple[float, float]:
    """Best-of-``repeats`` seconds of (bare forward to the deepest layer, forward + SAE encode +
    statistics of every layer) over all documents of ``tc``, in batches of ``batch``."""
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

    batches = _batches(tc, batch)
    hooks = [hook_name(L) for L in layers]
    torch.manual_seed(0)
    saes = [TopKSAE(TopKSAEConfig(d_in=lm.d_model, d_sae=width, k=k,
                                  metadata=SAEMetadata(hook_name=h))) for h in hooks]
    vocab = _vocab(lm) if len(lm.tokenizer) <= 65_536 else [str(i) for i in range(len(lm.tokenizer))]
    deepest = [hook_name(max(layers))]
    lm.capture(_batch_ids(tc, *batches[0], lm.bos_token_id)[0][:, :16], hooks)   # warm up

    def bare():
        t = time.perf_counter()
        for start, stop in batches:
            lm.capture(_batch_ids(tc, start, stop, lm.bos_token_id)[0], deepest)
        return time.perf_counter() - t

    def full():
        stats = [LayerStats(width, tc.subsets, vocab, threshold=0.0, block_size=128) for _ in hooks]
        t = time.perf_counter()
        for start, stop in batches:
            ids, lens = _batch_ids(tc, start, stop, lm.bos_token_id)
            acts = lm.capture(ids, hooks)
            with torch.no_grad():
                for h, sae, st in zip(hooks, saes, stats):
                    f = sae.encode(_flat(acts[h], lens).float())
                    st.update(_unflat(f, lens), ids[:, 1:], torch.arange(start, stop),
                              torch.from_numpy(tc.subset_ids[start:stop].astype("int64")), lens)
        for st in stats:
            st.finalize()
        return time.perf_counter() - t

    # interleaved, best of each, so a busy machine hurts both alike
    t_bare, t_full = float("inf"), float("inf")
    for _ in range(repeats):
        t_bare = min(t_bare, bare())
        t_full = min(t_full, full())
    return min(t_bare, bare()), t_full


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer tokens and two layers")
    ap.add_argument("--model", default="smollm2", choices=sorted(LAYERS))
    ap.add_argument("--dtype", default="float32", choices=["auto", "float32", "bfloat16", "float16"])
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--layers", type=int, nargs="*", default=None, help="default: four across the model")
    ap.add_argument("--tokens", type=int, default=16_384)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    layers = args.layers or LAYERS[args.model]
    if args.quick:
        args.tokens, layers = 4096, layers[:2]
    if args.threads:
        torch.set_num_threads(args.threads)

    lm = load_model(args.model, device="cpu", dtype=args.dtype)
    tc = tokenize_corpus(open_corpus("default"), lm.tokenize, seq_len=512, max_tokens=args.tokens, progress=False)
    t_bare, t_full = measure(lm, tc, layers, args.width, args.k)
    n = tc.n_tokens
    print(f"{lm.name} {str(lm.dtype).removeprefix('torch.')}: tokens {n}, layers {layers}, width {args.width}, "
          f"k {args.k}, threads {torch.get_num_threads()}")
    print(f"bare forward (to layer {max(layers)}): {t_bare:.2f} s ({n / t_bare:.0f} tok/s)")
    print(f"forward + SAE encode + statistics:       {t_full:.2f} s ({n / t_full:.0f} tok/s)")
    print(f"overhead ratio (full - bare) / bare: {(t_full - t_bare) / t_bare:.3f}  (aim <= 0.15 in float32)")


if __name__ == "__main__":
    main()
