"""Load test of the explorer's page: many simulated users replaying the page's own Dash callbacks.

    python bench/bench_page_load.py [--quick] [--features 4096] [--users 50] [--duration 20]
                                    [--repo PATH] [--server-args "--workers 2"] [--minutes M]

bench/bench_load.py drives the JSON API; real users drive the Dash page, where every action
is a POST to ``/_dash-update-component``: the controller callback (URL and controls -> the
view), then, for the new view, the cloud (``draw``), the card and panels (``side``), the
spectra and the Latent view's callbacks (which answer nothing while the cloud is shown); the
camera callback after a full redraw, the build poll every 5 s and searches.

1. **Record**: headless Chromium (Playwright, /usr/bin/chromium) opens a permalink on this
   checkout's server, clicks a feature, switches layer, opens the lobes panel, changes the
   colouring and searches; every POST body of ``/_dash-update-component`` is kept, one
   template per callback (and one controller body per triggering control). Recorded once per
   cache folder (``page-callbacks-<digest of app/views>.json``; ``--rerecord`` to redo it).
2. **Replay**: N users (httpx, one kept-alive connection pool each, like a browser tab) act
   like the page's renderer: a user keeps the values of the components its callbacks read
   (view, rendered, spectra-key, controls...) from the answers it got, and after the
   controller it sends every callback reading ``view.data`` at once, as the renderer does.
   Every user opens a permalink first (the page and its layout: GET /, /_dash-layout,
   /_dash-dependencies; then the initial callbacks), then acts with a seeded, exponential think
   time: feature clicks (card) 60 %, layer switches 10 %, colourings 5 %, searches 10 %, the
   lobes panel (opened or closed) 8 %, exports 7 % (the page's export link, a GET to the API)
   - the mix of bench_load.py, with its 15 % of points split into layer and colour changes.

Phases as in bench_load.py (single user without pause as the reference, N think-time users,
the same N without pause), each capped in time and count, loopback only; p50/p95/p99 per
callback kind and per whole action, requests/s, errors (non-2xx/204, timeouts), the server's
resident memory and CPU per request, and the ratio to the single-user rate of the same run.
``--minutes M`` adds the long think-time run sampling resident memory every 10 s.

Before and after the callbacks' figures and cards were kept (docs/api.md, "The page's own
callbacks"; 4,096 features, two shared cores): one tab 83 -> 183 req/s (server CPU per request
6.8 -> 4.0 ms); 50 think-time tabs 152 -> 238 req/s, p95 1.6 -> 1.0 s in a 20-s run, and p95
430 ms, no errors, resident memory +2 % over 10 minutes. With Dash on its FastAPI backend (no
WSGI bridge), uvloop and httptools (docs/api.md, "The page without a WSGI bridge"): server CPU
per request 7.5 -> 3.4-5.0 ms, and over 10 minutes 50 tabs p95 151 ms, no errors.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import copy
import json
import os
import random
import shlex
import sys
import time
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402

from bench_load import (REPO, SEARCHES, build_atlas, cpu_s, free_port, pct, rss_mb, start_server,  # noqa: E402
                        stop_server)

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-dev-shm-usage", "--enable-unsafe-swiftshader", "--disable-background-networking"]
GD = "document.querySelector('#cloud .js-plotly-plot')"
UPDATE = "/_dash-update-component"
MIX = (("card", 0.60), ("layer", 0.10), ("colour", 0.05), ("search", 0.10), ("lobes", 0.08), ("export", 0.07))
KINDS = ("page", "controller", "draw", "side", "spectra", "latent", "camera", "building", "search", "export")
COLOURINGS = ("lobe", "geometry", "freq", "subset")


def kind_of(body: dict) -> str:
    out = body["output"]
    if "view.data" in out:
        return "controller"
    if "latent" in out:   # the Latent view's callbacks (they also listen to the view)
        return "latent"
    for key, kind in ( ("cloud.figure", "draw"), ("card.children", "side"),
                      ("spectra.figure", "spectra"), ("building.children", "building"),
                      ("search-results.children", "search"), ("url.search@", "camera")):
        if key in out:
            return kind
    return "other"


# --------------------------------------------------------------------------- recording


def record(base: str, n_features: int) -> dict:
    """The page's callback bodies, from the real page in headless Chromium."""
    from playwright.sync_api import sync_playwright

    bodies: list[dict] = []
    pending = [0]

    def on_request(r):
        if UPDATE in r.url and r.method == "POST":
            bodies.append(json.loads(r.post_data))
            pending[0] += 1

    def on_done(r):
        if UPDATE in r.url and r.method == "POST":
            pending[0] -= 1

    def settle(pg, quiet=1.0, limit=60.0):
        # the sync API delivers events only inside its own calls: wait in the page, not in sleep
        t0 = time.time()
        calm = None
        while time.time() - t0 < limit:
            pg.wait_for_timeout(100)
            if pending[0] == 0:
                calm = calm or time.time()
                if time.time() - calm >= quiet:
                    return
            else:
                calm = None

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = b.new_page(viewport={"width": 1400, "height": 900})
        pg.on("request", on_request)
        pg.on("requestfinished", on_done)
        pg.on("requestfailed", on_done)
        pg.goto(f"{base}/?atlas=syn&layer=1&layout=pca&color=lobe:phi:4")
        pg.wait_for_function(f"() => {{ const g = {GD}; return g && g._fullData && g._fullData[0] && "
                             f"g._fullData[0].x.length === {n_features} }}", timeout=120_000)
        settle(pg)
        opened = len(bodies)
        pg.evaluate(f"() => {GD}.emit('plotly_click', {{points: [{{curveNumber: 0, pointNumber: 123}}]}})")
        pg.wait_for_selector("#card-title", timeout=60_000)
        settle(pg)
        pg.click("#layer-dd")
        pg.click("text=layer 2")
        settle(pg)
        pg.click("#panel-tabs >> text=Lobes")
        pg.wait_for_selector("#lobes-table", timeout=60_000)
        settle(pg)
        pg.click("#color-dd")
        pg.click("text=firing frequency (log)")
        settle(pg)
        pg.fill("#search-input", "def")
        pg.press("#search-input", "Enter")
        pg.wait_for_selector("#search-list", timeout=60_000)
        settle(pg)
        b.close()
    out: dict = {"initial": {}, "controller": {}, "followers": {}}
    for i, body in enumerate(bodies):
        kind = kind_of(body)
        if i < opened and kind in ("controller", "building"):
            out["initial"].setdefault(kind, body)
        if kind == "controller":
            out["controller"].setdefault(body["changedPropIds"][0], body)
            continue
        out.setdefault(kind, body)
        if any(key(r) == "view.data" or key(r).startswith("view-") and key(r).endswith(".data")
               for r in refs({"inputs": body["inputs"]})):
            # every callback reading the view (or the shown view's own store): the renderer
            # sends them all after the controller
            out["followers"].setdefault(body["output"], body)
    need = ("cloud.clickData", "layer-dd.value", "color-dd.value", "panel-tabs.value", "url.search")
    missing = [k for k in need if k not in out["controller"]]
    missing += [k for k in ("draw", "side", "spectra", "camera", "building", "search") if k not in out]
    missing += [] if out["followers"] else ["followers"]
    if missing:
        raise RuntimeError(f"the recording lacks {missing}")
    return out


def recording_path(args) -> Path:
    """Where the recording of the measured checkout's page is kept: named by a digest of its
    Dash views, so a page whose callbacks changed is recorded again, never replayed stale."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted((args.repo / "app" / "views").glob("*.py")):
        h.update(f.read_bytes())
    return args.cache / f"page-callbacks-{h.hexdigest()[:12]}.json"


def recorded(args, root: Path, n_features: int) -> dict:
    """The recording (made once per page version, from the measured checkout's page served by
    one worker: the browser's first render then never waits on a second worker warming up)."""
    path = recording_path(args)
    if path.is_file() and not args.rerecord:
        return json.loads(path.read_text())
    t = time.time()
    proc = start_server(args.repo, root, free_port(), ["--workers", "1"])
    try:
        rec = record(f"http://127.0.0.1:{proc.args[proc.args.index('--port') + 1]}", n_features)
    finally:
        stop_server(proc)
    path.write_text(json.dumps(rec))
    print(f"  recorded the page's callbacks in {time.time() - t:.0f} s -> {path}", flush=True)
    return rec


# --------------------------------------------------------------------------- replay


def refs(body: dict):
    """The {id, property[, value]} entries of a body's inputs and state (any nesting)."""
    stack = [body.get("inputs"), body.get("state")]
    while stack:
        x = stack.pop()
        if isinstance(x, dict) and "id" in x and "property" in x:
            yield x
        elif isinstance(x, dict):
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)


def key(ref: dict) -> str:
    return f"{ref['id']}.{ref['property']}"


def followers_of(rec: dict, answer: dict) -> list[dict]:
    """The callbacks the renderer sends after a controller answer: those with an input the
    answer set (a store the controller left alone, e.g. a hidden view's, triggers nothing)."""
    changed = {f"{cid}.{prop}" for cid, props in (answer.get("response") or {}).items() for prop in props}
    return [b for b in rec["followers"].values() if any(key(r) in changed for r in refs({"inputs": b["inputs"]}))]


class PageUser:
    """One browser tab's state: the component values its callbacks read, updated from answers."""

    def __init__(self, rec: dict, seed: int, n_features: int, layers: list[int], think: float):
        self.rec, self.n, self.layers, self.think = rec, n_features, layers, think
        self.rng = random.Random(seed)
        self.tracked = {key(r) for b in self._templates() for r in refs(b)}
        self.props: dict = {}
        self.n_submit = 0

    def _templates(self):
        yield from self.rec["controller"].values()
        yield from self.rec["followers"].values()
        yield from (self.rec[k] for k in ("camera", "building", "search"))

    def body(self, template: dict, changed: dict | None = None) -> dict:
        """``template`` with the values this tab holds now (``changed``: the triggering values)."""
        self.props.update(changed or {})
        b = copy.deepcopy(template)
        for r in refs(b):
            k = key(r)
            if k in self.props:
                r["value"] = self.props[k]
            else:
                r.pop("value", None)
        if changed:
            b["changedPropIds"] = b["parsedChangedPropsIds"] = list(changed)
        return b

    def absorb(self, answer: dict) -> bool:
        """Keeps what the tab's callbacks read; True when the cloud was redrawn whole."""
        whole = False
        for cid, props in (answer.get("response") or {}).items():
            for prop, value in props.items():
                if f"{cid}.{prop}" in self.tracked:
                    self.props[f"{cid}.{prop}"] = value
                if cid == "cloud" and prop == "figure" and isinstance(value, dict) and "data" in value:
                    whole = True
        return whole

    def permalink(self) -> str:
        r = self.rng
        color = r.choice(["lobe:phi:4", "lobe:phi:2", "geometry:4", "freq"])
        return f"?atlas=syn&layer={r.choice(self.layers)}&layout={r.choice(['pca', 'umap'])}&color={color}"

    def open_page(self) -> dict:
        self.props = {key(r): r["value"] for r in refs(self.rec["initial"]["controller"]) if "value" in r}
        self.props["url.search"] = self.permalink()
        return self.body(self.rec["initial"]["controller"])

    def next(self) -> tuple[str, object, float]:
        """(action, controller body / other body / URL, think time after it)."""
        r = self.rng
        action = r.choices([k for k, _ in MIX], [w for _, w in MIX])[0]
        wait = r.expovariate(1 / self.think) if self.think > 0 else 0.0
        ctrl = self.rec["controller"]
        view = self.props.get("view.data") or {}
        if action == "card":
            f = r.randrange(self.n)
            return action, self.body(ctrl["cloud.clickData"], {"cloud.clickData": {
                "points": [{"curveNumber": 0, "pointNumber": f}]}}), wait
        if action == "layer":
            L = r.choice([x for x in self.layers if x != view.get("layer")] or self.layers)
            return action, self.body(ctrl["layer-dd.value"], {"layer-dd.value": L}), wait
        if action == "colour":
            now = str(view.get("coloring", "lobe")).split(":")[0]
            c = r.choice([x for x in COLOURINGS if x != now])
            return action, self.body(ctrl["color-dd.value"], {"color-dd.value": c}), wait
        if action == "lobes":
            panel = "spectra" if view.get("panel") == "lobes" else "lobes"
            return action, self.body(ctrl["panel-tabs.value"], {"panel-tabs.value": panel}), wait
        if action == "search":
            self.n_submit += 1
            return action, self.body(self.rec["search"], {"search-input.n_submit": self.n_submit,
                                                          "search-input.value": r.choice(SEARCHES)}), wait
        layer = view.get("layer", self.layers[0])
        p = f"/api/atlases/syn/layers/{layer}/export?layout={view.get('layout', 'pca')}"
        if r.random() < 0.5:
            url = f"{p}&format=csv&lobe={quote('phi:4:' + str(r.randrange(4)))}"
        else:
            f = r.randrange(self.n - 11)
            url = f"{p}&format=csv&features={','.join(str(f + i) for i in range(11))}"
        return action, url, wait


async def run_phase(base: str, rec: dict, users: int, think: float, duration: float, max_requests: int, seed: int,
                    n_features: int, layers: list[int], timeout: float = 60.0) -> tuple[list, list, float]:
    """``users`` tabs; returns ([(callback kind, seconds, ok)], [(action, seconds, ok)], wall seconds)."""
    calls: list[tuple[str, float, bool]] = []
    actions: list[tuple[str, float, bool]] = []
    why: collections.Counter = collections.Counter()
    t0 = time.perf_counter()
    stop_at = t0 + duration

    async def send(client, kind, method, url, body=None):
        t = time.perf_counter()
        try:
            r = await (client.post(url, json=body) if method == "POST" else client.get(url))
            ok = r.status_code in (200, 204)
            answer = r.json() if r.status_code == 200 and method == "POST" else None
            if not ok:
                why[f"{kind}: HTTP {r.status_code}"] += 1
        except (httpx.HTTPError, ValueError) as e:
            ok, answer = False, None
            why[f"{kind}: {type(e).__name__}"] += 1
        calls.append((kind, time.perf_counter() - t, ok))
        return ok, answer

    async def chain(client, u: PageUser, body: dict) -> bool:
        """A controller call and what the renderer sends after it; False on any error."""
        ok, answer = await send(client, "controller", "POST", UPDATE, body)
        if not ok:
            return False
        if answer is None:
            return True   # PreventUpdate: nothing changed, nothing follows
        u.absorb(answer)
        got = await asyncio.gather(*(send(client, kind_of(b), "POST", UPDATE, u.body(b))
                                     for b in followers_of(rec, answer)))
        whole = False
        for okk, ans in got:
            ok &= okk
            if ans is not None:
                whole |= u.absorb(ans)
        if whole:   # plotly reports its autosize after a full redraw; the camera callback answers 204
            u.props["cloud.relayoutData"] = {"autosize": True}
            ok &= (await send(client, "camera", "POST", UPDATE, u.body(rec["camera"])))[0]
        return ok

    async def user(i: int):
        u = PageUser(rec, seed * 1000 + i, n_features, layers, think)
        # a browser's per-host pool; an idle connection is dropped before uvicorn's 5 s
        # keep-alive timeout closes it under a request being sent (a browser resends such a
        # request, httpx reports a ReadError)
        limits = httpx.Limits(max_connections=6, max_keepalive_connections=6, keepalive_expiry=4.0)
        async with httpx.AsyncClient(base_url=base, timeout=timeout, verify=False, limits=limits) as client:
            await asyncio.sleep(random.Random(seed * 7 + i).uniform(0, think) if think else 0)
            polls = 0

            async def poller():
                # the page polls for atlases being built every 5 s during its first two minutes
                nonlocal polls
                while polls < 24:
                    await asyncio.sleep(5)
                    if time.perf_counter() >= stop_at:
                        return
                    polls += 1
                    await send(client, "building", "POST", UPDATE,
                               u.body(rec["building"], {"building-tick.n_intervals": polls}))

            t = time.perf_counter()
            ok = True
            for path in ("/", "/_dash-layout", "/_dash-dependencies"):
                ok &= (await send(client, "page", "GET", path))[0]
            first = asyncio.gather(
                chain(client, u, u.open_page()),
                send(client, "building", "POST", UPDATE, u.body(rec["initial"]["building"])))
            got = await first
            actions.append(("open", time.perf_counter() - t, ok and got[0] and got[1][0]))
            poll = asyncio.create_task(poller()) if think else None
            try:
                while time.perf_counter() < stop_at and len(calls) < max_requests:
                    action, what, wait = u.next()
                    t = time.perf_counter()
                    if isinstance(what, str):
                        ok = (await send(client, "export", "GET", what))[0]
                    elif action == "search":
                        ok, _ = await send(client, "search", "POST", UPDATE, what)
                    else:
                        ok = await chain(client, u, what)
                    actions.append((action, time.perf_counter() - t, ok))
                    if wait:
                        await asyncio.sleep(min(wait, max(0.0, stop_at - time.perf_counter())))
            finally:
                if poll is not None:
                    poll.cancel()

    await asyncio.gather(*(user(i) for i in range(users)))
    if why:
        print("      errors: " + ", ".join(f"{k} x{n}" for k, n in why.most_common()))
    return calls, actions, time.perf_counter() - t0


def summarise(name: str, calls: list, actions: list, wall: float, mem0, mem1, cpu=None) -> float:
    rate = len(calls) / wall if wall else 0.0
    errors = sum(not ok for _, _, ok in calls)
    lat = [t for _, t, _ in calls]
    if cpu and calls:
        print(f"  {name:<9} CPU per request: server {cpu[0] / len(calls) * 1e3:.2f} ms, "
              f"this client {cpu[1] / len(calls) * 1e3:.2f} ms")
    print(f"  {name:<9} {len(calls):>6} req in {wall:5.1f} s = {rate:6.1f} req/s, errors {errors}; "
          f"p50 {pct(lat, .5) * 1e3:7.1f} ms  p95 {pct(lat, .95) * 1e3:7.1f} ms  p99 {pct(lat, .99) * 1e3:7.1f} ms; "
          f"RSS {mem0[0]:.0f} -> {mem1[0]:.0f} MB (anon {mem0[1]:.0f} -> {mem1[1]:.0f})", flush=True)
    for label, rows, kinds in (("", calls, KINDS), ("act:", actions, ("open",) + tuple(k for k, _ in MIX))):
        for kind in kinds:
            ks = [t for k, t, _ in rows if k == kind]
            if ks:
                print(f"      {label + kind:<11} n={len(ks):>5}  p50 {pct(ks, .5) * 1e3:7.1f} ms  "
                      f"p95 {pct(ks, .95) * 1e3:7.1f} ms  p99 {pct(ks, .99) * 1e3:7.1f} ms  "
                      f"errors {sum(not ok for k, _, ok in rows if k == kind)}")
    return rate


def bench_size(args, n_features: int) -> None:
    root = build_atlas(args.cache, n_features)
    rec = recorded(args, root, n_features)
    port = free_port()
    load = os.getloadavg()
    print(f"\n== page callbacks, {n_features} features, server from {args.repo} {' '.join(args.server_args)}; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    proc = start_server(args.repo, root, port, args.server_args)
    base = f"http://127.0.0.1:{port}"
    layers = [0, 1, 2]
    try:
        # warm-up: every worker opens the page on every layer once (first-touch costs are not load)
        async def warm():
            async def one(i):
                async with httpx.AsyncClient(base_url=base, timeout=120, verify=False) as c:
                    u = PageUser(rec, 10**6 + i, n_features, layers, 0.0)
                    for L in layers:
                        b = u.open_page()
                        for r in refs(b):
                            if key(r) == "url.search":
                                r["value"] = f"?atlas=syn&layer={L}&color=lobe:phi:4"
                        a = (await c.post(UPDATE, json=b)).json()
                        u.absorb(a)
                        for b in followers_of(rec, a):
                            await c.post(UPDATE, json=u.body(b))
            for _ in range(3):   # fresh connections are spread over the workers by the kernel
                await asyncio.gather(*(one(i) for i in range(4)))
        asyncio.run(warm())
        phases = [("single", 1, 0.0), ("users", args.users, args.think), ("saturate", args.users, 0.0)]
        rates = {}
        for name, users, think in phases:
            mem0, c0, me0 = rss_mb(proc.pid), cpu_s(proc.pid), time.process_time()
            calls, actions, wall = asyncio.run(run_phase(base, rec, users, think, args.duration, args.max_requests,
                                                         args.seed, n_features, layers))
            cpu = (cpu_s(proc.pid) - c0, time.process_time() - me0)
            rates[name] = summarise(name, calls, actions, wall, mem0, rss_mb(proc.pid), cpu)
        print(f"  ratio concurrent / single-user throughput (saturate / single): "
              f"{rates['saturate'] / rates['single']:.2f}x; users / single: {rates['users'] / rates['single']:.2f}x",
              flush=True)
        if args.minutes:
            samples = []

            async def sampler(stop_at):
                while time.perf_counter() < stop_at:
                    samples.append(rss_mb(proc.pid))
                    await asyncio.sleep(10)

            async def long_run():
                stop_at = time.perf_counter() + args.minutes * 60
                return (await asyncio.gather(
                    run_phase(base, rec, args.users, args.think, args.minutes * 60, 10**9, args.seed + 1,
                              n_features, layers), sampler(stop_at)))[0]

            mem0 = rss_mb(proc.pid)
            calls, actions, wall = asyncio.run(long_run())
            summarise(f"{args.minutes:g} min", calls, actions, wall, mem0, rss_mb(proc.pid))
            print("      RSS every 10 s (MB): " + " ".join(f"{s[0]:.0f}" for s in samples))
            print("      anonymous every 10 s (MB): " + " ".join(f"{s[1]:.0f}" for s in samples), flush=True)
    finally:
        stop_server(proc)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="600 features, 10 users, 5 s phases")
    p.add_argument("--features", type=int, nargs="+", default=[4096])
    p.add_argument("--users", type=int, default=50)
    p.add_argument("--think", type=float, default=1.0, help="mean think time in seconds")
    p.add_argument("--duration", type=float, default=20.0, help="seconds per phase (cap)")
    p.add_argument("--max-requests", type=int, default=20_000, help="requests per phase (cap)")
    p.add_argument("--minutes", type=float, default=0.0, help="add a long think-time run (memory over time)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repo", type=Path, default=REPO, help="the checkout whose app.server is measured")
    p.add_argument("--server-args", default="", help="extra arguments of app.server, e.g. '--workers 2'")
    p.add_argument("--rerecord", action="store_true", help="record the page's callbacks again")
    p.add_argument("--cache", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "saegeo-bench-load")
    args = p.parse_args(argv)
    if args.quick:
        args.features, args.users, args.duration, args.max_requests = [600], 10, 5.0, 2_000
    args.repo = args.repo.resolve()
    if not Path(CHROMIUM).is_file() and not recording_path(args).is_file():
        print(f"bench_page_load: skipped, {CHROMIUM} is needed to record the page's callbacks once")
        return
    args.server_args = shlex.split(args.server_args)
    args.cache.mkdir(parents=True, exist_ok=True)
    for n in args.features:
        bench_size(args, n)


if __name__ == "__main__":
    main()
