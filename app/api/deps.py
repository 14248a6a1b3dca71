"""What the routes are handed by FastAPI's dependency injection."""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.data import AtlasStore


async def get_store(request: Request) -> AtlasStore:
    """The store app.server.create_app put on ``app.state``."""
    # async: a plain attribute read needs no trip through the thread pool
    return request.app.state.store


Store = Annotated[AtlasStore, Depends(get_store)]
