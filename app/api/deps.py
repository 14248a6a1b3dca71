"""What the routes are handed by FastAPI's dependency injection."""
from __future__ import annotations

import threading
from typing import Annotated

from fastapi import Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from app.api.errors import Busy
from app.data import AtlasStore


async def get_store(request: Request) -> AtlasStore:
    """The store app.server.create_app put on ``app.state``."""
    # async: a plain attribute read needs no trip through the thread pool
    return request.app.state.store


Store = Annotated[AtlasStore, Depends(get_store)]


async def cached_json(store: AtlasStore, key: tuple, answer) -> Response:
    """The JSON of ``answer()`` (a model), kept in the store's bounded cache under ``key``
    (atlas name first; the atlas's manifest stamp is added, so a replaced atlas is never
    answered from the cache). Answers of an atlas are immutable: a repeated request costs a
    dictionary lookup on the event loop, instead of a trip through the thread pool, the
    query, the model's validation and its serialisation. Errors are raised, never cached."""
    def body() -> bytes:
        model: BaseModel = answer()
        return model.__pydantic_serializer__.to_json(model)

    return Response(await cached_bytes(store, key, body), media_type="application/json")


async def cached_bytes(store: AtlasStore, key: tuple, make) -> bytes:
    """``make()`` (bytes) through the store's cache: a hit is served on the event loop, a
    miss computed in the thread pool (it reads files and may take a while)."""
    body = store.peek(key)
    if body is None:
        body = await run_in_threadpool(store.cached, key, make)
    return body


# Exports and figure renders take 0.1-2 s of a worker's CPU each. At most this many run at
# once per worker, so that a user asking for many of them cannot take every thread of the
# pool from the others' cards and searches; a request waits HEAVY_WAIT seconds for a slot,
# then gets a 503 with Retry-After.
HEAVY_SLOTS = 2
HEAVY_WAIT = 20.0
_heavy = threading.BoundedSemaphore(HEAVY_SLOTS)


class HeavyWork:
    """``with HeavyWork():`` holds one of the worker's heavy-work slots (sync code, i.e. in the
    thread pool); raises ``Busy`` (503, Retry-After) when none comes free in time."""

    def __enter__(self):
        if not _heavy.acquire(timeout=HEAVY_WAIT):
            raise Busy(f"busy: {HEAVY_SLOTS} exports or figure renders are already running in this worker; "
                       f"retry in a few seconds")

    def __exit__(self, *exc) -> None:
        _heavy.release()
