"""Tokens/s of the statistics pass in one process and on Ray with 1 and 2 workers, same work.

    python bench/bench_distributed.py [--quick] [--tokens 65536] [--layers 8 15]
                                      [--shard-batches 4]

The same corpus, model (SmolLM2, embedded) and shipped SAEs go through stage 3 of the
pipeline (``_statistics``: forward, SAE encode, LayerStats, per-shard partials saved, the
exact merge) three ways: in this process, on a local Ray cluster with 1 worker, and with 2
workers (1 CPU and 1 torch thread each; this process also runs 1 thread), and once more in
this process as a single shard. Printed: tokens/s of each, what the shards cost one process,
the distributed path's overhead against one process (Ray 1 worker time / single
time), and the 2-worker speed-up (Ray 1 worker time / Ray 2 workers time). The Ray times
include starting the workers and loading the model in each (what a run pays), but not
starting the cluster, which happens once before. Each Ray run's merged statistics are checked
equal to the single-process ones (and the one-shard run's too).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from precompute.models import load_model  # noqa: E402
from precompute.pipeline import (PrecomputeConfig, _batches, _resolve_saes, _statistics, _tokenize,  # noqa: E402
                                 threshold_rule)


def spy_on_workers() -> list:
    """The timings ``run_shards`` returns (worker start-up, shards), one per Ray run."""
    import precompute.distributed as dist

    seen, real = [], dist.run_shards

    def spy(*a, **k):
        seen.append(real(*a, **k))
        return seen[-1]
    dist.run_shards = spy
    return seen


def timed(cfg, lm, tc, layers, saes, thresholds) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as work:
        t = time.perf_counter()
        results, _ = _statistics(cfg, lm, tc, _batches(tc, cfg.batch_size), 0, {}, layers,
                                 [s.hook for s in saes], saes, thresholds, Path(work))
        return time.perf_counter() - t, results


def same(a: dict, b: dict) -> bool:
    for L in a:
        for name, x in a[L].files().items():
            y = b[L].files()[name]
            if hasattr(x, "equals"):
                ok = x.equals(y)
            elif hasattr(x, "nnz"):
                ok = (x != y).nnz == 0
            else:
                ok = np.array_equal(x, y)
            if not ok:
                return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="8,192 tokens, one layer (about 2 minutes)")
    ap.add_argument("--tokens", type=int, default=65_536)
    ap.add_argument("--layers", type=int, nargs="+", default=[8, 15])
    ap.add_argument("--shard-batches", type=int, default=4)
    args = ap.parse_args()
    if args.quick:
        args.tokens, args.layers, args.shard_batches = 8192, [8], 1
    import ray
    import torch

    torch.set_num_threads(1)
    base = dict(model="smollm2", saes=["embedded"], layers=args.layers, max_tokens=args.tokens, seq_len=256,
                block_size=64, batch_size=8, shard_batches=args.shard_batches, eval_tokens=4096, threads=1,
                progress=False, out=Path(tempfile.gettempdir()) / "bench_distributed")
    cfg = PrecomputeConfig(**base)
    lm = load_model(cfg.model, cfg.device, cfg.dtype)
    layers, saes = _resolve_saes(cfg, lm)
    thresholds = {L: threshold_rule(cfg.threshold, s.architecture)[0] for L, s in zip(layers, saes)}
    with tempfile.TemporaryDirectory() as tok_dir:
        tc = _tokenize(cfg, lm, Path(tok_dir))
    n_shards = -(-len(_batches(tc, cfg.batch_size)) // cfg.shard_batches)
    print(f"{tc.n_tokens} tokens, layers {layers}, {n_shards} shards of {cfg.shard_batches} batches of "
          f"{cfg.batch_size} documents, model dtype {str(lm.dtype).removeprefix('torch.')}")

    t_single, ref = timed(cfg, lm, tc, layers, saes, thresholds)
    # the whole pass as one shard: what cutting it into shards costs a single process
    t_one, one = timed(PrecomputeConfig(**{**base, "shard_batches": 10 ** 6}), lm, tc, layers, saes, thresholds)
    assert same(ref, one), "the shard size changed the statistics"
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    seen = spy_on_workers()
    try:
        times, start = {}, {}
        for n in (1, 2):
            rcfg = PrecomputeConfig(**base, ray={"address": "local", "workers": n})
            times[n], res = timed(rcfg, lm, tc, layers, saes, thresholds)
            start[n] = seen[-1]["start_s"]
            assert same(ref, res), f"Ray with {n} worker(s) gave other statistics than one process"
    finally:
        ray.shutdown()
    print("wall time of the statistics stage (shards computed, saved, merged); for Ray also without the")
    print("workers' start-up (model and SAEs loaded once per worker, paid once per run):")
    print(f"{'one process, one shard':>24}: {t_one:6.1f} s  {tc.n_tokens / t_one:6.0f} tokens/s")
    print(f"{'one process':>24}: {t_single:6.1f} s  {tc.n_tokens / t_single:6.0f} tokens/s")
    for n in (1, 2):
        work = times[n] - start[n]
        print(f"{f'Ray, {n} worker' + 's' * (n > 1):>24}: {times[n]:6.1f} s  {tc.n_tokens / times[n]:6.0f} tokens/s"
              f"   without start-up ({start[n]:.1f} s): {work:6.1f} s  {tc.n_tokens / work:6.0f} tokens/s")
    w1, w2 = times[1] - start[1], times[2] - start[2]
    print(f"sharding overhead in one process ({n_shards} shards / one shard): {t_single / t_one:.2f}x")
    print(f"distributed overhead, Ray 1 worker / one process:   {times[1] / t_single:.2f}x with start-up, "
          f"{w1 / t_single:.2f}x without")
    print(f"speed-up of 2 workers over 1 (same cluster):       {times[1] / times[2]:.2f}x with start-up, "
          f"{w1 / w2:.2f}x without")
    print("merged statistics identical to the single process: yes")


if __name__ == "__main__":
    main()
