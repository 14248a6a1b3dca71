"""``/api/comparisons/...``: comparisons of two SAE sets (``saegeo compare``, METHODS 5).

An unknown comparison, or a layer pair it did not compare, answers 404 naming what there is.
"""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import Store
from app.api.errors import RESPONSES
from app.models import ComparisonDetail, ComparisonSummary, Pairs, PairSort, Subspaces
from app.queries import universality as queries

router = APIRouter(prefix="/comparisons", tags=["universality"], responses=RESPONSES)


@router.get("", summary="The comparisons served, with the served atlas of each side")
def list_comparisons(store: Store) -> list[ComparisonSummary]:
    return queries.summaries(store)


@router.get("/{comparison}", summary="One comparison: sides, alignment, settings, SVCCA/RSA matrices with p-values")
def comparison(store: Store, comparison: str) -> ComparisonDetail:
    return queries.detail(store, comparison)


@router.get("/{comparison}/pairs/{layer_a}/{layer_b}", summary="A page of the paired features of a layer pair")
def pairs(store: Store, comparison: str, layer_a: int, layer_b: int,
          offset: Annotated[int, Query(ge=0)] = 0,
          limit: Annotated[int, Query(ge=1, le=queries.MAX_LIMIT)] = 50,
          sort: Annotated[PairSort, Query(description="corr, -corr (highest first), feature_b or feature_a")] = "-corr",
          min_corr: Annotated[float | None, Query(ge=-1, le=1, description="lowest correlation listed")] = None,
          kept: Annotated[bool, Query(description="only the pairs kept by the filters and the pairing rule")] = True,
          q: Annotated[str | None, Query(max_length=100, description="a feature id (#12) or a token")] = None
          ) -> Pairs:
    return queries.pairs(store, comparison, layer_a, layer_b, offset, limit, sort, min_corr, kept, q)


@router.get("/{comparison}/subspaces", summary="Keyword groups: SVCCA and RSA with p-values, or why skipped")
def subspaces(store: Store, comparison: str,
              layer_a: Annotated[int | None, Query(description="with layer_b: one layer pair only")] = None,
              layer_b: int | None = None) -> Subspaces:
    return queries.subspaces(store, comparison, layer_a, layer_b)
