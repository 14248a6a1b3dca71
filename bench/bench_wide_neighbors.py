"""Recall and time of the wide layers' decoder-cosine neighbour search (issue 12).

Above ``GeometryConfig.wide_from`` the geometry stage cannot afford the exact top-16 table
(``layout.neighbors``, F² d work) and searches approximately (analysis/wide.py). This
measures each method on one synthetic decoder per (width, d_model) - four planted lobes
re-coloured to a power-law spectrum, as ``analysis.synthetic.make_layer`` draws them, 0.5 %
dead rows - and prints per method the wall time, the CPU time of the process (all threads),
the peak resident memory above the decoder's, the recall of the 16 exact neighbours
(``wide.neighbor_recall``, 500 random features), and the time as a ratio of the exact
search measured in the same process:

* ``exact``: ``layout.neighbors``, blocked float32 products and a partial sort per row.
  Above ``--exact-max`` features it runs on the first ``--exact-rows`` rows only (every row
  costs the same, F d) and its time is scaled to F rows (said in the table);
* ``ivf:P``: ``wide.ivf_neighbors``, sqrt(F) cells, P probed;
* ``nndescent:M``: ``wide.nndescent_neighbors`` with M candidates per feature. pynndescent
  compiles its parallel functions with numba in every new process (numba cannot cache them):
  that once-per-process cost is measured on a small array first and printed apart.

Each (width, d_model) runs in its own process.

    python bench/bench_wide_neighbors.py                           # 65k and 262k, d 128
    python bench/bench_wide_neighbors.py --widths 65536 --dims 2304
    python bench/bench_wide_neighbors.py --quick                   # 16k, d 64
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

METHODS = ["exact", "ivf:8", "ivf:32", "nndescent:32", "nndescent:48", "nndescent:64"]
K = 16


def decoder(F: int, d: int, seed: int = 0) -> np.ndarray:
    """Four planted lobes, power-law spectrum (alpha 0.5), 0.5 % dead (zero) rows."""
    from analysis.synthetic import power_law_directions_gram

    rng = np.random.default_rng(seed)
    lobes = rng.integers(0, 4, F)
    base = rng.normal(size=(4, d))[lobes] * 3.0
    base += rng.normal(size=(F, d))
    W = power_law_directions_gram(base, 0.5).astype(np.float32)
    del base
    W[rng.choice(F, F // 200, replace=False)] = 0
    return W


def exact_rows(W: np.ndarray, rows: int) -> None:
    """``layout.neighbors`` on the first ``rows`` rows against all F (its loop, cut short)."""
    from analysis import layout

    U = np.asarray(W, np.float32)
    norms = np.linalg.norm(U, axis=1, keepdims=True)
    U = U / np.where(norms == 0, 1.0, norms)
    for s in range(0, rows, 2048):
        S = U[s:min(s + 2048, rows)] @ U.T
        part = np.argpartition(-S, K - 1, axis=1)[:, :K]
        np.take_along_axis(S, part, axis=1)
    assert layout.neighbors  # the routine this stands for


def child(F: int, d: int, methods: list[str], exact_max: int, exact_n: int) -> dict:
    from analysis import layout, wide

    peak = Peak()
    W = decoder(F, d)
    base = peak.reset()
    out = {"F": F, "d": d, "input_gb": base / 1e9, "rows": {}}
    if any(m.startswith("nndescent") for m in methods):
        t, c = time.perf_counter(), time.process_time()
        wide.nndescent_neighbors(decoder(2000, 8, 1), K, 32, exact_upto=0)
        out["compile"] = (time.perf_counter() - t, time.process_time() - c)
    for m in methods:
        peak.reset()
        name, _, arg = m.partition(":")
        t, c = time.perf_counter(), time.process_time()
        note = ""
        if name == "exact":
            if F <= exact_max:
                nb, _ = layout.neighbors(W, K)
            else:
                exact_rows(W, exact_n)
                nb, note = None, f"{exact_n} rows, x{F / exact_n:.0f}"
        elif name == "ivf":
            nb, _ = wide.ivf_neighbors(W, K, n_probe=int(arg))
        elif name == "nndescent":
            nb, _ = wide.nndescent_neighbors(W, K, int(arg))
        else:
            raise SystemExit(f"unknown method {m!r}")
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        if note:
            wall, cpu = wall * F / exact_n, cpu * F / exact_n
        mem = (peak.reset() - base) / 1e9
        recall = 1.0 if nb is None else wide.neighbor_recall(W, nb, 500)
        out["rows"][m] = {"wall": wall, "cpu": cpu, "peak_gb": mem, "recall": recall, "note": note}
        del nb
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", type=int, nargs="+", default=[65536, 262144])
    ap.add_argument("--dims", type=int, nargs="+", default=[128])
    ap.add_argument("--methods", nargs="+", default=METHODS)
    ap.add_argument("--exact-max", type=int, default=65536, help="widths above this time the exact search on a few rows")
    ap.add_argument("--exact-rows", type=int, default=8192)
    ap.add_argument("--quick", action="store_true", help="16,384 features, d_model 64, three methods")
    ap.add_argument("--child", type=int, nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.widths, args.dims, args.methods = [16384], [64], ["exact", "ivf:8", "nndescent:48"]
    if args.child:
        print(json.dumps(child(*args.child, args.methods, args.exact_max, args.exact_rows)))
        return
    print(f"top-{K} decoder-cosine neighbours; recall on 500 random features; times: wall (CPU, all threads)")
    print(f"{'features':>9} {'d':>5} {'method':<14} {'wall s':>8} {'cpu s':>8} {'/ exact':>8} {'peak GB':>8} "
          f"{'recall':>7}")
    for F in args.widths:
        for d in args.dims:
            r = subprocess.run([sys.executable, __file__, "--child", str(F), str(d), "--methods", *args.methods,
                                "--exact-max", str(args.exact_max), "--exact-rows", str(args.exact_rows)],
                               capture_output=True, text=True)
            if r.returncode != 0:
                tail = r.stderr.strip().splitlines()
                print(f"{F:>9} {d:>5} failed: {tail[-1] if tail else r.returncode}")
                continue
            o = json.loads(r.stdout.strip().splitlines()[-1])
            ref = o["rows"].get("exact", {}).get("wall")
            if "compile" in o:
                print(f"{F:>9} {d:>5} {'(numba jit)':<14} {o['compile'][0]:8.1f} {o['compile'][1]:8.1f}"
                      "   once per process, not in the rows below")
            for m, x in o["rows"].items():
                ratio = f"{x['wall'] / ref:7.2f}x" if ref else f"{'':>8}"
                print(f"{F:>9} {d:>5} {m:<14} {x['wall']:8.1f} {x['cpu']:8.1f} {ratio} {x['peak_gb']:8.2f} "
                      f"{x['recall']:7.3f}" + (f"   ({x['note']})" if x["note"] else ""))
            sys.stdout.flush()


if __name__ == "__main__":
    main()
