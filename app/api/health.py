"""``/healthz``: liveness, outside ``/api`` where load balancers look for it."""
from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import Store
from app.models import Health

router = APIRouter(tags=["server"])


@router.get("/healthz", summary="Liveness check")
def healthz(store: Store) -> Health:
    return Health(status="ok", atlases=len(store.names()))
