"""Forward speed of the embedded models in float32, bfloat16 and float16, and the statistics
pass's cost in each.

    python bench/bench_dtype.py [--quick] [--models smollm2 gemma3-270m]
                                [--dtypes float32 bfloat16 float16] [--threads N]

For each model, the same batches of real corpus text (full rows: documents of at least
``--seq`` tokens, cut there; default 4 batches of 8 x 512) run through every block in each
dtype - the atlas never needs the logits, so the LM head (for Gemma a 640 x 262,144 matrix)
is left out, as ``LoadedModel.capture`` does. The dtypes' passes are interleaved and the best
of ``--repeats`` is kept, so a busy machine slows all of them alike. Prints tokens/s, each
dtype's speed relative to float32, whether the hidden states stayed finite (Gemma's residual
stream exceeds float16's range), and the statistics overhead of ``bench_overhead.measure``
(SAE encoding + ``LayerStats`` on the model's default SAE layers, as a fraction of the bare
forward in the same dtype). ``--quick``: float32 and bfloat16, one batch of 4 x 128.
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import precompute.models as models  # noqa: E402
from bench_overhead import measure  # noqa: E402
from precompute.corpus import TokenizedCorpus, open_corpus, tokenize_corpus  # noqa: E402
from precompute.models import cpu_has_native_bf16, hook_name, load_model  # noqa: E402
from precompute.pipeline import _batch_ids  # noqa: E402
from precompute.train_saes import DEFAULT_LAYERS  # noqa: E402


def full_rows(lm, n_rows: int, seq: int) -> TokenizedCorpus:
    """The first ``n_rows`` corpus documents of at least ``seq`` tokens, cut to ``seq``: no
    padding, so every timed position is a real token."""
    tc = tokenize_corpus(open_corpus("default"), lm.tokenize, seq_len=seq, max_docs=4 * n_rows,
                         progress=False)
    keep = np.flatnonzero(tc.lengths() == seq)[:n_rows]
    if len(keep) < n_rows:
        raise SystemExit(f"only {len(keep)} corpus documents have {seq} tokens; lower --seq or --batch")
    tokens = np.concatenate([tc.tokens[tc.offsets[i]:tc.offsets[i + 1]] for i in keep])
    return TokenizedCorpus(tokens, np.arange(n_rows + 1, dtype=np.int64) * seq,
                           tc.subset_ids[keep], tc.subsets)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one small batch, float32 and bfloat16")
    ap.add_argument("--models", nargs="+", default=["smollm2", "gemma3-270m"])
    ap.add_argument("--dtypes", nargs="+", default=None, choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-stats", action="store_true", help="skip the statistics-overhead pass")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.quick:
        args.batch, args.seq, args.batches, args.repeats = 4, 128, 1, 1
    dtypes = args.dtypes or (["float32", "bfloat16"] if args.quick else ["float32", "bfloat16", "float16"])
    if "float32" not in dtypes:
        dtypes = ["float32"] + dtypes          # the reference of every ratio
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"threads {torch.get_num_threads()}, native bf16 CPU: {cpu_has_native_bf16()}, "
          f"{args.batches} batch(es) of {args.batch} x {args.seq} tokens, best of {args.repeats}")

    for name in args.models:
        lms = {}
        for dt in dtypes:
            t = time.perf_counter()
            lms[dt] = load_model(name, device="cpu", dtype=dt)
            print(f"{name} {dt}: loaded in {time.perf_counter() - t:.1f} s")
        ref = lms["float32"]
        tc = full_rows(ref, args.batch * args.batches, args.seq)
        batches = [_batch_ids(tc, i, i + args.batch, ref.bos_token_id)[0]
                   for i in range(0, tc.n_docs, args.batch)]
        last = [hook_name(ref.n_layers - 1)]
        finite = {}
        for dt, lm in lms.items():   # warm up: the first call builds the kernels of each dtype
            finite[dt] = bool(torch.isfinite(lm.capture(batches[0], last)[last[0]]).all())
        best = dict.fromkeys(lms, float("inf"))
        for _ in range(args.repeats):
            for dt, lm in lms.items():
                t = time.perf_counter()
                for ids in batches:
                    lm.capture(ids, last)
                best[dt] = min(best[dt], time.perf_counter() - t)
        n = tc.n_tokens
        print(f"{name} forward through all {ref.n_layers} blocks, {n} tokens:")
        for dt in lms:
            note = "" if finite[dt] else "  (non-finite hidden states: unusable)"
            print(f"  {dt:9s} {n / best[dt]:8.0f} tok/s   speed / float32 {best['float32'] / best[dt]:5.2f}{note}")
        if not args.no_stats:
            layers = DEFAULT_LAYERS[name]
            print(f"{name} statistics overhead (SAE width 2048, k 32, layers {layers}; "
                  f"(full - bare) / bare, bare = forward to layer {max(layers)}):")
            for dt, lm in lms.items():
                if not finite[dt]:
                    continue
                t_bare, t_full = measure(lm, tc, layers, batch=args.batch, repeats=args.repeats)
                print(f"  {dt:9s} bare {n / t_bare:8.0f} tok/s, with statistics {n / t_full:8.0f} tok/s, "
                      f"overhead {(t_full - t_bare) / t_bare:.3f}")
        # one model's dtypes in memory at a time
        del lms, ref
        models._CACHE.clear()
        gc.collect()


if __name__ == "__main__":
    main()
