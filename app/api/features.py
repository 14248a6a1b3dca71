"""``/api/atlases/{atlas}/layers/{layer}/features/{feature}`` and ``.../search``: one feature, or finding one."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import Store, cached_json
from app.api.errors import RESPONSES
from app.models import FeatureCard, SearchResult
from app.queries import features as queries

router = APIRouter(prefix="/atlases/{atlas}/layers/{layer}", tags=["features"], responses=RESPONSES)


@router.get("/features/{feature}", summary="A feature's card: frequency, neighbors, contexts, tokens, partners")
async def feature(store: Store, atlas: str, layer: int, feature: int,
            k: Annotated[int, Query(ge=1, le=100, description="neighbors to return")] = 10) -> FeatureCard:
    return await cached_json(store, (atlas, "card", layer, feature, k),
                             lambda: queries.feature_card(store, atlas, layer, feature, k))


@router.get("/search", summary="Find features by id, top token or context text")
async def search_route(store: Store, atlas: str, layer: int, q: Annotated[str, Query(min_length=1, max_length=200)],
                 limit: Annotated[int, Query(ge=1, le=200)] = 20) -> SearchResult:
    return await cached_json(store, (atlas, "search", layer, q, limit),
                             lambda: SearchResult(query=q, hits=queries.search(store, atlas, layer, q, limit)))
