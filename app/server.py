"""The web server: FastAPI with the JSON API under ``/api`` and the Dash explorer at ``/``.

    app = create_app(Path("atlases/"))        # an ASGI app; or
    serve(Path("atlases/"), "127.0.0.1", 8050)

The Dash app runs on Dash's FastAPI backend: its routes (the page, its layout and
``/_dash-update-component``) are added to the same FastAPI app as the JSON API, so a callback
is served like any route, on the worker's event loop, with no WSGI bridge between them (the
bridge handed every request to a thread and every read and write back across threads: about a
third of the server's CPU under load, docs/api.md). The server serves the atlases found directly
inside ``atlas_dir`` read-only and nothing else. It never imports torch.

``serve(..., workers=N)`` runs N worker processes (uvicorn's supervisor) listening on the
same socket: Python runs one thread at a time per process, so one process uses one core
however many requests wait. Each worker opens the atlases itself; their arrays are
memory-mapped, so the workers share one copy of them in the page cache. The default,
``default_workers()``, is one per core up to 4.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from dash.exceptions import DependencyException
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

import plotly.io.json

from app import api
from app.api import errors, health
from app.data import AtlasStore
from app.views.explorer import make_dash

# Dash serialises callback answers with plotly's JSON engine, which switches to orjson whenever
# that is installed; plotly's orjson path first rebuilds the whole answer in Python and served a
# page callback in 5.3 ms of CPU against 3.7 ms with the standard library's encoder (bench/
# bench_page_load.py). Pinned, so that the speed does not depend on what else is installed.
plotly.io.json.config.default_engine = "json"


def create_app(atlas_dir: Path, banner: str | None = None, verify: str = "checksum") -> FastAPI:
    """The ASGI app serving the atlases in ``atlas_dir``; ``banner`` is shown atop the page."""
    store = AtlasStore(atlas_dir, verify=verify)
    app = FastAPI(
        title="saegeo",
        summary="JSON API of the saegeo atlas explorer",
        description="Read-only access to atlases of SAE feature geometry (docs/atlas.md, docs/api.md). "
                    "Unknown atlases, layers and features are 404; malformed parameters 422; an atlas "
                    "that fails validation 503 with the validation message.",
        version="1",
    )
    app.state.store = store  # what the routes' Store dependency hands them (app/api/deps.py)
    errors.install(app)
    app.include_router(health.router)
    app.include_router(api.router)
    dash_app = make_dash(store, app, banner=banner, prefix="/")
    # A request for a script that is not one of Dash's own is "not found", not a server error.
    app.add_exception_handler(DependencyException, lambda request, exc: PlainTextResponse("not found", 404))
    app.add_middleware(SecurityHeaders, csp=content_security_policy(dash_app.csp_hashes()))
    return app


def content_security_policy(script_hashes: list[str]) -> str:
    """The page's Content-Security-Policy: everything from this server only; Dash's own inline
    scripts by their hashes (nothing else inline runs, so markup smuggled in through a link
    or an atlas string cannot execute); inline styles, which plotly sets on its elements;
    images as data:/blob: URLs (plotly's exports); no framing by other sites."""
    return "; ".join([
        "default-src 'self'", "script-src 'self' " + " ".join(script_hashes),
        "style-src 'self' 'unsafe-inline'", "img-src 'self' data: blob:", "font-src 'self' data:",
        "connect-src 'self'", "worker-src 'self' blob:", "object-src 'none'", "base-uri 'self'",
        "form-action 'self'", "frame-ancestors 'none'"])


class SecurityHeaders:
    """ASGI middleware adding security headers to every answer (a plain ASGI wrapper rather
    than a BaseHTTPMiddleware, which would put a task and a queue in front of each request).
    The interactive API docs (/docs, /redoc) load their scripts from a CDN and keep no CSP."""

    def __init__(self, app, csp: str):
        self.app = app
        common = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                  (b"referrer-policy", b"no-referrer")]
        self.page = common + [(b"content-security-policy", csp.encode())]
        self.docs = common

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        extra = self.docs if scope["path"].startswith(("/docs", "/redoc")) else self.page

        async def with_headers(message):
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _ in message.get("headers", [])}
                message = {**message, "headers": list(message.get("headers", [])) +
                           [(k, v) for k, v in extra if k not in have]}
            await send(message)

        await self.app(scope, receive, with_headers)


def default_workers() -> int:
    """One worker process per core this process may use, at least 1 and at most 4."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:   # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


_ENV = {"atlas_dir": "SAEGEO_SERVE_ATLAS_DIR", "banner": "SAEGEO_SERVE_BANNER"}


def preload_in_background() -> None:
    """Import scikit-learn's side of the analysis (cards' co-occurrence partners, PCA layouts)
    in a thread once the worker is up: imported at start-up it would delay the page by a second,
    imported by the first card it stalled every request queued behind that card."""
    import importlib
    import threading

    threading.Thread(target=lambda: [importlib.import_module(m) for m in ("analysis.brain", "analysis.layout")],
                     name="preload", daemon=True).start()


def app_from_env() -> FastAPI:
    """The app of one worker process: ``serve`` hands the settings over in the environment
    (uvicorn starts workers from an import string, not from an app object)."""
    preload_in_background()
    return create_app(Path(os.environ[_ENV["atlas_dir"]]), banner=os.environ.get(_ENV["banner"]) or None)


def serve(atlas_dir: Path, host: str = "127.0.0.1", port: int = 8050, banner: str | None = None,
          log_level: str = "info", workers: int | None = None) -> None:
    """Serve ``atlas_dir`` with uvicorn until interrupted, in ``workers`` processes
    (default: ``default_workers()``; 1 serves from this very process)."""
    import uvicorn

    workers = default_workers() if workers is None else max(1, int(workers))
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {host}: anyone who can reach this machine on port {port} can open the explorer "
              f"and every atlas in {atlas_dir} (there is no login); serve on 127.0.0.1 unless that is intended",
              file=sys.stderr, flush=True)
    if workers == 1:
        preload_in_background()
        uvicorn.run(create_app(Path(atlas_dir), banner=banner), host=host, port=port, log_level=log_level)
        return
    from uvicorn.supervisors import Multiprocess

    os.environ[_ENV["atlas_dir"]] = str(Path(atlas_dir).resolve())
    os.environ[_ENV["banner"]] = banner or ""
    config = uvicorn.Config("app.server:app_from_env", factory=True, host=host, port=port, log_level=log_level,
                            workers=workers)
    sock = config.bind_socket()
    # uvicorn binds the shared socket without naming the protocol, so asyncio does not set
    # TCP_NODELAY on the connections it accepts: every answer on a kept-alive connection then
    # waits ~40 ms for the client's delayed ACK (Nagle). Accepted sockets inherit it from here.
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        Multiprocess(config, sockets=[sock]).run()
    except KeyboardInterrupt:
        pass


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Serve a folder of atlases (the CLI's `saegeo serve` does the same).")
    p.add_argument("atlas_dir", type=Path)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8050)
    p.add_argument("--banner", default=None)
    p.add_argument("--log-level", default="warning")
    p.add_argument("--workers", type=int, default=None,
                   help=f"worker processes (default: one per core, at most 4; here {default_workers()})")
    a = p.parse_args(argv)
    serve(a.atlas_dir, a.host, a.port, banner=a.banner, log_level=a.log_level, workers=a.workers)


if __name__ == "__main__":
    main()
