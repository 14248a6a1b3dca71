"""Every figure the explorer draws, as plain plotly figures of one view.

The Dash views draw them, and the API serves them as standalone HTML (plotly.js inlined, no
network needed) or as plotly JSON. PNG and SVG are rendered in the browser by plotly.js
(``Plotly.downloadImage``) from the same figures, so every figure has one builder here:

    FIGURES[name](store, st) -> go.Figure | None      (None: the atlas lacks the data)

``st`` is a resolved ``ViewState`` (atlas, layer, layout, colouring, selected feature, ...).

* ``cloud``        the 3-D feature cloud with its overlays (app.views.cloud)
* ``spectra``      every layer's eigenvalue spectrum, log-log, with its power-law fit and the
                   isotropic baseline of the current layer (METHODS 3)
* ``alpha``        the power-law exponent alpha against layer with its 95 % interval
* ``negentropy``   clustering negentropy against layer with its bootstrap std
* ``lobe-subsets`` corpus-subset composition of the lobes of the current colouring (heat map)
* ``silhouette``   task silhouette against LDA dimension (METHODS 2; atom.json)
* ``distractor``   word-pair PC1 score against the last-token length difference (atom.json)
* ``activations``  activation histogram of the selected feature
"""
from __future__ import annotations

import functools
import html as _html
from typing import Callable

import numpy as np
import plotly.graph_objects as go

from analysis.artefacts import Atom, Galaxy
from analysis.atlas import LayerFiles
from app.data import AtlasStore
from app.state import ViewState
from app.views import cloud as cloud_view
from app.views.cloud import PALETTE, typed

_SMALL = {"margin": {"l": 55, "r": 10, "t": 30, "b": 40}, "plot_bgcolor": "white", "template": "none",
          "title": {"font": {"size": 13}, "x": 0.02, "xanchor": "left"}}
_GRID = {"showgrid": True, "gridcolor": "#eee", "zeroline": False}


def kept(*fields: str):
    """A builder whose figures are kept in the store's bounded cache by the view's ``fields``
    (those it reads) and the atlas: building validates every property through plotly (tens of
    ms), and the page asks for the same figure on every layer it opens. The figure is shared:
    never modify it."""
    def wrap(build):
        @functools.wraps(build)
        def cached(store: AtlasStore, st: ViewState) -> go.Figure | None:
            key = (st.atlas, "figure", build.__name__, *(str(getattr(st, f)) for f in fields))
            return store.reuse(key, lambda: build(store, st))
        return cached
    return wrap


def _galaxies(store: AtlasStore, atlas: str) -> dict[int, Galaxy]:
    a = store.open(atlas)
    return {L: g for L in a.layer_ids if (g := a.galaxy(L)) is not None}


def _num(x) -> bool:
    return isinstance(x, (int, float)) and np.isfinite(x)


@kept("layer")
def spectra(store: AtlasStore, st: ViewState) -> go.Figure | None:
    """Log-log spectra; ``meta`` of every trace is its layer (a click opens that layer).

    The isotropic baseline is drawn for the current layer only: an isotropic cloud of the same
    shape and total variance, whose finite-sample spectrum has the fitted slope of
    ``galaxy.json`` (``Galaxy.isotropic``; flat for infinitely many features).
    """
    a = store.open(st.atlas)
    galaxies = _galaxies(store, st.atlas)
    fig = go.Figure()
    current = None
    for i, L in enumerate(a.layer_ids):
        rel = LayerFiles(L).spectrum
        if not a.has(rel):
            continue
        lam = np.asarray(a.array(rel), dtype=np.float64)
        lam = lam[lam > 0]
        r = np.arange(1, len(lam) + 1)
        fit = galaxies[L].power_law if L in galaxies else None
        alpha = fit.alpha if fit is not None else None
        colour = PALETTE[i % len(PALETTE)]
        name = f"layer {L}" + (f"  α={alpha:.2f}" if _num(alpha) else "")
        fig.add_trace(go.Scatter(x=typed(r.astype(np.float32)), y=typed(lam), mode="lines", name=name, meta=L,
                                 line={"width": 3 if L == st.layer else 1.2, "color": colour},
                                 hovertemplate=f"layer {L}<br>rank %{{x}}: %{{y:.3g}}<extra></extra>"))
        if _num(alpha) and _num(fit.intercept):
            lo, hi = (fit.ranks or [11, 150])[:2]
            rr = np.array([lo, min(hi, len(lam))], dtype=np.float64)
            fig.add_trace(go.Scatter(x=rr, y=10 ** (fit.intercept - alpha * np.log10(rr)), mode="lines",
                                     line={"dash": "dot", "color": "#333", "width": 1}, showlegend=False,
                                     meta=L, hoverinfo="skip"))
        if L == st.layer and len(lam):
            current = (L, lam)
    if current is not None:  # drawn last: it sits at the end of the legend
        L, lam = current
        iso = galaxies[L].isotropic.alpha if L in galaxies else None
        iso = iso if _num(iso) else 0.0
        rr = np.array([1.0, float(len(lam))])
        mid = np.sqrt(len(lam))
        fig.add_trace(go.Scatter(x=rr, y=lam.mean() * (rr / mid) ** -iso, mode="lines", meta=L,
                                 name=f"isotropic (layer {L})", hoverinfo="skip",
                                 line={"dash": "dash", "color": "#999", "width": 1.5}))
    if not fig.data:
        return None
    fig.update_layout(xaxis={"type": "log", "title": {"text": "rank"}, **_GRID},
                      yaxis={"type": "log", "title": {"text": "eigenvalue"}, **_GRID},
                      legend={"font": {"size": 10}}, uirevision="spectra", **{**_SMALL, "title": None})
    return fig


def _per_layer(store: AtlasStore, st: ViewState, values: Callable[[Galaxy], tuple], title: str, ytitle: str,
               baseline: bool = False) -> go.Figure | None:
    """One galaxy number per layer; ``values(galaxy)`` = (value, error bar, baseline or None)."""
    rows = [(L, *values(g)) for L, g in _galaxies(store, st.atlas).items()]
    rows = [r for r in rows if _num(r[1])]
    if not rows:
        return None
    L, y, e, b = zip(*rows)
    e = [v if _num(v) else 0.0 for v in e]
    fig = go.Figure(go.Scatter(x=list(L), y=list(y), mode="lines+markers", name=ytitle,
                               error_y={"type": "data", "array": e, "visible": True, "thickness": 1.5, "width": 5},
                               marker={"size": [12 if v == st.layer else 7 for v in L], "color": "#1f5fbf"},
                               hovertemplate="layer %{x}: %{y:.3f} ± %{error_y.array:.3f}<extra></extra>"))
    if baseline and any(_num(v) for v in b):
        fig.add_trace(go.Scatter(x=list(L), y=[v if _num(v) else None for v in b], mode="lines",
                                 name="isotropic baseline", line={"dash": "dash", "color": "#999"},
                                 hovertemplate="isotropic: %{y:.3f}<extra></extra>"))
        last = next((v for v in reversed(b) if _num(v)), None)
        if last is not None:
            fig.add_annotation(x=L[-1], y=last, text="isotropic", showarrow=False, xanchor="right", yanchor="bottom",
                               font={"size": 10, "color": "#888"})
    fig.update_layout(title={**_SMALL["title"], "text": title}, showlegend=False,
                      xaxis={"title": {"text": "layer"}, "tickmode": "array", "tickvals": list(L), **_GRID},
                      yaxis={"title": {"text": ytitle}, **_GRID},
                      **{k: v for k, v in _SMALL.items() if k != "title"})
    return fig


@kept("layer")
def alpha(store: AtlasStore, st: ViewState) -> go.Figure | None:
    """Power-law exponent per layer with its 95 % interval (dashed: isotropic cloud's slope)."""
    return _per_layer(store, st, lambda g: (g.power_law.alpha, g.power_law.ci95, g.isotropic.alpha),
                      "power-law exponent α (95% interval)", "α", baseline=True)


@kept("layer")
def negentropy(store: AtlasStore, st: ViewState) -> go.Figure | None:
    """Clustering negentropy per layer with its bootstrap std."""
    return _per_layer(store, st, lambda g: (g.entropy.negentropy, g.entropy.negentropy_std, None),
                      "clustering negentropy (± bootstrap std)", "negentropy (nats)")


@kept("layer", "coloring")
def lobe_subsets(store: AtlasStore, st: ViewState) -> go.Figure | None:
    """Heat map lobe x corpus subset: share of each lobe's blocks won in each subset."""
    choice = st.coloring.lobes
    t = store.table(st.atlas, st.layer, "lobe_subsets.parquet")
    if choice is None or t is None:
        return None
    aff, k = choice
    t = t[(t["affinity"] == aff) & (t["k"] == k)]
    if not len(t):
        return None
    subsets = list(store.open(st.atlas).manifest.corpus.subsets) or sorted(t["subset"].unique())
    subsets += sorted(set(map(str, t["subset"])) - set(subsets))
    lobes = sorted(int(x) for x in t["lobe"].unique())
    M = np.zeros((len(lobes), len(subsets)), dtype=np.int64)
    for lobe, s, b in zip(t["lobe"], t["subset"], t["blocks"]):
        M[lobes.index(int(lobe)), subsets.index(str(s))] += int(b)
    share = M / np.maximum(M.sum(1, keepdims=True), 1)
    names = store.lobe_names(st.atlas, st.layer, aff, k)
    ylab = [f"{i}: {names.get(i, '')[:24]}" for i in lobes]
    fig = go.Figure(go.Heatmap(z=share, x=subsets, y=ylab, customdata=M, colorscale="Blues", zmin=0, zmax=1,
                               colorbar={"title": {"text": "share"}, "thickness": 10},
                               hovertemplate="lobe %{y}<br>%{x}: %{customdata} blocks (%{z:.0%})<extra></extra>"))
    fig.update_layout(title={**_SMALL["title"], "text": f"corpus-subset composition ({aff}, k={k})"},
                      yaxis={"autorange": "reversed", "tickfont": {"size": 10}, "automargin": True},
                      xaxis={"side": "bottom", "tickangle": -30, "automargin": True, "tickfont": {"size": 10}},
                      height=max(260, 110 + 18 * len(lobes)),
                      **{**{kk: v for kk, v in _SMALL.items() if kk != "title"},
                         "margin": {"l": 10, "r": 10, "t": 30, "b": 10}})
    return fig


def _atom(store: AtlasStore, st: ViewState) -> Atom:
    return store.layer(st.atlas, st.layer).atom(st.layer) or Atom()


@kept("layer")
def silhouette(store: AtlasStore, st: ViewState) -> go.Figure | None:
    """Task silhouette against the number of LDA dimensions, with the raw differences' level."""
    lda = _atom(store, st).lda
    if lda is None or not lda.dims or len(lda.dims) != len(lda.silhouette):
        return None
    dims, sil = lda.dims, lda.silhouette
    fig = go.Figure(go.Scatter(x=dims, y=sil, mode="lines+markers", name="LDA", line={"color": "#1f5fbf"},
                               hovertemplate="%{x} dimensions: %{y:.3f}<extra></extra>"))
    for key, label, dash in (("raw_silhouette", "raw differences", "dash"),
                             ("raw_removed_silhouette", "raw, PC1 removed", "dot")):
        if _num(getattr(lda, key)):
            fig.add_trace(go.Scatter(x=[dims[0], dims[-1]], y=[getattr(lda, key)] * 2, mode="lines", name=label,
                                     line={"dash": dash, "color": "#888"},
                                     hovertemplate=f"{label}: %{{y:.3f}}<extra></extra>"))
    fig.update_layout(title={**_SMALL["title"], "text": f"task silhouette vs LDA dimension (layer {st.layer})"},
                      xaxis={"title": {"text": "LDA dimensions"}, "dtick": 1, **_GRID},
                      yaxis={"title": {"text": "silhouette"}, **_GRID},
                      legend={"font": {"size": 10}, "x": 1, "xanchor": "right", "y": 0.05},
                      **{k: v for k, v in _SMALL.items() if k != "title"})
    return fig


@kept("layer")
def distractor(store: AtlasStore, st: ViewState) -> go.Figure | None:
    """PC1 score of each word-pair difference against its last-token length difference."""
    d = _atom(store, st).distractor
    if d is None or not d.length_diff or len(d.length_diff) != len(d.scores):
        return None
    x, y = np.asarray(d.length_diff, float), np.asarray(d.scores, float)
    a = store.open(st.atlas)
    pairs = a.table("wordpairs/pairs.parquet") if a.has("wordpairs/pairs.parquet") else None
    fig = go.Figure()
    if pairs is not None and len(pairs) == len(x):
        text = (pairs["input"].astype(str) + " → " + pairs["output"].astype(str)).to_numpy()
        for i, task in enumerate(sorted(pairs["task"].astype(str).unique())):
            m = (pairs["task"].astype(str) == task).to_numpy()
            fig.add_trace(go.Scatter(x=x[m], y=y[m], mode="markers", name=task, text=text[m],
                                     marker={"size": 6, "color": PALETTE[i % len(PALETTE)], "opacity": 0.8},
                                     hovertemplate="%{text}<br>Δlen %{x}, PC1 %{y:.2f}<extra>" + task + "</extra>"))
    else:
        fig.add_trace(go.Scatter(x=x, y=y, mode="markers", name="pairs", marker={"size": 6, "color": "#1f5fbf"},
                                 hovertemplate="Δlen %{x}, PC1 %{y:.2f}<extra></extra>"))
    r = d.pearson_r
    title = "distractor: PC1 vs last-token length difference"
    if _num(r):
        title += f" (r = {r:.2f})"
    fig.update_layout(title={**_SMALL["title"], "text": title}, legend={"font": {"size": 9}, "tracegroupgap": 0},
                      xaxis={"title": {"text": "len(input token) − len(output token)"}, **_GRID},
                      yaxis={"title": {"text": "PC1 score"}, **_GRID},
                      **{k: v for k, v in _SMALL.items() if k != "title"})
    return fig


def activations(store: AtlasStore, st: ViewState) -> go.Figure | None:
    """Activation histogram of the selected feature (log-spaced bins)."""
    a = store.layer(st.atlas, st.layer)
    f = LayerFiles(st.layer)
    if st.feature is None or not (a.has(f.act_hist) and a.has(f.act_hist_edges)):
        return None
    e = np.asarray(a.array(f.act_hist_edges), dtype=np.float64)
    counts = np.asarray(a.array(f.act_hist)[st.feature])
    if not counts.sum():
        return None
    fig = go.Figure(go.Bar(x=np.sqrt(e[:-1] * np.maximum(e[1:], 1e-12)), y=counts, width=np.diff(e),
                           marker_color="#4c78a8", hovertemplate="%{x:.3g}: %{y}<extra></extra>"))
    fig.update_layout(height=120, margin={"l": 30, "r": 5, "t": 5, "b": 25}, bargap=0, template="none",
                      xaxis={"type": "log", "title": {"text": "activation", "standoff": 2}},
                      yaxis={"title": {"text": ""}}, plot_bgcolor="white")
    return fig


def cloud(store: AtlasStore, st: ViewState) -> go.Figure | None:
    if store.coords(st.atlas, st.layer, st.layout) is None:
        return None
    return cloud_view.figure(store, st)[0]


FIGURES = {"cloud": cloud, "spectra": spectra, "alpha": alpha, "negentropy": negentropy,
           "lobe-subsets": lobe_subsets, "silhouette": silhouette, "distractor": distractor,
           "activations": activations}


def standalone_html(fig: go.Figure, title: str) -> str:
    """One self-contained HTML page (plotly.js inlined: opens offline)."""
    page = fig.to_html(include_plotlyjs=True, full_html=True, div_id="figure",
                       config={"displaylogo": False, "toImageButtonOptions": {"filename": title}})
    return page.replace("<head>", f"<head><title>{_html.escape(title)}</title>", 1)
