"""The panels below the cloud: spectra of every layer, the lobes of the current colouring, the
crystals of the current layer; and the export row under every figure.

The figures themselves are built in app.figures (the API serves the same ones as HTML).
"""
from __future__ import annotations

from urllib.parse import urlencode

import plotly.graph_objects as go
from dash import dcc, html

from analysis.artefacts import BrainRow
from app import figures
from app.data import AtlasStore
from app.models import Lobes
from app.queries import layers
from app.state import ViewState
from app.views.card import face_item
from app.views.cloud import colour_of

GRAPH_IDS = {"cloud": "cloud", "spectra": "spectra"}  # others: "<name>-fig"
CONFIG = {"displaylogo": False, "modeBarButtonsToRemove": ["lasso2d", "select2d"]}


def figure_exports(name: str, st: ViewState, prefix: str = "/") -> html.Div:
    """"PNG · SVG · HTML" for figure ``name``: PNG and SVG made by plotly.js from the figure on
    the page, HTML (standalone, plotly.js inlined) from the API with the view's parameters."""
    graph = GRAPH_IDS.get(name, f"{name}-fig")
    fname = f"{st.atlas}-layer{st.layer}-{name}"
    # the figure route's parameters: the permalink's keys, except size, a plain boolean there
    params = {"layout": st.layout, "color": str(st.coloring)}
    for key, value in (("f", st.feature), ("q", st.min_edge_cos), ("face", st.face)):
        if value is not None:
            params[key] = value
    if st.size_by_freq:
        params["size"] = "true"
    href = (f"{prefix.rstrip('/')}/api/atlases/{st.atlas}/layers/{st.layer}/figures/{name}.html?"
            + urlencode(params, safe=":,"))
    btn = [html.Button(fmt.upper(), id={"type": "img-export", "graph": graph, "fmt": fmt, "name": fname},
                       className="linkbtn", title=f"download this figure as {fmt.upper()}") for fmt in ("png", "svg")]
    return html.Div([html.Span("download ", className="muted"), btn[0], " · ", btn[1], " · ",
                     html.A("HTML", href=href, target="_blank", rel="noopener", className="html-export",
                            title="standalone interactive HTML (opens offline)")],
                    className="fexports", id=f"{name}-exports-row")


def _graph(name: str, fig, st: ViewState, prefix: str, height: int | None = None) -> html.Div:
    style = {"height": f"{height or fig.layout.height or 320}px"}
    return html.Div([dcc.Graph(id=f"{name}-fig", figure=fig, config=CONFIG, style=style),
                     figure_exports(name, st, prefix)], className="pcell")


def spectra_figure(store: AtlasStore, st: ViewState) -> go.Figure | None:
    """Log-log eigenvalue spectra per layer with the power-law fit; ``meta`` of a trace = its layer."""
    return figures.spectra(store, st)


def lobes_panel(store: AtlasStore, st: ViewState, prefix: str = "/") -> list:
    """Sizes, names, subset composition (table and heat map), statistics and exports of the lobes."""
    choice = st.coloring.lobes
    if choice is None:
        return [html.P("Colour by lobe or geometry cluster to list its lobes here.", className="hint")]
    aff, k = choice
    # through the answers the API keeps (same key, same JSON): computed once for both
    lobes = Lobes.model_validate_json(store.cached(
        (st.atlas, "lobes", st.layer, aff, k), lambda: _json(layers.lobes(store, st.atlas, st.layer, aff, k))))
    base = f"{prefix.rstrip('/')}/api/atlases/{st.atlas}/layers/{st.layer}/export?layout={st.layout}"
    rows = []
    for lobe in lobes.lobes:
        tot = sum(lobe.subsets.values()) or 1
        top = ", ".join(f"{s} {b / tot:.0%}" for s, b in sorted(lobe.subsets.items(), key=lambda x: -x[1])[:3])
        spec = f"{aff}:{k}:{lobe.lobe}"
        rows.append(html.Tr([html.Td(html.Span(className="swatch", style={"background": colour_of(lobe.lobe)})),
                             html.Td(str(lobe.lobe)), html.Td(str(lobe.size)), html.Td(lobe.name),
                             html.Td(top),
                             html.Td([html.A("CSV", href=f"{base}&format=csv&lobe={spec}", download=""), " · ",
                                      html.A("Parquet", href=f"{base}&format=parquet&lobe={spec}", download="")],
                                     className="lobe-export")]))
    table = html.Table([html.Thead(html.Tr([html.Th(""), html.Th("lobe"), html.Th("size"), html.Th("top tokens"),
                                            html.Th("blocks won (subset)"), html.Th("features")])),
                        html.Tbody(rows)], className="lobes", id="lobes-table")
    out = []
    if lobes.stats:
        out.append(html.P(f"{aff}, k={k}: " + brain_summary(lobes.stats), className="muted", id="lobe-stats"))
    heat = figures.lobe_subsets(store, st)
    right = [_graph("lobe-subsets", heat, st, prefix)] if heat is not None else [
        html.P("No corpus-subset tally for these lobes (lobe_subsets.parquet).", className="hint")]
    return out + [html.Div([html.Div(table, className="pcell"), *right], className="prow")]


def crystals_panel(store: AtlasStore, st: ViewState, prefix: str = "/") -> list:
    """Face counts against the random baseline, the best faces (links), LDA silhouette, distractor."""
    s = store.reuse((st.atlas, "atom-summary", st.layer, 15), lambda: layers.atom_summary(store, st.atlas, st.layer, 15))
    left: list = []
    if s.n_faces is None:
        left.append(html.P("No crystals in this layer (the geometry stage's crystal search).", className="hint"))
    else:
        text = f"{s.n_faces} faces ({s.n_parallelogram} parallelograms, {s.n_trapezoid} trapezoids)"
        b = s.baseline
        if b is not None:
            per = ", ".join(str(x) for x in b.n_faces)
            text += (f"; random directions of matched {b.match}: {b.faces_mean:.1f} faces on "
                     f"average ({per} over {b.n_repeats} draws)")
        else:
            text += "; no random baseline in this atlas"
        left.append(html.P(text, id="crystal-counts"))
        rows = [face_item(st, prefix, x, feature=x.a) for x in s.best]
        if rows:
            left += [html.H4("Best faces (click to draw)"), html.Ol(rows, id="best-faces", className="nlist")]
    right = []
    for name in ("silhouette", "distractor"):
        fig = figures.FIGURES[name](store, st)
        if fig is not None:
            right.append(_graph(name, fig, st, prefix, 340))
    if not right:
        right.append(html.P("No word-pair analysis in this layer (atom.json: capture word pairs in precompute).",
                            className="hint"))
    elif s.lda is not None and s.lda.best_dim is not None:
        left.append(html.P(f"{s.n_pairs} word pairs; best LDA dimension {s.lda.best_dim}; raw silhouette "
                           f"{s.lda.raw_silhouette:.3f}", className="muted", id="atom-note"))
    return [html.Div([html.Div(left, className="pcell faces"), *right], className="prow")]


def _json(model) -> bytes:
    return model.__pydantic_serializer__.to_json(model)


def brain_summary(entry: BrainRow) -> str:
    """One line: AMI against geometry and balanced accuracy, each with its z-score."""
    def z(v: float | None) -> float:
        return float("nan") if v is None else v   # no spread in the null: no z

    parts = [f"AMI vs geometry {entry.ami.ami:.3f} (z = {z(entry.ami.z):.1f} over permutations)"]
    reg = entry.regression
    if reg is not None and reg.accuracy is not None:
        parts.append(f"balanced accuracy from directions {reg.accuracy:.2f} vs {reg.random_mean:.2f} "
                     f"random (z = {z(reg.z):.1f})")
    return "; ".join(parts)
