"""``/api/atlases``: the atlases served, one atlas's manifest, the spectra of its layers."""
from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import Store
from app.api.errors import RESPONSES
from app.models import AtlasDetail, AtlasSummary, Spectra
from app.queries import atlases as queries

router = APIRouter(prefix="/atlases", tags=["atlases"], responses=RESPONSES)


@router.get("", summary="The atlases served")
def list_atlases(store: Store) -> list[AtlasSummary]:
    return queries.summaries(store)


@router.get("/{atlas}", summary="Manifest summary of one atlas")
def atlas_detail(store: Store, atlas: str) -> AtlasDetail:
    return queries.detail(store, atlas)


@router.get("/{atlas}/spectra", summary="Eigenvalue spectra with power-law fits")
def spectra(store: Store, atlas: str) -> Spectra:
    return queries.spectra(store, atlas)
