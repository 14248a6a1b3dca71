"""``/api/atlases/{atlas}/layers/{layer}/...``: one layer's points, lobes, crystals and atom summary."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import Store, cached_json
from app.api.errors import RESPONSES
from app.data import Affinity, Layout
from app.models import AtomSummary, Crystal, Lobes, Points
from app.queries import layers as queries
from app.queries import lod

# a selection as large as this is answered whole if asked (~110 bytes of JSON a point)
MAX_POINTS = 1_048_576

router = APIRouter(prefix="/atlases/{atlas}/layers/{layer}", tags=["layers"], responses=RESPONSES)


Bound = Annotated[float | None, Query(description="inclusive bound of the box, in the layout's coordinates")]


@router.get("/points", summary="3-D coordinates, firing frequency and lobe labels of a layer's features, "
                               "at a level of detail")
async def points(store: Store, atlas: str, layer: int, layout: Layout = "pca", affinity: Affinity = "phi",
                 k: Annotated[int | None, Query(ge=1, description="lobe count; default: the smallest computed")] = None,
                 max_points: Annotated[int, Query(ge=1, le=MAX_POINTS, description=(
                     "most features answered as points; a larger selection is answered as this many, the most "
                     "frequent of each region, and density cells for the rest"))] = lod.POINT_BUDGET,
                 lobe: Annotated[int | None, Query(ge=-1, description="only this lobe's features (at affinity, k)")] = None,
                 x_min: Bound = None, x_max: Bound = None, y_min: Bound = None, y_max: Bound = None,
                 z_min: Bound = None, z_max: Bound = None) -> Points:
    """The layer's features, or those of one lobe and/or within a box. A selection of at most
    ``max_points`` features (the explorer's budget by default) is answered whole, as ``ids``
    with their coordinates; a larger one as ``max_points`` points, stratified by the cells of a
    grid over the selection's box (most frequent first, every occupied cell keeping its most
    frequent feature), and ``density``: the other features as cells with centre and count. A
    client zooming in asks for a box and gets finer cells and more points there."""
    box = ((x_min, x_max), (y_min, y_max), (z_min, z_max))
    return await cached_json(store, (atlas, "points", layer, layout, affinity, k, max_points, lobe, box),
                             lambda: queries.points(store, atlas, layer, layout, affinity, k, max_points, lobe, box))


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
