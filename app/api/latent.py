"""``/api/atlases/{atlas}/latent/...``: the latent geometry of an atlas's model (METHODS 4).

An atlas without a latent capture answers 404 with a message saying so; a layer outside the
model, a sample token or capture slot outside the capture answer 404 naming the range.
"""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import Store, cached_json
from app.api.errors import RESPONSES
from app.models import LatentNorms, LatentPoints, LatentProjection, LatentSeparation, LatentSummary, LatentToken
from app.queries import latent as queries

router = APIRouter(prefix="/atlases/{atlas}/latent", tags=["latent"], responses=RESPONSES)


@router.get("", summary="What the latent capture holds: captures, tensors, documents, sample sizes")
def latent_summary(store: Store, atlas: str) -> LatentSummary:
    return queries.summary(store, atlas)


@router.get("/points", summary="3-D coordinates of captured states: one block's five captures, or all layers")
async def latent_points(
        store: Store, atlas: str,
        layer: Annotated[int | None, Query(description="the block; absent: every capture of every layer "
                                                       "(one PCA, pca only)")] = None,
        projection: LatentProjection = "pca",
        tokens: Annotated[int | None, Query(ge=0, description="sample tokens per capture (a prefix of the "
                                                              "uniform sample); absent: all")] = None
) -> LatentPoints:
    return await cached_json(store, (atlas, "latent-points", layer, projection, tokens),
                             lambda: queries.points(store, atlas, layer, projection, tokens))


@router.get("/norms", summary="Norm per capture (median, p90, position 0, their ratio) and per position")
async def latent_norms(store: Store, atlas: str) -> LatentNorms:
    return await cached_json(store, (atlas, "latent-norms"), lambda: queries.norms(store, atlas))


@router.get("/separation", summary="Attention vs MLP outputs per layer: accuracy and silhouette with shuffle baselines")
def latent_separation(store: Store, atlas: str) -> LatentSeparation:
    return queries.separation(store, atlas)


@router.get("/tokens/{sample}", summary="A sample token in its document, with the norm of one capture there")
def latent_token(store: Store, atlas: str, sample: int,
                 slot: Annotated[int | None, Query(description="capture slot whose norm to give")] = None,
                 window: Annotated[int, Query(ge=0, le=200, description="tokens on each side")] = queries.CONTEXT
                 ) -> LatentToken:
    return queries.token(store, atlas, sample, slot, window)
