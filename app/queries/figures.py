"""A figure of the explorer for the view a permalink's parameters describe."""
from __future__ import annotations

import plotly.graph_objects as go

from app import figures
from app.data import AtlasStore, BadParameter, UnknownItem
from app.state import Coloring, ViewState, resolve_coloring


def figure_state(store: AtlasStore, atlas: str, layer: int, layout: str = "pca", color: str = "lobe",
                 feature: int | None = None, min_edge_cos: float | None = None, face: int | None = None,
                 size_by_freq: bool = False) -> ViewState:
    """The view a figure is drawn for. Unlike a permalink, which snaps to the nearest view,
    a figure request asks for exactly this one: what the layer does not hold is UnknownItem."""
    store.layer(atlas, layer)
    try:
        coloring = Coloring.parse(color)
    except ValueError as e:
        raise BadParameter(f"color: {color[:40]!r}; {e}") from None
    resolved, why = resolve_coloring(coloring, store, atlas, layer)
    if why:
        raise UnknownItem(f"color={color}: " + why.split(";")[0])
    if feature is not None:
        store.check_feature(atlas, layer, feature)
    if face is not None:
        tab = store.crystals(atlas, layer)
        if tab is None or not 0 <= face < len(tab):
            raise UnknownItem(f"layer {layer} has no crystal face {face}")
    return ViewState(atlas=atlas, layer=layer, layout=layout, coloring=resolved, feature=feature,
                     min_edge_cos=min_edge_cos, face=face, size_by_freq=size_by_freq)


def check_name(name: str) -> None:
    """UnknownItem, listing the figures, unless ``name`` is one of them."""
    if name not in figures.FIGURES:
        raise UnknownItem(f"no figure {name[:40]!r}; figures: {', '.join(figures.FIGURES)}")


def figure(store: AtlasStore, name: str, st: ViewState) -> go.Figure:
    """Figure ``name`` of view ``st``; UnknownItem for an unknown figure or one whose data the layer lacks."""
    check_name(name)
    fig = figures.FIGURES[name](store, st)
    if fig is None:
        raise UnknownItem(f"layer {st.layer} of atlas {st.atlas!r} lacks the data of figure {name!r}"
                          + (" (select a feature with f=)" if name == "activations" and st.feature is None else ""))
    return fig
