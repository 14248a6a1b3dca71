"""The JSON API: every number the explorer shows, typed and documented (OpenAPI at /docs).

One router per resource, all read-only, under ``/api`` (docs/api.md lists the routes):

* ``atlases``   ``/atlases``, ``/atlases/{atlas}``, ``/atlases/{atlas}/spectra``
* ``layers``    ``/atlases/{atlas}/layers/{layer}/points``, ``.../lobes``, ``.../crystals``, ``.../atom``
* ``features``  ``.../features/{feature}``, ``.../search``
* ``exports``   ``.../export``
* ``figures``   ``.../figures/{name}.{html|json}``
* ``latent``    ``/atlases/{atlas}/latent``, ``.../latent/points``, ``/norms``, ``/separation``, ``/tokens/{sample}``
* ``universality``  ``/comparisons``, ``/comparisons/{comparison}``, ``.../pairs/{layer_a}/{layer_b}``,
  ``.../subspaces``
* ``health``    ``/healthz`` (outside ``/api``)

A route takes the store as a typed dependency (``deps.Store``), calls a query of
app.queries and returns its model; the store's errors become status codes in ``errors``.
To add a resource: a query module in app/queries/, a router module here, one line below.
"""
from __future__ import annotations

from fastapi import APIRouter, HTTPException

from app.api import atlases, exports, features, figures, latent, layers, universality

router = APIRouter(prefix="/api")
for resource in (atlases, layers, features, exports, figures, latent, universality):
    router.include_router(resource.router)


@router.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"], include_in_schema=False)
def no_such_route(rest: str):
    # Without this, unknown /api/... paths would fall through to the explorer's page.
    raise HTTPException(404, detail=f"no API route /api/{rest[:100]}; see /docs")
