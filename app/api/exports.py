"""``/api/atlases/{atlas}/layers/{layer}/export``: a selection or a lobe of features as CSV or Parquet."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from app.api.deps import HeavyWork, Store, cached_bytes
from app.api.errors import RESPONSES
from app.data import Layout
from app.queries import exports as queries

router = APIRouter(prefix="/atlases/{atlas}/layers/{layer}", tags=["exports"], responses=RESPONSES)


@router.get("/export", summary="Export selected features as CSV or Parquet",
            responses={200: {"content": {media: {} for media in queries.MEDIA_TYPES.values()}}})
async def export(store: Store, atlas: str, layer: int,
           features: Annotated[str, Query(max_length=100_000,
                                          description="ids and ranges, e.g. 1,2,10-20; empty = all")] = "",
           lobe: Annotated[str, Query(max_length=60, description="the features of one lobe, affinity:k:lobe, "
                                                                 "e.g. phi:8:3 (instead of features)")] = "",
           format: queries.Format = "csv", layout: Layout = "pca") -> Response:
    def make() -> bytes:   # kept in the store's bounded cache (a huge export is not kept)
        with HeavyWork():
            body, _ = queries.export(store, atlas, layer, features, lobe, format, layout)
        return body.encode() if isinstance(body, str) else body

    body = await cached_bytes(store, (atlas, "export", layer, features, lobe, format, layout), make)
    name = queries.file_name(atlas, layer, lobe, format)
    return Response(body, media_type=queries.MEDIA_TYPES[format],
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})
