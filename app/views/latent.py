"""The Latent view (METHODS 4): captured states of the model in 3-D, their norms, and how far
attention and MLP outputs separate, layer by layer.

The 3-D figure has two traces, so a click and a selection can address them by index:

    0  the points: capture-major (point i = capture ``slots[i // n_tokens]`` of sample token
       ``i % n_tokens``, see app.queries.latent.Cloud), coloured by kind, layer or position
    1  the selected point (one large marker)

The all-layers view shows every capture slot of the first ``max_tokens`` sample tokens (a
prefix of a uniform sample is itself uniform), at most ``MAX_POINTS`` points in all.
"""
from __future__ import annotations

import html as _html

import numpy as np
from dash import Patch, html

from analysis.latent import KINDS, slot_of
from app.data import AtlasStore, readable_token
from app.queries import latent as queries
from app.state import ViewState
from app.views.cloud import typed

MAX_POINTS = 60_000      # all layers of SmolLM2 at the demo's sample: 122 captures x 491 tokens
MAX_HOVER = 20_000       # above this, hover labels cost more than they help; a click shows the token
KIND_COLOURS = {"embed": "#7f7f7f", "resid_pre": "#8c564b", "attn_out": "#1f77b4", "resid_mid": "#9467bd",
                "mlp_out": "#ff7f0e", "resid_post": "#2ca02c", "final_norm": "#d62728"}
KIND_LABELS = {"embed": "embedding", "resid_pre": "residual in", "attn_out": "attention out",
               "resid_mid": "residual mid", "mlp_out": "MLP out", "resid_post": "residual out",
               "final_norm": "final norm"}
COLOR_OPTIONS = [{"label": "capture kind", "value": "kind"}, {"label": "layer", "value": "layer"},
                 {"label": "sequence position", "value": "position"}]
AXIS = {"showspikes": False, "backgroundcolor": "#fafafa", "tickfont": {"size": 9}}


def view_cloud(store: AtlasStore, st: ViewState) -> queries.Cloud:
    n_slots = 4 * queries.n_layers(store, st.atlas) + 2 if st.latent_layer is None else 5
    return queries.cloud(store, st.atlas, st.latent_layer, st.latent_projection,
                         max(1, MAX_POINTS // n_slots))


def _discrete(values: np.ndarray, colours: list[str]) -> dict:
    # colours as numbers through a stepped colour scale keep the array binary, as in the cloud
    n = len(colours)
    scale = []
    for i, c in enumerate(colours):
        scale += [[i / n, c], [(i + 1) / n, c]]
    return {"color": typed(values.astype(np.int16)), "colorscale": scale, "cmin": -0.5, "cmax": n - 0.5,
            "showscale": False}


def colouring(cl: queries.Cloud, st: ViewState, n_layers: int) -> tuple[dict, list]:
    """Marker colour settings of trace 0, and the legend ``[(colour, label, n points)]``."""
    T = cl.n_tokens
    if st.latent_color == "kind":
        kinds = list(dict.fromkeys(cl.kinds))
        idx = np.repeat([kinds.index(k) for k in cl.kinds], T)
        legend = [(KIND_COLOURS[k], KIND_LABELS[k], int((idx == i).sum())) for i, k in enumerate(kinds)]
        return _discrete(idx, [KIND_COLOURS[k] for k in kinds]), legend
    if st.latent_color == "layer":
        vals = np.repeat(np.asarray(cl.depths, np.float32), T)
        bar = {"title": {"text": "layer"}, "thickness": 12, "len": 0.6}
        return {"color": typed(vals), "colorscale": "Viridis", "showscale": True, "colorbar": bar,
                "cmin": -1, "cmax": n_layers}, []
    vals = np.tile(cl.sample[:, 1].astype(np.float32), len(cl.slots))
    bar = {"title": {"text": "position"}, "thickness": 12, "len": 0.6}
    return {"color": typed(vals), "colorscale": "Plasma", "showscale": True, "colorbar": bar,
            "cmin": 1, "cmax": float(max(vals.max(initial=1), 2))}, []


def hover(store: AtlasStore, st: ViewState, cl: queries.Cloud) -> list[str] | None:
    if len(cl.xyz) > MAX_HOVER:
        return None
    docs = store.latent_docs(st.atlas)
    toks = [_html.escape(readable_token(docs.iloc[int(d)]["tokens"][int(p)])) for d, p in cl.sample]
    out = []
    for kind, depth in zip(cl.kinds, cl.depths):
        where = KIND_LABELS[kind] + ("" if kind in ("embed", "final_norm") else f", layer {depth}")
        out += [f"{where}<br>pos {int(p)}: {t}" for t, p in zip(toks, cl.sample[:, 1])]
    return out


def selected(cl: queries.Cloud, st: ViewState) -> dict:
    """Trace 1's coordinates: the selected point, or nothing."""
    i = cl.point(*st.latent_point) if st.latent_point is not None else None
    pts = cl.xyz[[i]] if i is not None else np.zeros((0, 3), np.float32)
    return {"x": typed(pts[:, 0]), "y": typed(pts[:, 1]), "z": typed(pts[:, 2])}


def figure(store: AtlasStore, st: ViewState) -> tuple[dict, list, str]:
    """The 3-D figure (a plain dict: no validation pass over the arrays), its legend, a note."""
    n = queries.n_layers(store, st.atlas)
    cl = view_cloud(store, st)
    marker, legend = colouring(cl, st, n)
    text = hover(store, st, cl)
    points = {"type": "scatter3d", "mode": "markers", "name": "captures",
              "x": typed(cl.xyz[:, 0]), "y": typed(cl.xyz[:, 1]), "z": typed(cl.xyz[:, 2]),
              "marker": {**marker, "size": 2.5 if len(cl.xyz) > MAX_HOVER else 3.5, "opacity": 0.8,
                         "line": {"width": 0}}}
    if text is not None:
        points.update(text=text, hovertemplate="%{text}<extra></extra>")
    else:
        points["hovertemplate"] = "click to show the token<extra></extra>"
    sel = {"type": "scatter3d", "mode": "markers", "name": "selected", "hoverinfo": "skip",
           "marker": {"color": "#111", "size": 9, "opacity": 1, "line": {"color": "#fff", "width": 1}},
           **selected(cl, st)}
    proj = "UMAP" if st.latent_projection == "umap" else "PC"
    scene = {f"{c}axis": {**AXIS, "title": {"text": f"{proj}{i + 1}"}} for i, c in enumerate("xyz")}
    fig = {"data": [points, sel],
           "layout": {"scene": {**scene, "aspectmode": "cube", "uirevision": "latent"}, "uirevision": "latent",
                      "margin": {"l": 0, "r": 0, "t": 0, "b": 0}, "showlegend": False, "template": "none",
                      "paper_bgcolor": "white", "hovermode": "closest"}}
    lat = store.latent(st.atlas)
    if st.latent_layer is None:
        what = (f"every capture of every layer ({len(cl.slots)} captures: embedding, 4 per block, final norm), "
                f"projected onto one PCA of them all")
    else:
        fit = "its own cosine UMAP" if st.latent_projection == "umap" else "the PCA of its five captures"
        what = f"the five captures of layer {st.latent_layer}, projected onto {fit}"
    note = (f"{len(cl.xyz):,} points: {what}; {cl.n_tokens} of the {lat.sample_tokens} sampled tokens "
            f"(positions >= 1) of {lat.n_docs} documents. PCA is fitted with centring and applied without it, "
            f"so the origin is the origin. Click a point to see its token in context.")
    return fig, legend, note


def patch_selection(store: AtlasStore, st: ViewState) -> Patch:
    p = Patch()
    p["data"][1].update(selected(view_cloud(store, st), st))
    return p


def clicked_point(store: AtlasStore, st: ViewState, click) -> tuple[int, int] | None:
    """``(slot, sample)`` of a click on trace 0 (from the point's index; nothing else on the wire)."""
    pt = ((click or {}).get("points") or [{}])[0]
    idx = pt.get("pointNumber")
    if pt.get("curveNumber") != 0 or not isinstance(idx, int):
        return None
    cl = view_cloud(store, st)
    return cl.at(idx) if 0 <= idx < len(cl.xyz) else None


def legend(entries: list) -> list:
    if not entries:
        return [html.P("continuous colour scale (see the bar beside the plot)", className="muted")]
    return [html.Div([html.Span(className="swatch", style={"background": c}), html.Span(label, className="lname"),
                      html.Span(f" ({n:,})", className="muted")], className="lrow") for c, label, n in entries]


# --------------------------------------------------------------------------- panels


def _layer_line(st: ViewState) -> list:
    if st.latent_layer is None:
        return []
    return [{"type": "line", "xref": "x", "yref": "paper", "x0": st.latent_layer, "x1": st.latent_layer,
             "y0": 0, "y1": 1, "line": {"color": "#bbb", "width": 1, "dash": "dot"}}]


def _panel_layout(title: str, xtitle: str, ytitle: str, **more) -> dict:
    return {"title": {"text": title, "font": {"size": 13}}, "template": "none", "height": 380,
            "margin": {"l": 55, "r": 10, "t": 36, "b": 40}, "hovermode": "closest",
            "xaxis": {"title": {"text": xtitle, "standoff": 4}}, "yaxis": {"title": {"text": ytitle}},
            "legend": {"font": {"size": 10}, "orientation": "h", "y": -0.2, "yanchor": "top"}, **more}


def norms_by_layer(store: AtlasStore, st: ViewState) -> dict:
    """Median norm (positions >= 1) of the residual stream, attention and MLP outputs against
    layer, and the position-0 norm of each as its own dotted trace (log scale)."""
    norms = queries.norms(store, st.atlas)
    n = queries.n_layers(store, st.atlas)
    data = []
    groups = {"residual stream": ("resid_post", "embed", "final_norm"), "attention out": ("attn_out",),
              "MLP out": ("mlp_out",)}
    for label, kinds in groups.items():
        rows = sorted((s for s in norms.slots if s.kind in kinds), key=lambda s: s.depth)
        colour = KIND_COLOURS[kinds[0]]
        x = [s.depth for s in rows]
        data.append({"type": "scatter", "mode": "lines+markers", "name": f"{label}, median", "x": x,
                     "y": [s.median for s in rows], "line": {"color": colour}, "marker": {"size": 4},
                     "customdata": [s.capture for s in rows],
                     "hovertemplate": "%{customdata}<br>median %{y:.3g}<extra></extra>"})
        data.append({"type": "scatter", "mode": "lines+markers", "name": f"{label}, position 0", "x": x,
                     "y": [s.pos0 for s in rows], "line": {"color": colour, "dash": "dot", "width": 1},
                     "marker": {"size": 6, "symbol": "diamond-open"}, "customdata": [s.capture for s in rows],
                     "hovertemplate": "%{customdata}<br>position 0: %{y:.3g}<extra></extra>"})
    return {"data": data, "layout": _panel_layout(
        "Norm against layer (position 0 apart)", f"layer (-1: embedding, {n}: final norm)", "L2 norm",
        yaxis={"title": {"text": "L2 norm"}, "type": "log"}, shapes=_layer_line(st))}


def norms_by_position(store: AtlasStore, st: ViewState) -> dict:
    """Median norm over documents at each position (positions >= 1 as lines), position 0 as
    its own markers: the five captures of the layer shown, or the residual stream at a few
    depths for all layers."""
    lat = store.latent(st.atlas)
    n = queries.n_layers(store, st.atlas)
    by_pos = store.latent_position_norms(st.atlas)
    if st.latent_layer is None:
        depths = sorted({0, n // 4, n // 2, (3 * n) // 4, n - 1})
        shown = [(0, "embedding", "#7f7f7f")] + [
            (slot_of(n, L, "resid_post"), f"residual out, layer {L}", None) for L in depths] + [
            (4 * n + 1, "final norm", KIND_COLOURS["final_norm"])]
        title = "Norm against position: the residual stream at a few depths"
    else:
        shown = [(slot_of(n, st.latent_layer, k), KIND_LABELS[k], KIND_COLOURS[k]) for k in KINDS]
        title = f"Norm against position: the captures of layer {st.latent_layer}"
    pos = np.arange(by_pos.shape[1])
    data = []
    for i, (slot, label, colour) in enumerate(shown):
        colour = colour or _ramp(i / max(len(shown) - 1, 1))
        row = by_pos[slot]
        ok = np.isfinite(row) & (pos >= 1)
        data.append({"type": "scatter", "mode": "lines", "name": label, "x": pos[ok].tolist(),
                     "y": row[ok].tolist(), "line": {"color": colour, "width": 1.5}, "legendgroup": label,
                     "hovertemplate": f"{label}<br>position %{{x}}: %{{y:.3g}}<extra></extra>"})
        if np.isfinite(row[0]):
            data.append({"type": "scatter", "mode": "markers", "name": f"{label}, position 0", "x": [0],
                         "y": [float(row[0])], "marker": {"color": colour, "size": 9, "symbol": "diamond"},
                         "legendgroup": label, "showlegend": False,
                         "hovertemplate": f"{label}<br>position 0: %{{y:.3g}}<extra></extra>"})
    first = "position 0 = BOS" if lat.bos else "position 0"
    return {"data": data, "layout": _panel_layout(title, f"position ({first}: diamonds)", "median L2 norm",
                                                  yaxis={"title": {"text": "median L2 norm"}, "type": "log"})}


def _ramp(t: float) -> str:
    # green (shallow) to blue (deep) for the residual stream's depths
    a, b = np.array([0x2c, 0xa0, 0x2c]), np.array([0x1f, 0x3b, 0x8c])
    r, g, bl = (a + (b - a) * t).astype(int)
    return f"#{r:02x}{g:02x}{bl:02x}"


def separation(store: AtlasStore, st: ViewState) -> dict:
    """Attention vs MLP outputs per layer: accuracy (top) and silhouette (bottom), raw and on
    unit vectors, each beside its label-shuffle baseline (dashed)."""
    sep = queries.separation(store, st.atlas)
    x = [r.layer for r in sep.layers]
    data = []
    for part, colour, label in (("raw", "#1f77b4", "raw"), ("unit", "#ff7f0e", "unit-normalised")):
        for metric, axis in (("accuracy", "y"), ("silhouette", "y2")):
            vals = [getattr(getattr(r, part), metric) for r in sep.layers]
            base = [getattr(getattr(r, part), metric + "_shuffled") for r in sep.layers]
            show = axis == "y"
            data.append({"type": "scatter", "mode": "lines+markers", "name": label, "x": x, "y": vals,
                         "yaxis": axis, "line": {"color": colour}, "marker": {"size": 4}, "legendgroup": part,
                         "showlegend": show, "hovertemplate": f"layer %{{x}}: {metric} {label} %{{y:.3f}}<extra></extra>"})
            data.append({"type": "scatter", "mode": "lines", "name": f"{label}, shuffled labels", "x": x,
                         "y": base, "yaxis": axis, "line": {"color": colour, "dash": "dash", "width": 1},
                         "legendgroup": part + "-shuffled", "showlegend": show,
                         "hovertemplate": f"layer %{{x}}: {metric} {label}, shuffled %{{y:.3f}}<extra></extra>"})
    lay = _panel_layout(f"Attention vs MLP outputs ({sep.tokens or '?'} tokens per layer)", "layer", "",
                        shapes=_layer_line(st))
    lay["yaxis"] = {"title": {"text": "CV accuracy"}, "domain": [0.55, 1.0], "range": [0.4, 1.02]}
    lay["yaxis2"] = {"title": {"text": "silhouette"}, "domain": [0.0, 0.45], "anchor": "x"}
    lay["xaxis"]["anchor"] = "y2"
    return {"data": data, "layout": lay}


def clicked_layer(store: AtlasStore, st: ViewState, click) -> int | None:
    """The block of a point clicked on a per-layer panel (its x value), when it is a block."""
    x = (((click or {}).get("points") or [{}])[0]).get("x")
    n = queries.n_layers(store, st.atlas)
    return int(x) if isinstance(x, (int, float)) and 0 <= int(x) < n else None


# --------------------------------------------------------------------------- the token


def token_card(store: AtlasStore, st: ViewState) -> list:
    """The clicked point's token in its document (the tokens around it, itself marked)."""
    if st.latent_point is None:
        return [html.P("Click a point to see its token in context.", className="hint", id="latent-card-hint")]
    slot, sample = st.latent_point
    t = queries.token(store, st.atlas, sample, slot)
    kind, depth = queries.slot_kind(t.capture, queries.n_layers(store, st.atlas))
    where = KIND_LABELS[kind] + ("" if kind in ("embed", "final_norm") else f", layer {depth}")
    words = []
    for i, tok in enumerate(t.tokens):
        shown = tok.replace("\n", "⏎ ")
        words.append(html.Mark(shown, id="latent-peak") if i == t.peak else html.Span(shown))
    norm = f"{t.norm:.4g}" if t.norm is not None else "n/a"
    return [html.H3(f"Token {readable_token(t.token)!r}", id="latent-token-title"),
            html.P([html.Strong(where), f" ({t.capture}); norm {norm}"], id="latent-token-capture"),
            html.P(f"document {t.corpus_doc} ({t.subset}), position {t.position}; sample token {t.sample}",
                   className="muted", id="latent-token-where"),
            html.H4("In context"),
            html.Div(words, className="ctx", id="latent-context")]
