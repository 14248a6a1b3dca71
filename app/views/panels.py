"""Side panels: eigenvalue spectra of every layer, and the lobes of the current colouring."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from dash import html

from app.api import _brain_entry
from app.data import AtlasStore
from app.state import ViewState
from app.views.cloud import colour_of, typed


def spectra_figure(store: AtlasStore, st: ViewState) -> go.Figure | None:
    """Log-log eigenvalue spectra per layer with the power-law fit; ``meta`` of a trace = its layer."""
    a = store.open(st.atlas)
    fig = go.Figure()
    for L in a.layer_ids:
        rel = f"layers/{L}/spectrum.npy"
        if not a.has(rel):
            continue
        lam = np.asarray(a.array(rel), dtype=np.float64)
        lam = lam[lam > 0]
        r = np.arange(1, len(lam) + 1)
        galaxy = a.json(f"layers/{L}/galaxy.json") if a.has(f"layers/{L}/galaxy.json") else {}
        fit = galaxy.get("power_law") or {}
        alpha = fit.get("alpha")
        name = f"layer {L}" + (f"  α={alpha:.2f}" if isinstance(alpha, (int, float)) else "")
        width = 3 if L == st.layer else 1.2
        fig.add_trace(go.Scatter(x=typed(r.astype(np.float32)), y=typed(lam), mode="lines", name=name,
                                 meta=L, line={"width": width},
                                 hovertemplate=f"layer {L}<br>rank %{{x}}: %{{y:.3g}}<extra></extra>"))
        if isinstance(alpha, (int, float)) and isinstance(fit.get("intercept"), (int, float)):
            lo, hi = (fit.get("ranks") or [11, 150])[:2]
            rr = np.array([lo, min(hi, len(lam))], dtype=np.float64)
            fig.add_trace(go.Scatter(x=rr, y=10 ** (fit["intercept"] - alpha * np.log10(rr)), mode="lines",
                                     line={"dash": "dot", "color": "#333", "width": 1}, showlegend=False,
                                     meta=L, hoverinfo="skip"))
    if not fig.data:
        return None
    fig.update_layout(xaxis={"type": "log", "title": {"text": "rank"}},
                      yaxis={"type": "log", "title": {"text": "eigenvalue"}},
                      height=300, margin={"l": 50, "r": 10, "t": 10, "b": 40}, legend={"font": {"size": 10}},
                      plot_bgcolor="white", uirevision="spectra")
    return fig


def lobes_panel(store: AtlasStore, st: ViewState) -> list:
    kind, *rest = st.color.split(":")
    if kind not in ("lobe", "geometry"):
        return [html.P("Colour by lobe or geometry cluster to list its lobes here.", className="hint")]
    aff, k = (rest[0], int(rest[1])) if kind == "lobe" else ("geometry", int(rest[0]))
    lab = store.lobes(st.atlas, st.layer, aff, k)
    names = store.lobe_names(st.atlas, st.layer, aff, k)
    ids, sizes = np.unique(lab[lab >= 0], return_counts=True)
    comp: dict[int, dict[str, int]] = {}
    t = store.table(st.atlas, st.layer, "lobe_subsets.parquet")
    if t is not None:
        t = t[(t["affinity"] == aff) & (t["k"] == k)]
        for lobe, s, b in zip(t["lobe"], t["subset"], t["blocks"]):
            comp.setdefault(int(lobe), {})[str(s)] = int(b)
    rows = []
    for i, n in zip(ids, sizes):
        c = comp.get(int(i), {})
        tot = sum(c.values()) or 1
        top = ", ".join(f"{s} {b / tot:.0%}" for s, b in sorted(c.items(), key=lambda x: -x[1])[:3])
        rows.append(html.Tr([html.Td(html.Span(className="swatch", style={"background": colour_of(int(i))})),
                             html.Td(str(int(i))), html.Td(str(int(n))), html.Td(names.get(int(i), "")),
                             html.Td(top)]))
    out = [html.Table([html.Thead(html.Tr([html.Th(""), html.Th("lobe"), html.Th("size"), html.Th("top tokens"),
                                           html.Th("blocks won (subset)")])), html.Tbody(rows)],
                      className="lobes", id="lobes-table")]
    a = store.open(st.atlas)
    if a.has(f"layers/{st.layer}/brain.json"):
        entry = _brain_entry(a.json(f"layers/{st.layer}/brain.json"), aff, k)
        if entry:
            out.insert(0, html.P(f"{aff}, k={k}: " + brain_summary(entry), className="muted", id="lobe-stats"))
    return out


def brain_summary(entry: dict) -> str:
    """One line: AMI against geometry and balanced accuracy, each with its z-score."""
    parts = []
    ami, reg = entry.get("ami"), entry.get("regression")
    if isinstance(ami, dict) and isinstance(ami.get("ami"), (int, float)):
        parts.append(f"AMI vs geometry {ami['ami']:.3f} (z = {ami.get('z', float('nan')):.1f} over permutations)")
    if isinstance(reg, dict) and isinstance(reg.get("accuracy"), (int, float)):
        parts.append(f"balanced accuracy from directions {reg['accuracy']:.2f} vs {reg.get('random_mean', 0):.2f} "
                     f"random (z = {reg.get('z', float('nan')):.1f})")
    return "; ".join(parts) or "no statistics"
