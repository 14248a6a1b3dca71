"""The feature card: everything about the selected feature, as Dash components.

All text from the atlas (tokens, contexts) is passed as plain strings to components, which
React renders as text; the peak token of a context is wrapped in ``html.Mark``. Nothing is
ever rendered as raw HTML. Links are permalinks (``dcc.Link``), so every id on the card can
be clicked, opened in a new tab or copied.
"""
from __future__ import annotations

import functools

import numpy as np
import plotly.graph_objects as go
from _plotly_utils.utils import convert_to_base64
from dash import dcc, html

from app.data import AtlasStore
from app.models import FeatureCard
from app.queries.features import feature_card
from app.state import ViewState


def _tok(t: str) -> str:
    # Show whitespace-marked tokens readably (GPT-2's Ġ, SentencePiece's ▁, newlines).
    return t.replace("Ġ", " ").replace("▁", " ").replace("\n", "⏎")


def link(st: ViewState, prefix: str, text: str, cls: str = "flink", **changes) -> dcc.Link:
    return dcc.Link(text, href=prefix + st.with_(**changes).to_query(), className=cls)


def face_item(st: ViewState, prefix: str, x, **face_state) -> html.Li:
    """One crystal face as a list item: its kind links to the view that draws it."""
    q = f"edge cos {x.edge_cos:.3f}" if x.edge_cos is not None else ""
    if x.length_ratio is not None:
        q += f", ratio {x.length_ratio:.2f}"
    ids = []
    for sep, v in (("", x.a), (" − ", x.b), (" ≈ ", x.c), (" − ", x.d)):
        ids += [sep, link(st, prefix, f"#{v}", feature=v)]
    return html.Li([link(st, prefix, x.kind, "facelink", face=x.index, **face_state), ": "] + ids
                   + [html.Span(f"  ({q})", className="muted")])


def histogram_bar(card: FeatureCard) -> go.Bar | None:
    if card.act_hist is None or not sum(card.act_hist.counts):
        return None
    e = np.asarray(card.act_hist.edges)
    return go.Bar(x=np.sqrt(e[:-1] * np.maximum(e[1:], 1e-12)), y=np.asarray(card.act_hist.counts),
                  width=np.diff(e), marker_color="#4c78a8", hovertemplate="%{x:.3g}: %{y}<extra></extra>")


def histogram_figure(bar: go.Bar) -> go.Figure:
    """The histogram as a plotly figure (the layout with plotly's default template)."""
    fig = go.Figure(bar)
    fig.update_layout(height=120, margin={"l": 30, "r": 5, "t": 5, "b": 25}, bargap=0,
                      xaxis={"type": "log", "title": {"text": "activation", "standoff": 2}},
                      yaxis={"title": {"text": ""}}, plot_bgcolor="white")
    return fig


@functools.lru_cache(maxsize=1)
def _histogram_layout() -> dict:
    # The same for every card; validating it (plotly's whole default template) took 15 ms a card.
    return histogram_figure(go.Bar()).to_dict()["layout"]


def histogram(card: FeatureCard) -> dcc.Graph | None:
    """What ``dcc.Graph(figure=histogram_figure(bar))`` sends, with the layout validated once."""
    bar = histogram_bar(card)
    if bar is None:
        return None
    # a figure's to_dict: the trace's properties with its arrays as typed-array specs
    data = [bar.to_plotly_json()]
    convert_to_base64(data)
    fig = {"data": data, "layout": _histogram_layout()}
    return dcc.Graph(figure=fig, config={"displayModeBar": False}, className="hist", id="card-hist")


def card_of(store: AtlasStore, st: ViewState) -> FeatureCard:
    """The feature's card through the answers the API keeps (same key, same JSON): a card
    shown on the page or fetched from the API is computed once."""
    key = (st.atlas, "card", st.layer, st.feature, 10)

    def body() -> bytes:
        model = feature_card(store, st.atlas, st.layer, st.feature)
        return model.__pydantic_serializer__.to_json(model)

    return FeatureCard.model_validate_json(store.cached(key, body))


def context_line(ctx) -> html.Div:
    parts = []
    for i, t in enumerate(ctx.tokens):
        parts.append(html.Mark(_tok(t)) if i == ctx.peak else html.Span(_tok(t)))
    return html.Div([html.Span(f"{ctx.value:.2f}", className="ctxval")] + parts,
                    className="ctx", title=f"doc {ctx.doc} - {ctx.subset}")


def render(store: AtlasStore, st: ViewState, prefix: str = "/") -> list:
    """Card components for ``st.feature`` (a hint when nothing is selected)."""
    if st.feature is None:
        return [html.P("Click a point to open its feature card.", className="hint")]
    c = card_of(store, st)
    head = [html.H3(f"Feature {c.feature}", id="card-title"),
            html.Div(f"layer {c.layer} · atlas {c.atlas}", className="muted")]
    if c.frequency is not None:
        head.append(html.Div(f"fires on {c.fire_count:,} tokens (frequency {c.frequency:.3g})", id="card-freq"))
    if c.neuronpedia:
        head.append(html.A("Open on Neuronpedia ↗", href=c.neuronpedia, target="_blank", rel="noopener noreferrer"))
    body = head
    h = histogram(c)
    if h is not None:
        body += [html.H4("Activation histogram"), h]
    if c.top_tokens:
        body += [html.H4("Top tokens"), html.Div([html.Span(f"{_tok(t.token)} ({t.count})", className="chip")
                                                  for t in c.top_tokens], className="chips")]
    if c.contexts:
        body += [html.H4("Top contexts"), html.Div([context_line(x) for x in c.contexts[:10]], id="card-contexts")]
    body += [html.H4("Decoder-cosine neighbors"),
             html.Ol([html.Li([link(st, prefix, f"#{n.feature}", feature=n.feature), f"  cos {n.cos:.3f}"])
                      for n in c.neighbors], id="card-neighbors", className="nlist")]
    if c.cooc_partners:
        body += [html.H4("Co-occurrence partners"),
                 html.Ol([html.Li([link(st, prefix, f"#{p.feature}", feature=p.feature),
                                   f"  {p.blocks} blocks" + (f", phi {p.phi:.3f}" if p.phi is not None else "")])
                          for p in c.cooc_partners], className="nlist")]
    if c.crystals:
        rows = [face_item(st, prefix, x, min_edge_cos=st.min_edge_cos) for x in c.crystals]
        body += [html.H4("Crystal partners"), html.Ul(rows, id="card-crystals", className="nlist")]
    return body
