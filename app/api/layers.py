"""``/api/atlases/{atlas}/layers/{layer}/...``: one layer's points, lobes, crystals and atom summary."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import Store, cached_json
from app.api.errors import RESPONSES
from app.data import Affinity, Layout
from app.models import AtomSummary, Crystal, Lobes, Points
from app.queries import layers as queries

router = APIRouter(prefix="/atlases/{atlas}/layers/{layer}", tags=["layers"], responses=RESPONSES)


@router.get("/points", summary="3-D coordinates, firing frequency and lobe labels of every feature")
async def points(store: Store, atlas: str, layer: int, layout: Layout = "pca", affinity: Affinity = "phi",
           k: Annotated[int | None, Query(ge=1, description="lobe count; default: the smallest computed")] = None
           ) -> Points:
    return await cached_json(store, (atlas, "points", layer, layout, affinity, k),
                             lambda: queries.points(store, atlas, layer, layout, affinity, k))


@router.get("/lobes", summary="Lobes at one (affinity, k)")
async def lobes(store: Store, atlas: str, layer: int, k: Annotated[int, Query(ge=1)], affinity: Affinity = "phi") -> Lobes:
    return await cached_json(store, (atlas, "lobes", layer, affinity, k), lambda: queries.lobes(store, atlas, layer, affinity, k))


@router.get("/crystals", summary="Crystal faces (parallelograms, trapezoids) with their quality")
def crystals(store: Store, atlas: str, layer: int, min_cos: Annotated[float, Query(ge=-1, le=1)] = 0.0,
             limit: Annotated[int, Query(ge=1, le=100_000)] = 500) -> list[Crystal]:
    return queries.crystals(store, atlas, layer, min_cos, limit)


@router.get("/atom", summary="Crystals against their random baseline, best faces, LDA silhouette, distractor")
def atom(store: Store, atlas: str, layer: int,
         best: Annotated[int, Query(ge=0, le=1000, description="best faces to list")] = 15) -> AtomSummary:
    return queries.atom_summary(store, atlas, layer, best)
