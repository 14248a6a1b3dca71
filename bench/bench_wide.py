"""Time and peak memory of each step of the geometry stage on one wide synthetic layer.

The published lobes use 16,384 features (METHODS 1); this runs ``analysis.stage.compute_layer``
on a synthetic layer of that width (planted lobes and crystals, as ``saegeo synthetic``) and
prints, per step, the wall time and the peak resident memory of the process (sampled every
20 ms), then the whole layer's.

    python bench/bench_wide.py                      # 16,384 features, d_model 128
    python bench/bench_wide.py --features 4096      # quicker
    python bench/bench_wide.py --published-ks       # all eleven k (2..1024), 100 random draws

Run it under a memory cap on a shared machine, e.g. ``prlimit --as=12000000000 -- python ...``.
The generated layer is cached (``--cache``), since generating 16k features takes minutes.
"""
from __future__ import annotations

import argparse
import pickle
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from analysis import stage  # noqa: E402
from analysis.synthetic import SYNTHETIC_GEOMETRY, make_layer  # noqa: E402


class Peak:
    """Peak RSS of this process since the last ``reset``, sampled by a thread."""

    def __init__(self, every: float = 0.02):
        self.proc, self.every, self.peak = psutil.Process(), every, 0
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.every)

    def reset(self) -> int:
        p, self.peak = max(self.peak, self.proc.memory_info().rss), self.proc.memory_info().rss
        return p


def layer(F: int, d: int, cache: Path | None) -> dict:
    path = cache / f"layer_{F}_{d}.pkl" if cache else None
    if path is not None and path.exists():
        with open(path, "rb") as fh:
            return pickle.load(fh)
    m = make_layer(np.random.default_rng(0), F, d, n_lobes=4, alpha=0.5, n_blocks=2000, block_size=256,
                   n_parallelograms=6, n_trapezoids=4)
    m = {"W": m["decoder.npy"], "C": m["cooc.npz"], "T": m["_n_blocks"], "blocks": m["blocks.npz"],
         "block_subset": m["block_subset.npy"], "subsets": m["_subsets"], "top_tokens": m["top_tokens.parquet"]}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            pickle.dump(m, fh, protocol=pickle.HIGHEST_PROTOCOL)
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", type=int, default=16384)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/saegeo-bench-wide"))
    ap.add_argument("--published-ks", action="store_true", help="all eleven k and 100 random draws")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="a GeometryConfig field")
    ap.add_argument("--quick", action="store_true", help="2,048 features, d_model 64 (as make bench runs it)")
    args = ap.parse_args()
    if args.quick:
        args.features, args.d_model = 2048, 64
    import json

    fields = {} if args.published_ks else dict(SYNTHETIC_GEOMETRY)
    for kv in args.set:
        k, v = kv.split("=", 1)
        fields[k] = json.loads(v)
    config = stage.GeometryConfig(**fields)
    peak = Peak()
    t0 = time.perf_counter()
    m = layer(args.features, args.d_model, args.cache)
    print(f"layer ready: {args.features} features, d_model {args.d_model} ({time.perf_counter() - t0:.0f}s, "
          f"RSS {psutil.Process().memory_info().rss / 1e9:.2f} GB)", flush=True)
    rows, last = [], [None, time.perf_counter()]
    peak.reset()

    def step(name):
        now = time.perf_counter()
        if last[0] is not None:
            rows.append((last[0], now - last[1], peak.reset()))
            print(f"  {rows[-1][1]:7.1f}s  peak {rows[-1][2] / 1e9:5.2f} GB  {last[0]}", flush=True)
        last[:] = [name, now]

    start = time.perf_counter()
    files, computed = stage.compute_layer(m["W"], config, C=m["C"], T=m["T"], blocks=m["blocks"],
                                          block_subset=m["block_subset"], subsets=m["subsets"],
                                          top_tokens=m["top_tokens"], progress=step)
    step(None)
    total = time.perf_counter() - start
    print(f"layer total {total:.1f}s, peak RSS {max(r[2] for r in rows) / 1e9:.2f} GB "
          f"(process high-water {psutil.Process().memory_info().rss / 1e9:.2f} GB now); computed: {computed}")


if __name__ == "__main__":
    main()
