"""``/api/atlases/{atlas}/layers/{layer}/figures/{name}.{fmt}``: any figure of the explorer, standalone."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response

from app import figures
from app.api.deps import HeavyWork, Store
from app.api.errors import RESPONSES
from app.data import Layout
from app.queries import figures as queries

router = APIRouter(prefix="/atlases/{atlas}/layers/{layer}", tags=["figures"], responses=RESPONSES)

DESCRIPTION = (
    "Figures: " + ", ".join(figures.FIGURES) + ". HTML inlines plotly.js (opens offline); JSON is the plotly "
    "figure (data and layout). PNG and SVG are rendered by plotly.js in the browser from the same figures (the "
    "PNG/SVG buttons under each figure). The query parameters are the permalink's: they choose what the cloud, "
    "the lobe heat map and the activation histogram show. 404: unknown figure, or one whose data this atlas lacks.")


@router.get("/figures/{name}.{fmt}", summary="A figure of the explorer as standalone HTML or plotly JSON",
            description=DESCRIPTION, responses={200: {"content": {"text/html": {}, "application/json": {}}}})
def figure(store: Store, atlas: str, layer: int, name: str, fmt: str, layout: Layout = "pca",
           color: Annotated[str, Query(max_length=40,
                                       description="lobe:<affinity>:<k>, freq, subset, geometry:<k>")] = "lobe",
           f: Annotated[int | None, Query(description="selected feature (cloud overlays, activations)")] = None,
           q: Annotated[float | None, Query(ge=-1, le=1, description="crystal overlay: minimum edge cosine")] = None,
           face: Annotated[int | None, Query(ge=0, description="crystal face drawn (row of crystals.parquet)")] = None,
           size: Annotated[bool, Query(description="size cloud points by firing frequency")] = False) -> Response:
    # the path is checked before the atlas is opened: a wrong extension is wrong for every atlas
    queries.check_name(name)
    if fmt not in ("html", "json"):
        raise HTTPException(404, detail=f"figures are served as .html or .json, not .{fmt[:10]}; "
                                        "PNG and SVG come from the buttons under each figure in the explorer")
    st = queries.figure_state(store, atlas, layer, layout, color, feature=f, min_edge_cos=q, face=face,
                              size_by_freq=size)
    title = f"{atlas}-layer{layer}-{name}"
    with HeavyWork():
        fig = queries.figure(store, name, st)
        if fmt == "json":
            return Response(fig.to_json(), media_type="application/json")
        html = figures.standalone_html(fig, title)
    return Response(html, media_type="text/html", headers={"Content-Disposition": f'inline; filename="{title}.html"'})
