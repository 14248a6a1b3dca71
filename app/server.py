"""The web server: FastAPI with the JSON API under ``/api`` and the Dash explorer at ``/``.

    app = create_app(Path("atlases/"))        # an ASGI app; or
    serve(Path("atlases/"), "127.0.0.1", 8050)

The Dash app is a Flask (WSGI) application; it is mounted inside the FastAPI (ASGI) app
through a2wsgi's ``WSGIMiddleware``. The server serves the atlases found directly inside
``atlas_dir`` read-only and nothing else. It never imports torch.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from a2wsgi import WSGIMiddleware
from fastapi import FastAPI

from app import api
from app.api import errors, health
from app.data import AtlasStore
from app.views.explorer import make_dash


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
    dash_app = make_dash(store, banner=banner, prefix="/")
    # Mounted last: the API routes above take precedence over the catch-all "/".
    app.mount("/", WSGIMiddleware(dash_app.server))
    return app


def serve(atlas_dir: Path, host: str = "127.0.0.1", port: int = 8050, banner: str | None = None,
          log_level: str = "info") -> None:
    """Serve ``atlas_dir`` with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_app(Path(atlas_dir), banner=banner), host=host, port=port, log_level=log_level)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Serve a folder of atlases (the CLI's `saegeo serve` does the same).")
    p.add_argument("atlas_dir", type=Path)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8050)
    p.add_argument("--banner", default=None)
    p.add_argument("--log-level", default="warning")
    a = p.parse_args(argv)
    serve(a.atlas_dir, a.host, a.port, banner=a.banner, log_level=a.log_level)


if __name__ == "__main__":
    main()
