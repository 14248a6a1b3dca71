"""The store's errors as HTTP answers, registered once on the app instead of in every route.

* ``UnknownAtlas``, ``UnknownItem`` -> 404: an atlas, layer, feature, figure or result that
  is not there (the message names it and, where it helps, what there is instead)
* ``BadParameter`` -> 422: a value the parameter's type admits but its grammar does not
  (FastAPI answers 422 itself for values of the wrong type)
* ``AtlasError`` -> 503: the atlas fails validation; the message names the bad file, so the
  operator can fix it (and a traceback never reaches the client)
* ``Busy`` -> 503 with ``Retry-After``: every heavy-work slot of the worker stayed taken

Every body is ``{"detail": "<one readable line>"}``, like FastAPI's own HTTPException.
"""
from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from app.data import BadParameter, UnknownAtlas, UnknownItem
from app.models import ErrorDetail
from analysis.atlas import AtlasError



class Busy(Exception):
    """No heavy-work slot came free in time (app.api.deps.HeavyWork)."""


STATUS: dict[type[Exception], int] = {UnknownAtlas: 404, UnknownItem: 404, BadParameter: 422, AtlasError: 503,
                                      Busy: 503}


def message(exc: Exception) -> str:
    # str() of a KeyError is the repr of its argument (quoted); the argument is the message
    return str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)


async def as_http(request: Request, exc: Exception) -> JSONResponse:
    status = next(code for cls, code in STATUS.items() if isinstance(exc, cls))
    headers = {"Retry-After": "5"} if isinstance(exc, Busy) else None
    return JSONResponse({"detail": message(exc)}, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    for cls in STATUS:
        app.add_exception_handler(cls, as_http)


# Declared on every resource router, so /docs shows the shape of these answers.
RESPONSES = {404: {"model": ErrorDetail, "description": "an unknown atlas, layer, feature or result"},
             503: {"model": ErrorDetail, "description": "the atlas fails validation (the detail names the file)"}}
