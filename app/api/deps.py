"""What the routes are handed by FastAPI's dependency injection."""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

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
