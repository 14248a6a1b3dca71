"""Benchmark the explorer's wire format and responsiveness.

    python bench/bench_app.py [--quick]

For N features (synthetic atlases, one layer) it prints
* the bytes of the cloud figure as Dash sends it (typed arrays, base64) against the
  reference encoding of the same figure with lists of Python floats (ratio = reference / ours);
* the server time to build a whole figure against a colour change sent as a ``Patch``;
* the median time of a feature card over HTTP;
* in headless Chromium (when /usr/bin/chromium exists): the click-to-card latency against the
  time of a full page load (ratio = load / click).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import numpy as np  # noqa: E402
import plotly.io as pio  # noqa: E402
from dash._utils import to_json  # noqa: E402

from analysis.synthetic import make_synthetic_atlas  # noqa: E402
from app.data import AtlasStore  # noqa: E402
from app.state import ViewState, resolve  # noqa: E402
from app.views import cloud  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-dev-shm-usage", "--enable-unsafe-swiftshader", "--disable-background-networking"]


def _lists(obj):
    """The reference encoding: every typed array spec decoded to a list of Python numbers."""
    if isinstance(obj, dict):
        if set(obj) >= {"dtype", "bdata"}:
            import base64

            return np.frombuffer(base64.b64decode(obj["bdata"]), dtype=np.dtype(obj["dtype"])).tolist()
        return {k: _lists(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_lists(v) for v in obj]
    return obj


def timed(fn, repeat=5):
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def wire(root: Path, n: int) -> None:
    store = AtlasStore(root)
    st, _ = resolve(ViewState(atlas="syn", layer=0, color="freq", f=1), store)
    fig, _ = cloud.figure(store, st)
    ours = to_json(fig)
    ref = json.dumps(_lists(json.loads(pio.to_json(fig, validate=False))))
    t0 = json.loads(ours)["data"][0]
    num = {k: t0[k] for k in "xyz"} | {"color": t0["marker"]["color"]}
    num_ours, num_ref = len(json.dumps(num)), len(json.dumps(_lists(num)))
    t_full = timed(lambda: to_json(cloud.figure(store, st)[0]))
    st2 = st.with_(color="subset")
    t_patch = timed(lambda: to_json(cloud.patch(store, st, st2)[0]))
    patch_bytes = len(to_json(cloud.patch(store, st, st2)[0]))
    print(f"N={n:>6}: figure {len(ours) / 1e3:8.1f} kB typed arrays vs {len(ref) / 1e3:8.1f} kB float lists "
          f"-> ratio {len(ref) / len(ours):.2f}x smaller; colour Patch {patch_bytes / 1e3:.1f} kB")
    print(f"          numeric arrays only (x, y, z, colour): {num_ours / 1e3:.1f} kB vs {num_ref / 1e3:.1f} kB "
          f"-> ratio {num_ref / num_ours:.2f}x (the rest is hover text: top tokens per feature)")
    print(f"          build+serialise: full figure {t_full * 1e3:7.1f} ms, colour Patch {t_patch * 1e3:6.1f} ms "
          f"-> ratio {t_full / t_patch:.1f}x")


def http_and_browser(root: Path, n: int, clicks: int) -> None:
    import httpx

    from _app_atlas import start_server

    proc, base = start_server(root)
    try:
        with httpx.Client(base_url=base) as c:
            c.get("/api/atlases/syn/layers/0/features/0")
            t_card = timed(lambda: c.get("/api/atlases/syn/layers/0/features/3"), repeat=10)
        print(f"N={n:>6}: feature card over HTTP {t_card * 1e3:.1f} ms (median of 10)")
        if not Path(CHROMIUM).is_file():
            print("          (no /usr/bin/chromium: browser latency skipped)")
            return
        from playwright.sync_api import sync_playwright

        gd = "document.querySelector('#cloud .js-plotly-plot')"
        with sync_playwright() as pw:
            b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = b.new_page(viewport={"width": 1400, "height": 900})
            page.goto(base + "/?atlas=syn&layer=0")  # warm: scripts cached
            loads = []
            for _ in range(2):
                t = time.perf_counter()
                page.goto(base + "/?atlas=syn&layer=0")
                page.wait_for_function(f"() => {{ const g = {gd}; return g && g._fullData && g._fullData[0] && "
                                       f"g._fullData[0].x.length === {n} }}", timeout=120_000)
                loads.append(time.perf_counter() - t)
            lat = []
            for i in range(clicks):
                f = (i * 7919 + 11) % n
                t = time.perf_counter()
                page.evaluate(f"() => {gd}.emit('plotly_click', {{points: [{{curveNumber: 0, pointNumber: {f}}}]}})")
                page.wait_for_function(f"() => {{ const e = document.querySelector('#card-title');"
                                       f" return e && e.textContent === 'Feature {f}' }}", timeout=60_000)
                lat.append(time.perf_counter() - t)
            b.close()
        load, click = statistics.median(loads), statistics.median(lat)
        print(f"          browser: page load to drawn cloud {load * 1e3:.0f} ms, click to card {click * 1e3:.0f} ms "
              f"(median of {clicks}) -> ratio {load / click:.1f}x")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one small atlas, fewer clicks")
    a = p.parse_args()
    sizes = (2000,) if a.quick else (2000, 16384)
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            make_synthetic_atlas(Path(tmp) / "syn", n_features=n, d_model=64, layers=(0,), n_blocks=300,
                                 geometry=False, seed=0)
            wire(Path(tmp), n)
            http_and_browser(Path(tmp), n, clicks=3 if a.quick else 7)


if __name__ == "__main__":
    main()
