"""Payload and first render of the feature cloud for layers of 16k, 65k, 262k and 1M features.

    python bench/bench_cloud_scale.py [--widths 1024,16384,65536,262144,1048576] [--repeats 2]
                                      [--quick]
                                      [--reference REV] [--reference-max 262144] [--cache DIR]

One synthetic atlas holds a layer per width (``tests/_app_atlas.build_wide_atlas``: 64
Gaussian blobs, log-normal firing counts, one top token per feature); the 1,024-feature
layer, drawn whole by both, is the page's floor. Two servers serve it:
this checkout, and the reference: a copy of it whose ``app/views/cloud.py`` is commit
``--reference``'s, the full-points cloud (every feature a point with its own hover string),
run with the same Python. In one headless Chromium (Debian's /usr/bin/chromium,
software WebGL), for each width and each server:

* **payload**: bytes of the ``draw`` callback's response (the cloud figure as it travels);
* **first render** (best of ``--repeats`` after a warm-up that fills the HTTP cache and the
  server's caches), in three parts: *page*, seconds from navigation to ``/?atlas=wide&layer=L``
  until plotly has built the WebGL scene with the figure's points; *figure*, from the page's
  request for the figure until it had arrived (the server's answer and the transfer, from the
  browser's resource timing); *draw*, from its arrival until the scene was drawn (plotly's
  decoding and WebGL). On a shared machine *page* carries the load of everything else (the
  Dash page's own start-up is seconds with two busy cores); *figure* and *draw* are the
  cloud's own share.

Ratios are printed against the reference of the same run. The reference is skipped above
``--reference-max`` features (a 1M-point figure with a hover string per point takes minutes
and gigabytes to build, send and draw), and a render that does not finish in ``--timeout``
seconds is reported as such. Nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench"), str(REPO / "tests")]

from bench_load import free_port, start_server, stop_server  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-dev-shm-usage", "--enable-unsafe-swiftshader", "--disable-background-networking"]
GD = "document.querySelector('#cloud .js-plotly-plot')"
# the last commit whose cloud drew every feature as a point with its own hover string
REFERENCE = "3ae14f6"
# drawn: the scene exists and trace 0 holds as many points as the figure that came back
DRAWN = (f"n => {{ const g = {GD}; return (g && g._fullLayout && g._fullLayout.scene && "
         "g._fullLayout.scene._scene && g._fullData && g._fullData[0] && g._fullData[0].x && "
         "g._fullData[0].x.length === n) ? performance.now() : false; }")
# the figure is the page's largest answer: when it was asked for and when it had arrived
FIGURE_TIMES = ("() => { const e = performance.getEntriesByType('resource').filter(r => "
                "r.name.includes('_dash-update-component')).sort((a, b) => b.decodedBodySize - a.decodedBodySize)[0]; "
                "return [e.requestStart, e.responseEnd]; }")


def build(cache: Path, widths: list[int]) -> Path:
    """The atlas folder (``wide`` inside), built once per set of widths."""
    from _app_atlas import build_wide_atlas

    root = cache / ("wide-" + "-".join(map(str, widths)))
    if not (root / "wide" / "manifest.json").is_file():
        t = time.time()
        build_wide_atlas(root / "wide", tuple(widths))
        print(f"built the atlas ({', '.join(f'{w:,}' for w in widths)} features) in {time.time() - t:.0f} s "
              "(not part of the bench)", flush=True)
    return root


def reference_tree(repo: Path, rev: str, into: Path) -> Path:
    """A copy of ``repo``'s code in ``into`` whose cloud module is commit ``rev``'s: the same
    server, callbacks and page, only the figure differs."""
    for part in ("app", "analysis", "precompute", "static"):
        shutil.copytree(repo / part, into / part, ignore=shutil.ignore_patterns("__pycache__"))
    old = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:app/views/cloud.py"], check=True,
                         capture_output=True, text=True).stdout
    (into / "app" / "views" / "cloud.py").write_text(old)
    return into


def n_points(fig: dict) -> int:
    """Points of trace 0 of a figure as sent (typed array or list)."""
    import base64

    x = fig["data"][0]["x"]
    if isinstance(x, dict):
        return len(base64.b64decode(x["bdata"])) // {"f4": 4, "f8": 8}[x["dtype"]]
    return len(x)


def first_render(browser, base: str, layer: int, repeats: int, timeout: float) -> dict | None:
    """For one layer's cloud, best of ``repeats``: ``page`` seconds from navigation until the
    scene is drawn, ``server`` from the figure's request until it had arrived (built and sent),
    ``draw`` from its arrival until plotly had drawn it; ``bytes`` of the figure's answer and
    ``points`` in trace 0. None if a render did not finish within ``timeout``."""
    best = None
    for i in range(repeats + 1):   # the first fills the caches
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        got = []

        def grab(resp):
            if "_dash-update-component" in resp.url and not got:
                try:
                    body = resp.body()
                    fig = json.loads(body)["response"].get("cloud", {}).get("figure")
                except Exception:  # noqa: BLE001 - another callback's answer, or none
                    return
                if fig is not None:
                    got.append((len(body), n_points(fig)))

        page.on("response", grab)
        try:
            t = time.perf_counter()
            page.goto(f"{base}/?atlas=wide&layer={layer}", timeout=timeout * 1e3)
            deadline = time.perf_counter() + timeout
            while not got and time.perf_counter() < deadline:
                page.wait_for_timeout(20)
            if not got:
                raise TimeoutError
            size, n = got[0]
            drawn = page.wait_for_function(DRAWN, arg=n, polling=20,
                                           timeout=max(1.0, deadline - time.perf_counter()) * 1e3).json_value()
            page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
            total = time.perf_counter() - t
            asked, arrived = page.evaluate(FIGURE_TIMES)
        except Exception:  # noqa: BLE001 - a timeout: reported, not fatal
            page.close()
            return None
        page.close()
        run = {"page": total, "server": (arrived - asked) / 1e3, "draw": (drawn - arrived) / 1e3,
               "bytes": size, "points": n}
        if i and (best is None or run["page"] < best["page"]):
            best = run
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", default="1024,16384,65536,262144,1048576")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--repo", type=Path, default=REPO, help="the checkout measured (default: this one)")
    p.add_argument("--reference", default=REFERENCE, help="commit of the full-points cloud")
    p.add_argument("--reference-max", type=int, default=262_144, help="widest layer the reference is run on")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds before a render counts as not finished")
    p.add_argument("--quick", action="store_true", help="1k, 16k and 65k features, one repeat (make bench)")
    p.add_argument("--cache", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "saegeo-bench-cloud")
    a = p.parse_args()
    if not Path(CHROMIUM).is_file():
        sys.exit(f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    if a.quick:
        a.widths, a.repeats = "1024,16384,65536", 1
    widths = [int(w) for w in a.widths.split(",")]
    root = build(a.cache, widths)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ref = reference_tree(a.repo, a.reference, Path(tmp) / "ref")
        servers = {}
        try:
            for name, repo in (("levels of detail", a.repo), ("reference", ref)):
                port = free_port()
                servers[name] = (start_server(repo, root, port, ["--workers", "1"]), f"http://127.0.0.1:{port}")
            with sync_playwright() as pw:
                b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                for L, F in enumerate(widths):
                    new = first_render(b, servers["levels of detail"][1], L, a.repeats, a.timeout)
                    old = first_render(b, servers["reference"][1], L, a.repeats, a.timeout) \
                        if F <= a.reference_max else "skipped"
                    rows.append((F, new, old))
                    print(f"{F:,} features: {new} / reference {old}", flush=True)
                b.close()
        finally:
            for proc, _ in servers.values():
                stop_server(proc)

    def secs(r, k):
        return f"{r[k]:6.2f} s" if r else "  timeout"

    def ratio(r, r0, k):
        return f"{r[k] / r0[k]:5.2f}x" if r and isinstance(r0, dict) else "    -"

    print(f"\nfeature cloud, best of {a.repeats}; page: navigation to drawn; figure: its request to its arrival "
          f"(server and transfer); draw: its arrival to drawn. Reference: app/views/cloud.py of {a.reference}, "
          "every feature a point")
    print(f"{'features':>10} {'':>10} | {'points':>9} | {'payload':>9} | {'page':>8} | {'figure':>8} | {'draw':>8}")
    for F, new, old in rows:
        for name, r in (("now", new), ("reference", old)):
            if r == "skipped":
                print(f"{'':>10} {name:>10} | not run (wider than --reference-max)")
                continue
            head = f"{F:>10,}" if name == "now" else f"{'':>10}"
            pts = f"{r['points']:>9,}" if r else f"{'-':>9}"
            kb = f"{r['bytes'] / 1e3:>6.0f} kB" if r else f"{'-':>9}"
            print(f"{head} {name:>10} | {pts} | {kb} | {secs(r, 'page')} | {secs(r, 'server')} | {secs(r, 'draw')}")
        if isinstance(old, dict) and new:
            print(f"{'':>10} {'ratio':>10} | {'':>9} | {ratio(new, old, 'bytes'):>9} | {ratio(new, old, 'page'):>8} | "
                  f"{ratio(new, old, 'server'):>8} | {ratio(new, old, 'draw'):>8}")


if __name__ == "__main__":
    main()
