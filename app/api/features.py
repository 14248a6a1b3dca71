"""``/api/atlases/{atlas}/layers/{layer}/features/{feature}`` and ``.../search``: one feature, or finding one."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import Store
from app.api.errors import RESPONSES
from app.models import FeatureCard, SearchResult
from app.queries import features as queries

router = APIRouter(prefix="/atlases/{atlas}/layers/{layer}", tags=["features"], responses=RESPONSES)


@router.get("/features/{feature}", summary="A feature's card: frequency, neighbors, contexts, tokens, partners")
def feature(store: Store, atlas: str, layer: int, feature: int,
            k: Annotated[int, Query(ge=1, le=100, description="neighbors to return")] = 10) -> FeatureCard:
    return queries.feature_card(store, atlas, layer, feature, k)


@router.get("/search", summary="Find features by id, top token or context text")
def search_route(store: Store, atlas: str, layer: int, q: Annotated[str, Query(min_length=1, max_length=200)],
                 limit: Annotated[int, Query(ge=1, le=200)] = 20) -> SearchResult:
    return SearchResult(query=q, hits=queries.search(store, atlas, layer, q, limit))
