"""The Universality view (METHODS 5): how alike two SAE sets are, layer pair by layer pair.

The heat map has one trace: rows are the layers of A (labelled ``A <layer>``), columns those
of B (``B <layer>``), the colour the metric of the view (SVCCA or RSA), each cell's
``customdata`` its layers, p-value, the null's mean and spread and its number of pairs (for
the hover); a click names its layer pair by the labels. A selected cell lists its paired features below, side by side; a pair links to both
features' cards in their clouds and selects itself (``pair=``) to show whole in the card column.
"""
from __future__ import annotations

import html as _html

from dash import dcc, html

from app.data import AtlasStore
from app.models import ComparisonDetail, FeaturePair, PairFeature
from app.queries import universality as queries
from app.state import ViewState
from app.views.card import context_line

PAGE = 25
SORT_OPTIONS = [{"label": "correlation, highest first", "value": "-corr"},
                {"label": "correlation, lowest first", "value": "corr"},
                {"label": "B feature", "value": "feature_b"}, {"label": "A feature", "value": "feature_a"}]
METRIC_LABELS = {"svcca": "SVCCA", "rsa": "RSA"}


def _fmt(v, spec: str = ".3f") -> str:
    return "–" if v is None else format(v, spec)


def heatmap(detail: ComparisonDetail, st: ViewState) -> dict:
    """The layer-by-layer heat map of ``st.metric`` (a plain figure dict), the selected cell outlined."""
    a, b = detail.a, detail.b
    z = getattr(detail, st.metric)
    p = getattr(detail, f"{st.metric}_p")
    stats = {(s.layer_a, s.layer_b): s for s in detail.layer_pairs}
    custom = []
    for i, La in enumerate(a.layers):
        row = []
        for j, Lb in enumerate(b.layers):
            s = stats.get((La, Lb))
            mean = getattr(s, f"{st.metric}_null_mean") if s else None
            std = getattr(s, f"{st.metric}_null_std") if s else None
            row.append([La, Lb, _fmt(p[i][j], ".3g"), _fmt(mean), _fmt(std), detail.n_pairs[i][j],
                        s.n_shuffles if s and s.n_shuffles else 0])
        custom.append(row)
    name = METRIC_LABELS[st.metric]
    trace = {"type": "heatmap", "z": z, "x": [f"B {L}" for L in b.layers], "y": [f"A {L}" for L in a.layers],
             "customdata": custom, "colorscale": "Viridis", "zmin": 0 if st.metric == "svcca" else None,
             "zmax": 1 if st.metric == "svcca" else None, "texttemplate": "%{z:.3f}", "xgap": 2, "ygap": 2,
             "colorbar": {"title": {"text": name}, "thickness": 12},
             "hovertemplate": (f"A layer %{{customdata[0]}} × B layer %{{customdata[1]}}<br>{name} %{{z:.3f}}, "
                               "p = %{customdata[2]} (%{customdata[6]} shuffles)<br>null mean %{customdata[3]} "
                               "± %{customdata[4]}<br>%{customdata[5]} pairs<extra></extra>")}
    shapes = []
    if st.cell is not None and st.cell[0] in a.layers and st.cell[1] in b.layers:
        i, j = a.layers.index(st.cell[0]), b.layers.index(st.cell[1])
        shapes.append({"type": "rect", "xref": "x", "yref": "y", "x0": j - 0.5, "x1": j + 0.5, "y0": i - 0.5,
                       "y1": i + 0.5, "line": {"color": "#d62728", "width": 3}})
    return {"data": [trace], "layout": {
        "template": "none", "margin": {"l": 70, "r": 10, "t": 40, "b": 60}, "shapes": shapes,
        "title": {"text": f"{name} of paired decoder directions, layer by layer", "font": {"size": 14}},
        "xaxis": {"title": {"text": f"layers of B: {_html.escape(b.model)}"}, "type": "category", "side": "bottom"},
        "yaxis": {"title": {"text": f"layers of A: {_html.escape(a.model)}"}, "type": "category",
                  "autorange": "reversed"}}}


def clicked_cell(click) -> tuple[int, int] | None:
    """The layer pair of a click on the heat map, from the cell's axis labels (``A 15``, ``B 9``):
    dcc.Graph leaves a heat map cell's customdata out of its clickData."""
    pt = ((click or {}).get("points") or [{}])[0]
    x, y = pt.get("x"), pt.get("y")
    if isinstance(x, str) and isinstance(y, str) and x[2:].isdigit() and y[2:].isdigit() \
            and x.startswith("B ") and y.startswith("A "):
        return int(y[2:]), int(x[2:])
    return None


def sides(detail: ComparisonDetail) -> list:
    """Who is compared, and which served atlas shows each side's features."""
    out = []
    for label, s in (("A", detail.a), ("B", detail.b)):
        where = f"served as {s.atlas}" if s.atlas and not s.note else (s.note or "")
        out.append(html.Div([html.Strong(f"{label}: {s.model}"), html.Span(f" layers {', '.join(map(str, s.layers))}"),
                             html.Div(where, className="muted" if s.atlas else "notice side-missing",
                                      id=f"uni-side-{label.lower()}")], className="uni-side"))
    al = detail.alignment
    unit = "one token" if al.get("same_tokenizer") else "character spans aligned across the two tokenizers"
    out.append(html.P(f"{al.get('n_units', 0):,} aligned units ({unit}) over {al.get('n_documents', 0)} documents.",
                      className="muted"))
    return out


def cell_card(store: AtlasStore, st: ViewState, detail: ComparisonDetail, prefix: str) -> list:
    """The card column: the selected cell's numbers, and the selected pair whole."""
    if st.cell is None:
        return [html.P("Click a cell of the heat map to list its paired features.", className="hint")]
    La, Lb = st.cell
    s = next((x for x in detail.layer_pairs if (x.layer_a, x.layer_b) == (La, Lb)), None)
    body = [html.H3(f"A layer {La} × B layer {Lb}", id="uni-cell-title")]
    if s is not None:
        rows = [("pairs kept", f"{s.n_pairs:,}"),
                ("SVCCA", f"{_fmt(s.svcca)} (p = {_fmt(s.svcca_p, '.3g')}; null {_fmt(s.svcca_null_mean)} "
                          f"± {_fmt(s.svcca_null_std)})"),
                ("RSA", f"{_fmt(s.rsa)} (p = {_fmt(s.rsa_p, '.3g')}; null {_fmt(s.rsa_null_mean)} "
                        f"± {_fmt(s.rsa_null_std)})")]
        rows += [(k.replace("_", " "), f"{v:,.3f}" if isinstance(v, float) else f"{v:,}")
                 for k, v in s.counts.items()]
        body.append(html.Table([html.Tr([html.Td(k, className="muted"), html.Td(v)]) for k, v in rows],
                               className="kv"))
    if st.pair is not None:
        got = queries.pair(store, st.comparison, La, Lb, st.pair)
        body += [html.H4(f"Selected pair: correlation {got.corr:.3f}" + ("" if got.kept else " (not kept)")),
                 html.Div([_feature_block("A", got.a, La, prefix, full=True),
                           _feature_block("B", got.b, Lb, prefix, full=True)], id="uni-pair")]
    return body


def _feature_block(label: str, f: PairFeature, layer: int, prefix: str, full: bool = False) -> html.Div:
    head = (dcc.Link(f"{label} #{f.feature}", href=prefix + f.link, className="flink",
                     id={"type": "pair-card", "side": label.lower(), "feature": f.feature}) if f.link
            else html.Span(f"{label} #{f.feature}", title="its atlas is not served here"))
    toks = ", ".join(t.token.strip() or repr(t.token) for t in f.top_tokens) if f.top_tokens else ""
    parts = [head, html.Span(f" layer {layer}", className="muted"),
             html.Div(f"top tokens: {toks}" if toks else "top tokens: – (none in its atlas)", className="ptoks"),
             html.Div("in the comparison: " + ", ".join(f.compare_tokens), className="muted")]
    if f.context is not None:
        parts.append(context_line(f.context))
    return html.Div(parts, className="pfeat full" if full else "pfeat")


def pairs_table(store: AtlasStore, st: ViewState, prefix: str, sort: str, min_corr, kept: bool, q: str | None,
                offset: int):
    """The page of pairs the table controls ask for: (components, the offset shown, total)."""
    got = queries.pairs(store, st.comparison, st.cell[0], st.cell[1], offset, PAGE, sort, min_corr, kept, q)
    if got.total and offset >= got.total:
        offset = (got.total - 1) // PAGE * PAGE
        got = queries.pairs(store, st.comparison, st.cell[0], st.cell[1], offset, PAGE, sort, min_corr, kept, q)
    head = html.Tr([html.Th("corr"), html.Th(f"A: {got.atlas_a or 'not served'}, layer {got.layer_a}"),
                    html.Th(f"B: {got.atlas_b or 'not served'}, layer {got.layer_b}"), html.Th("")])
    rows = [head] + [_pair_row(st, p, prefix) for p in got.pairs]
    shown = (f"pairs {offset + 1}-{offset + len(got.pairs)} of {got.total:,}" if got.total
             else "no pair matches these filters")
    return [html.P(shown, className="muted", id="pairs-count"),
            html.Table(rows, className="pairs", id="pairs-list")], offset, got.total


def _pair_row(st: ViewState, p: FeaturePair, prefix: str) -> html.Tr:
    on = st.pair == p.b.feature
    select = dcc.Link("selected" if on else "select", href=prefix + st.with_(pair=p.b.feature).to_query(),
                      className="plink", id={"type": "pair-select", "feature": p.b.feature})
    flags = [] if p.kept else [html.Div("not kept" + (" (punctuation)" if p.punctuation else "")
                                        + ("" if p.shared_token else " (no shared token)"), className="muted")]
    return html.Tr([html.Td([f"{p.corr:.3f}", *flags], className="pcorr"),
                    html.Td(_feature_block("A", p.a, st.cell[0], prefix)),
                    html.Td(_feature_block("B", p.b, st.cell[1], prefix)), html.Td(select)],
                   className="prow-on" if on else "")


def subspace_table(store: AtlasStore, st: ViewState) -> list:
    """The keyword groups of the selected cell (of every cell when none is selected)."""
    got = queries.subspaces(store, st.comparison, *(st.cell or (None, None)))
    where = f"A layer {st.cell[0]} × B layer {st.cell[1]}" if st.cell else "every layer pair"
    head = html.Tr([html.Th(x) for x in ("layers", "group", "features A / B", "pairs", "SVCCA (p)", "RSA (p)",
                                         "shuffles", "")])
    rows = [head]
    for r in got.rows:
        rows.append(html.Tr([
            html.Td(f"{r.layer_a} × {r.layer_b}"), html.Td(r.group), html.Td(f"{r.n_a} / {r.n_b}"), html.Td(r.n_pairs),
            html.Td("" if r.skipped else f"{_fmt(r.svcca)} ({_fmt(r.svcca_p, '.3g')})"),
            html.Td("" if r.skipped else f"{_fmt(r.rsa)} ({_fmt(r.rsa_p, '.3g')})"),
            html.Td(r.n_shuffles or ""), html.Td(f"skipped: {r.skipped}" if r.skipped else "", className="muted")],
            className="skipped" if r.skipped else ""))
    return [html.H4(f"Semantic subspaces: {where}"),
            html.P("A feature belongs to a group when its top token is one of the group's keywords and appears as a "
                   "whole word in its context; a group needs more than 2 features per side.", className="muted"),
            html.Table(rows, className="lobes", id="subspace-table")]
