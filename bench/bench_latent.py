"""Latent capture: overhead against the bare forward pass, and bytes on disk per captured token.

    python bench/bench_latent.py [--quick] [--model smollm2] [--dtype float32] [--docs 16] [--seq-len 512]

Runs an embedded model over the same documents twice, interleaved, best of each: the bare
forward pass up to the final norm (the reference: what any capture must pay), and the same
pass with every latent hook consuming its tensor (``precompute.latent``: norms of every
position, streamed PCA moments, the sample's vectors, per-position sums). Then writes the
latent files of those documents into a model-only atlas with the default sample sizes and
divides their bytes by the captured tokens, against storing every capture of every token in
float16 (the ratio the size budget buys). Both ratios come from this run.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from precompute.latent import (LatentConfig, _Accumulator, _documents, _sample, capture_latent,  # noqa: E402
                               latent_modules, model_atlas, run_latent)
from precompute.models import load_model  # noqa: E402


def measure(lm, tokens: np.ndarray, batch: int = 8, repeats: int = 2) -> tuple[float, float]:
    """Best-of-``repeats`` seconds of (bare forward to the final norm, forward + latent hooks)."""
    mods = latent_modules(lm)
    sample = _sample(tokens, 1024, 0)
    batches = [(d0, min(d0 + batch, len(tokens))) for d0 in range(0, len(tokens), batch)]

    def ids(d0, d1):
        return torch.from_numpy(np.where(tokens[d0:d1] >= 0, tokens[d0:d1], lm.bos_token_id).astype(np.int64))

    def bare():
        t = time.perf_counter()
        for d0, d1 in batches:
            capture_latent(lm, ids(d0, d1), lambda name, h: None, mods)   # same hooks, nothing done
        return time.perf_counter() - t

    def full():
        acc = _Accumulator(lm.n_layers, lm.d_model, tokens, sample)
        t = time.perf_counter()
        for d0, d1 in batches:
            acc.start(d0, d1)
            capture_latent(lm, ids(d0, d1), acc, mods)
        return time.perf_counter() - t

    capture_latent(lm, ids(0, 1)[:, :16], lambda name, h: None, mods)   # warm up
    t_bare, t_full = float("inf"), float("inf")
    for _ in range(repeats):
        t_bare = min(t_bare, bare())
        t_full = min(t_full, full())
    return t_bare, t_full


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="8 documents of 256 positions, no UMAP")
    ap.add_argument("--model", default="smollm2", choices=["smollm2", "gemma3-270m"])
    ap.add_argument("--dtype", default="float32", choices=["auto", "float32", "bfloat16"])
    ap.add_argument("--docs", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.quick:
        args.docs, args.seq_len = 8, 256
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model(args.model, device="cpu", dtype=args.dtype)
    cfg = LatentConfig(n_docs=args.docs, seq_len=args.seq_len, corpus="default",
                       umap_tokens=0 if args.quick else 256)
    tokens, _ = _documents(cfg, lm)
    n_tok = int((tokens >= 0).sum())
    t_bare, t_full = measure(lm, tokens)
    print(f"{lm.name} {str(lm.dtype).removeprefix('torch.')}: {len(tokens)} documents x {args.seq_len} positions "
          f"({n_tok} tokens), threads {torch.get_num_threads()}")
    print(f"bare forward to the final norm: {t_bare:.2f} s ({n_tok / t_bare:.0f} tok/s)")
    print(f"forward + latent hooks:         {t_full:.2f} s ({n_tok / t_full:.0f} tok/s)")
    print(f"capture overhead ratio (full - bare) / bare: {(t_full - t_bare) / t_bare:.3f}")

    tmp = Path(tempfile.mkdtemp(prefix="bench_latent-"))
    try:
        model_atlas(tmp / "atlas", lm)
        t = time.perf_counter()
        s = run_latent(tmp / "atlas", cfg, lm=lm)
        t_stage = time.perf_counter() - t
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    every = len(s["captures"]) * lm.d_model * 2
    print(f"whole stage (capture, fits, UMAP, separation, write): {t_stage:.1f} s")
    print(f"on disk: {s['bytes'] / 2**20:.2f} MB = {s['bytes_per_token']:.0f} bytes per captured token; every capture "
          f"in float16 would be {every} bytes per token: ratio {s['bytes_per_token'] / every:.4f}")


if __name__ == "__main__":
    main()
