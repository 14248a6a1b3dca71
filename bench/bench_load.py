"""Load test of the explorer's server: many simulated users over loopback.

    python bench/bench_load.py [--quick] [--features 600 4096] [--users 50] [--duration 30]
                               [--repo PATH] [--server-args "--workers 2"]

For each atlas size it builds (once, cached under --cache) a synthetic atlas with derived
files (tests/_app_atlas.py), starts a real server process (``python -m app.server ROOT
--port P``, from --repo: point it at a ``git worktree`` of an older commit to measure that
code with the very same load), and runs three bounded phases against it, all on 127.0.0.1:

1. **single**: one user clicking as fast as it can (closed loop, no think time) - the
   reference rate;
2. **users**: N users, each waiting an exponential think time (mean 1 s, seeded) between
   actions: feature cards 60 %, layer switches (points) 15 %, searches 10 %, lobes 8 %,
   exports 7 %;
3. **saturate**: the same N users with no think time.

It prints requests/s, p50/p95/p99 per kind of request, errors (non-2xx, timeouts), the
server's resident memory (all its processes) at the start and end of each phase, and the
ratios against the single-user reference measured in the same run: concurrent throughput /
single-user throughput. Every phase is capped in time (--duration) and in requests
(--max-requests); nothing leaves the loopback interface. ``--minutes M`` adds a long
think-time run that samples resident memory every 10 s (is it flat?).

The order of actions of every user comes from its own seeded generator, so runs against
two servers send the same requests. bench/bench_page_load.py drives the Dash page's own
callbacks the same way.

The figures before and after the work of issue #13 (two cores, both sizes, the same seeds)
are in docs/api.md, section "Performance". In short, on the 4,096-feature atlas: one user
108 -> 235 req/s; 50 think-time users p95 33.8 -> 9.2 ms over 6 minutes (41-86 ms in
the 15-s runs just after a start, while the second worker warms up); 50 users without pause 91 -> 523
req/s (ratio to one user 0.85x -> 2.23x); resident memory flat over a 6-minute run.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import shlex
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import httpx  # noqa: E402
import psutil  # noqa: E402

MIX = (("card", 0.60), ("points", 0.15), ("search", 0.10), ("lobes", 0.08), ("export", 0.07))
SEARCHES = ("12", "#7", "def", "theta", "river", "login", "zzz-nothing", "cell", "market", "sum")


def build_atlas(cache: Path, n_features: int) -> Path:
    """A folder holding atlas ``syn`` with ``n_features`` features per layer (built once)."""
    from _app_atlas import build_app_atlas

    root = cache / f"syn-{n_features}"
    if not (root / "syn" / "manifest.json").is_file():
        tmp = cache / f"syn-{n_features}.tmp-{os.getpid()}"
        tmp.mkdir(parents=True)
        t = time.time()
        build_app_atlas(tmp, n_features=n_features)
        tmp.rename(root)
        print(f"  built a {n_features}-feature atlas in {time.time() - t:.0f} s", flush=True)
    return root


def start_server(repo: Path, root: Path, port: int, extra: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "app.server", str(root), "--port", str(port), *extra]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server exited: " + proc.stdout.read().decode(errors="replace")[-2000:])
        try:
            if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.3)
    stop_server(proc)
    raise RuntimeError("server did not start within 120 s")


def stop_server(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)   # the server and its workers (its own session)
        proc.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def cpu_s(pid: int) -> float:
    """CPU seconds used so far by the server and its worker processes."""
    try:
        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True)
    except psutil.NoSuchProcess:
        return float("nan")
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def rss_mb(pid: int) -> tuple[float, float]:
    """(RSS summed over the server and its children, their anonymous memory likewise) in MB.
    RSS counts the pages of memory-mapped atlas files each process touched (shared, and
    dropped by the kernel when memory is short); anonymous memory is what each process
    holds of its own (heap: tables, caches)."""
    try:
        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True)
    except psutil.NoSuchProcess:
        return float("nan"), float("nan")
    rss = pss = 0.0
    for p in procs:
        try:
            rss += p.memory_info().rss
            with open(f"/proc/{p.pid}/smaps_rollup") as fh:
                pss += next(int(line.split()[1]) * 1024 for line in fh if line.startswith("Anonymous:"))
        except psutil.Error:
            pass
    return rss / 2**20, pss / 2**20


class Plan:
    """One user's seeded sequence of actions on atlas ``syn``."""

    def __init__(self, seed: int, n_features: int, layers: list[int], think: float):
        self.rng = random.Random(seed)
        self.n, self.layers, self.think = n_features, layers, think
        self.layer = layers[0]

    def next(self) -> tuple[str, str, float]:
        r = self.rng
        kind = r.choices([k for k, _ in MIX], [w for _, w in MIX])[0]
        wait = r.expovariate(1 / self.think) if self.think > 0 else 0.0
        p = f"/api/atlases/syn/layers/{self.layer}"
        if kind == "card":
            url = f"{p}/features/{r.randrange(self.n)}"
        elif kind == "points":
            self.layer = r.choice(self.layers)
            url = (f"/api/atlases/syn/layers/{self.layer}/points?layout={r.choice(['pca', 'umap'])}"
                   f"&affinity=phi&k={r.choice([2, 4])}")
        elif kind == "search":
            url = f"{p}/search?q={quote(r.choice(SEARCHES))}"
        elif kind == "lobes":
            url = f"{p}/lobes?affinity={r.choice(['phi', 'geometry'])}&k={r.choice([2, 4])}"
        else:
            if r.random() < 0.5:
                url = f"{p}/export?lobe=phi:4:{r.randrange(4)}&format=csv"
            else:
                lo = r.randrange(self.n - 50)
                url = f"{p}/export?features={lo}-{lo + r.randrange(1, 50)}&format={r.choice(['csv', 'parquet'])}"
        return kind, url, wait


async def run_phase(base: str, users: int, think: float, duration: float, max_requests: int, seed: int,
                    n_features: int, layers: list[int], timeout: float = 30.0) -> tuple[list, float]:
    """Run ``users`` simulated users; returns ([(kind, seconds, ok)], wall seconds)."""
    results: list[tuple[str, float, bool]] = []
    t0 = time.perf_counter()
    stop_at = t0 + duration
    # one client (one kept-alive connection) per user, like browsers: httpx's shared pool
    # spends CPU per request growing with its number of connections, and the load generator
    # shares the machine's cores with the server
    async def user(i: int):
        # plain HTTP on loopback: verify=False spares loading the CA bundle for each client
        async with httpx.AsyncClient(base_url=base, timeout=timeout, verify=False) as client:
            plan = Plan(seed * 1000 + i, n_features, layers, think)
            # users start spread over their first think time, not all at once
            await asyncio.sleep(random.Random(seed * 7 + i).uniform(0, think) if think else 0)
            while time.perf_counter() < stop_at and len(results) < max_requests:
                kind, url, wait = plan.next()
                t = time.perf_counter()
                try:
                    r = await client.get(url)
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                results.append((kind, time.perf_counter() - t, ok))
                if wait:
                    await asyncio.sleep(min(wait, max(0.0, stop_at - time.perf_counter())))

    await asyncio.gather(*(user(i) for i in range(users)))
    return results, time.perf_counter() - t0


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def summarise(name: str, results: list, wall: float, mem0, mem1, cpu=None) -> float:
    rate = len(results) / wall if wall else 0.0
    if cpu and results:
        print(f"  {name:<9} CPU per request: server {cpu[0] / len(results) * 1e3:.2f} ms, "
              f"this client {cpu[1] / len(results) * 1e3:.2f} ms")
    errors = sum(not ok for _, _, ok in results)
    lat = [t for _, t, _ in results]
    print(f"  {name:<9} {len(results):>6} req in {wall:5.1f} s = {rate:6.1f} req/s, errors {errors}; "
          f"p50 {pct(lat, .5) * 1e3:7.1f} ms  p95 {pct(lat, .95) * 1e3:7.1f} ms  p99 {pct(lat, .99) * 1e3:7.1f} ms; "
          f"RSS {mem0[0]:.0f} -> {mem1[0]:.0f} MB (anon {mem0[1]:.0f} -> {mem1[1]:.0f})", flush=True)
    for kind, _ in MIX:
        ks = [t for k, t, _ in results if k == kind]
        if ks:
            print(f"      {kind:<7} n={len(ks):>5}  p50 {pct(ks, .5) * 1e3:7.1f} ms  p95 {pct(ks, .95) * 1e3:7.1f} ms"
                  f"  p99 {pct(ks, .99) * 1e3:7.1f} ms  errors {sum(not ok for k, _, ok in results if k == kind)}")
    return rate


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_size(args, n_features: int) -> None:
    root = build_atlas(args.cache, n_features)
    port = free_port()
    load = os.getloadavg()
    print(f"\n== {n_features} features, server from {args.repo} {' '.join(args.server_args)}; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    proc = start_server(args.repo, root, port, args.server_args)
    base = f"http://127.0.0.1:{port}"
    layers = [0, 1, 2]
    try:
        # warm-up: every layer's points and a card on 8 connections at once, so that every
        # worker process has opened the atlas (first-touch costs are not load)
        async def warm():
            async def one(i):
                async with httpx.AsyncClient(base_url=base, timeout=120, verify=False) as c:
                    for L in layers:
                        await c.get(f"/api/atlases/syn/layers/{L}/points")
                        await c.get(f"/api/atlases/syn/layers/{L}/features/{i}")
                        await c.get(f"/api/atlases/syn/layers/{L}/search?q=def")
            for _ in range(4):   # fresh connections are spread over the workers by the kernel
                await asyncio.gather(*(one(i) for i in range(8)))
        asyncio.run(warm())
        phases = [("single", 1, 0.0), ("users", args.users, args.think), ("saturate", args.users, 0.0)]
        rates = {}
        for name, users, think in phases:
            mem0, c0, me0 = rss_mb(proc.pid), cpu_s(proc.pid), time.process_time()
            res, wall = asyncio.run(run_phase(base, users, think, args.duration, args.max_requests, args.seed,
                                              n_features, layers))
            cpu = (cpu_s(proc.pid) - c0, time.process_time() - me0)
            rates[name] = summarise(name, res, wall, mem0, rss_mb(proc.pid), cpu)
        offered = args.users / args.think if args.think else float("nan")
        print(f"  ratio concurrent / single-user throughput (saturate / single): "
              f"{rates['saturate'] / rates['single']:.2f}x; the think-time users were served "
              f"{rates['users']:.1f} of the ~{offered:.0f} req/s they can ask for", flush=True)
        if args.minutes:
            samples = []

            async def sampler(stop_at):
                while time.perf_counter() < stop_at:
                    samples.append(rss_mb(proc.pid))
                    await asyncio.sleep(10)

            async def long_run():
                stop_at = time.perf_counter() + args.minutes * 60
                return (await asyncio.gather(
                    run_phase(base, args.users, args.think, args.minutes * 60, 10**9, args.seed + 1, n_features,
                              layers), sampler(stop_at)))[0]

            mem0 = rss_mb(proc.pid)
            res, wall = asyncio.run(long_run())
            summarise(f"{args.minutes:g} min", res, wall, mem0, rss_mb(proc.pid))
            print("      RSS every 10 s (MB): " + " ".join(f"{s[0]:.0f}" for s in samples))
    finally:
        stop_server(proc)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="600 features, 20 users, 5 s phases")
    p.add_argument("--features", type=int, nargs="+", default=[600, 4096])
    p.add_argument("--users", type=int, default=50)
    p.add_argument("--think", type=float, default=1.0, help="mean think time in seconds")
    p.add_argument("--duration", type=float, default=30.0, help="seconds per phase (cap)")
    p.add_argument("--max-requests", type=int, default=20_000, help="requests per phase (cap)")
    p.add_argument("--minutes", type=float, default=0.0, help="add a long think-time run (memory over time)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repo", type=Path, default=REPO, help="the checkout whose app.server is measured")
    p.add_argument("--server-args", default="", help="extra arguments of app.server, e.g. '--workers 2'")
    p.add_argument("--cache", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "saegeo-bench-load")
    args = p.parse_args(argv)
    if args.quick:
        args.features, args.users, args.duration, args.max_requests = [600], 20, 5.0, 2_000
    args.server_args = shlex.split(args.server_args)
    args.repo = args.repo.resolve()
    for n in args.features:
        bench_size(args, n)


if __name__ == "__main__":
    main()
