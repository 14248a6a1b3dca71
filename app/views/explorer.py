"""The Dash explorer: page layout and callbacks.

The URL is the source of truth. One controller callback turns the query string (on load,
on a ``dcc.Link`` click, on back/forward) or a control change (dropdowns, a click on the
cloud or the spectra) into a resolved ``ViewState``, writes it back to the URL and the
controls, and stores it; the views (cloud, card, legend, panels) redraw from the stored
state. The cloud is redrawn whole only when the atlas or layer changes; otherwise a
``Patch`` sends just what changed, and ``uirevision`` keeps the camera.
"""
from __future__ import annotations

from pathlib import Path

from dash import ALL, Dash, Input, Output, State, ctx, dcc, html, no_update
from dash.exceptions import PreventUpdate

from app.data import LAYOUTS, AtlasStore, UnknownAtlas, UnknownItem
from app.queries.features import search
from app.queries import universality as uni_queries
from app.state import METRICS, PANELS, VIEWS, Coloring, ViewState, parse_query, resolve
from app import figures
from app.views import card as card_view
from app.views import cloud, panels
from app.views import latent as latent_view
from app.views import universality as uni_view
from analysis.atlas import AtlasError

STATIC = Path(__file__).resolve().parents[2] / "static"
COLOR_KINDS = [{"label": "lobe (co-occurrence)", "value": "lobe"}, {"label": "geometry cluster", "value": "geometry"},
               {"label": "firing frequency (log)", "value": "freq"}, {"label": "corpus subset", "value": "subset"}]
VIEW_OPTIONS = [{"label": " Features", "value": "cloud"}, {"label": " Latent", "value": "latent"},
                {"label": " Universality", "value": "universality"}]
GRAPH_CONFIG = {"displaylogo": False, "modeBarButtonsToRemove": ["lasso2d", "select2d"]}


# The sidebar's controls by name: (component id, property); the controller reads their
# values and writes them (with their options) back for every resolved view.
CONTROLS = {"atlas": ("atlas-dd", "value"), "layer": ("layer-dd", "value"), "layout": ("layout-radio", "value"),
            "coloring": ("color-dd", "value"), "affinity": ("aff-dd", "value"), "k": ("k-dd", "value"),
            "size": ("size-check", "value"), "crystals": ("crystal-check", "value"),
            "min_edge_cos": ("q-slider", "value"), "panel": ("panel-tabs", "value"),
            "view": ("view-radio", "value"), "latent_layer": ("latent-layer-dd", "value"),
            "latent_projection": ("latent-proj-radio", "value"), "latent_color": ("latent-color-dd", "value"),
            "comparison": ("cmp-dd", "value"), "metric": ("metric-radio", "value")}
# the page's parts belonging to each view: (element id, its class when shown)
VIEW_PARTS = {"cloud": [("cloud-controls", "viewpart"), ("cloud-main", "main"), ("card", "card"),
                        ("cloud-panels", "panels")],
              "latent": [("latent-controls", "viewpart"), ("latent-main", "main"), ("latent-card", "card"),
                         ("latent-panels", "panels")],
              "universality": [("uni-controls", "viewpart"), ("uni-main", "main"), ("uni-card", "card"),
                               ("uni-panels", "panels")]}
CONTROL_INPUTS = {name: Input(*target) for name, target in CONTROLS.items()}
CONTROL_OUTPUTS = {**{name: Output(*target) for name, target in CONTROLS.items()},
                   **{f"{name}_options": Output(cid, "options") for name, (cid, _) in CONTROLS.items()
                      if name in ("atlas", "layer", "layout", "affinity", "k", "view", "latent_layer",
                                  "latent_projection", "latent_color", "comparison")},
                   "panel_classes": [Output(f"panel-{p}", "className") for p in PANELS],
                   # which view is on screen: (element id, class when shown), in the order of VIEWS
                   "view_classes": [Output(cid, "className") for v in VIEWS for cid, _ in VIEW_PARTS[v]]}


def _control(label: str, comp) -> html.Div:
    return html.Div([html.Label(label), comp], className="control")


def page(banner: str | None) -> html.Div:
    latent_controls = html.Div([
        _control("Layer", dcc.Dropdown(id="latent-layer-dd", clearable=False)),
        _control("Projection", dcc.RadioItems(id="latent-proj-radio", inline=True, options=[
            {"label": " PCA", "value": "pca"}, {"label": " UMAP", "value": "umap"}])),
        _control("Colour", dcc.Dropdown(id="latent-color-dd", options=latent_view.COLOR_OPTIONS, clearable=False)),
        html.H4("Legend"),
        html.Div(id="latent-legend", className="legend"),
    ], id="latent-controls", className="viewpart hidden")
    uni_controls = html.Div([
        _control("Comparison", dcc.Dropdown(id="cmp-dd", clearable=False)),
        _control("Heat map", dcc.RadioItems(id="metric-radio", inline=True, options=[
            {"label": f" {uni_view.METRIC_LABELS[m]}", "value": m} for m in METRICS])),
        html.Div(id="uni-sides"),
    ], id="uni-controls", className="viewpart hidden")
    cloud_controls = html.Div([
        _control("Layer", dcc.Dropdown(id="layer-dd", clearable=False)),
        _control("Layout", dcc.RadioItems(id="layout-radio", inline=True,
                                          options=[{"label": " PCA", "value": "pca"}, {"label": " UMAP", "value": "umap"}])),
        _control("Colour", dcc.Dropdown(id="color-dd", options=COLOR_KINDS, clearable=False)),
        html.Div([_control("Affinity", dcc.Dropdown(id="aff-dd", clearable=False)),
                  _control("k", dcc.Dropdown(id="k-dd", clearable=False))], className="row2", id="lobe-controls"),
        dcc.Checklist(id="size-check", options=[{"label": " size by frequency", "value": "freq"}], value=[]),
        dcc.Checklist(id="crystal-check", options=[{"label": " crystal faces, edge cos ≥", "value": "on"}], value=[]),
        dcc.Slider(id="q-slider", min=0.3, max=1.0, step=0.01, value=0.5, marks={0.3: "0.3", 0.5: "0.5", 0.75: "0.75", 1: "1"},
                   tooltip={"placement": "bottom"}),
        html.Div([dcc.Input(id="search-input", type="text", placeholder="feature id, token or text", debounce=False,
                            maxLength=200),
                  html.Button("Search", id="search-btn")], className="row2 search"),
        html.Div(id="search-results"),
        html.Div(id="exports", className="exports"),
        html.H4("Legend"),
        html.Div(id="legend", className="legend"),
    ], id="cloud-controls", className="viewpart")
    sidebar = html.Div([
        _control("Atlas", dcc.Dropdown(id="atlas-dd", clearable=False)),
        _control("View", dcc.RadioItems(id="view-radio", inline=True, options=VIEW_OPTIONS, value="cloud")),
        html.Div([html.Button("Copy link", id="copy-btn"),
                  dcc.Input(id="permalink", type="text", readOnly=True, className="permalink")], className="copy"),
        latent_controls,
        uni_controls,
        cloud_controls,
    ], className="sidebar")
    return html.Div([
        dcc.Location(id="url", refresh=False),
        dcc.Store(id="view"), dcc.Store(id="rendered"), dcc.Store(id="latent-rendered"),
        # the view again, one store per view, written only while that view shows: a hidden
        # view's callbacks are then not called at all (each call would be a request)
        *[dcc.Store(id=f"view-{v}") for v in VIEWS],
        dcc.Store(id="latent-panels-key"), dcc.Store(id="spectra-key"), dcc.Store(id="spectra-layers"),
        html.Header([html.H1("saegeo"), html.Span("geometry of sparse-autoencoder features", className="muted"),
                     html.Div(banner or "", id="custom-banner", className="banner info" if banner else "")]),
        html.Div(id="banner"),
        html.Div(id="building"), dcc.Interval(id="building-tick", interval=5000),
        html.Div(id="notice"),
        html.Div([
            sidebar,
            html.Div([
                html.Div([dcc.Graph(id="cloud", config={"displaylogo": False, "scrollZoom": True},
                                    style={"height": "72vh"}),
                          html.Div(id="cloud-exports", className="fexports")], id="cloud-main", className="main"),
                html.Div([dcc.Graph(id="latent-cloud", config={"displaylogo": False, "scrollZoom": True},
                                    style={"height": "72vh"}),
                          html.P(id="latent-note", className="muted")], id="latent-main", className="main hidden"),
                html.Div([dcc.Graph(id="uni-heatmap", config=GRAPH_CONFIG, style={"height": "60vh"}),
                          html.P("Hover a cell for its p-value and the shuffled null; click it to list its paired "
                                 "features below.", className="muted")], id="uni-main", className="main hidden"),
            ]),
            html.Div([html.Div(id="card", className="card"),
                      html.Div(id="latent-card", className="card hidden"),
                      html.Div(id="uni-card", className="card hidden")]),
        ], className="grid"),
        html.Section([
            html.Div([
                html.H4("Paired features"),
                html.Div([
                    _control("Sort", dcc.Dropdown(id="pairs-sort", options=uni_view.SORT_OPTIONS, value="-corr",
                                                  clearable=False)),
                    _control("Correlation at least", dcc.Input(id="pairs-min", type="number", min=-1, max=1, step=0.05,
                                                               debounce=True)),
                    _control("Token or #feature", dcc.Input(id="pairs-q", type="text", debounce=True, maxLength=100)),
                    dcc.Checklist(id="pairs-kept", options=[{"label": " kept pairs only", "value": "kept"}],
                                  value=["kept"]),
                    html.Button("‹ previous", id="pairs-prev"), html.Button("next ›", id="pairs-next"),
                ], className="pairs-controls"),
                dcc.Store(id="pairs-offset"),
                html.Div(id="pairs-table"),
            ], id="uni-pairs"),
            html.Div(id="uni-subspaces"),
        ], id="uni-panels", className="panels hidden"),
        html.Section([
            html.Div([dcc.Graph(id=f"latent-{name}-fig", config=GRAPH_CONFIG, style={"height": "380px"})
                      for name in ("norms", "positions", "sep")], className="prow latent-prow"),
            html.P("Click a layer on the norm or separation plot to open it. Dashed: the same score with "
                   "shuffled labels; diamonds: position 0.", className="muted"),
        ], id="latent-panels", className="panels hidden"),
        html.Div([
            dcc.Tabs(id="panel-tabs", value="spectra", className="panel-tabs", children=[
                dcc.Tab(label=label, value=value, className="ptab", selected_className="ptab-on")
                for value, label in (("spectra", "Spectra"), ("lobes", "Lobes"), ("crystals", "Crystals"))]),
            html.Section([
                html.Div(id="spectra-note"),
                html.Div([
                    html.Div([dcc.Graph(id="spectra", config=GRAPH_CONFIG, style={"height": "320px"}),
                              html.Div(id="spectra-exports", className="fexports")], className="pcell wide"),
                    html.Div([dcc.Graph(id="alpha-fig", config=GRAPH_CONFIG, style={"height": "320px"}),
                              html.Div(id="alpha-exports", className="fexports")], className="pcell"),
                    html.Div([dcc.Graph(id="negentropy-fig", config=GRAPH_CONFIG, style={"height": "320px"}),
                              html.Div(id="negentropy-exports", className="fexports")], className="pcell"),
                ], className="prow")], id="panel-spectra", className="panel"),
            html.Section(html.Div(id="lobes"), id="panel-lobes", className="panel hidden"),
            html.Section(html.Div(id="crystals"), id="panel-crystals", className="panel hidden"),
        ], id="cloud-panels", className="panels"),
        dcc.Store(id="img-export-done"),
    ], className="page")


def make_dash(store: AtlasStore, server, banner: str | None = None, prefix: str = "/") -> Dash:
    """The explorer's Dash app, its routes added to the FastAPI app ``server``."""
    app = Dash(__name__, server=server, assets_folder=str(STATIC), requests_pathname_prefix=prefix,
               routes_pathname_prefix=prefix, title="saegeo", update_title=None, suppress_callback_exceptions=True,
               serve_locally=True)
    app.layout = page(banner)

    # Dict-grouped outputs and inputs: each value is returned and read by name, so no
    # order of the twenty-odd outputs can silently put a value into the wrong control.
    @app.callback(
        output={"url": Output("url", "search"), "notice": Output("notice", "children"),
                "view": Output("view", "data"), "shown": {v: Output(f"view-{v}", "data") for v in VIEWS},
                "controls": CONTROL_OUTPUTS},
        inputs={"search": Input("url", "search"), "controls": CONTROL_INPUTS,
                "clicks": {"cloud": Input("cloud", "clickData"), "spectra": Input("spectra", "clickData"),
                           "alpha": Input("alpha-fig", "clickData"),
                           "negentropy": Input("negentropy-fig", "clickData"),
                           "latent": Input("latent-cloud", "clickData"),
                           "latent_norms": Input("latent-norms-fig", "clickData"),
                           "latent_sep": Input("latent-sep-fig", "clickData"),
                           "uni": Input("uni-heatmap", "clickData")}},
        state={"prev": State("view", "data"), "curve_layers": State("spectra-layers", "data")},
    )
    def controller(search, controls, clicks, prev, curve_layers):
        prop = ctx.triggered[0]["prop_id"] if ctx.triggered else "."
        notes: list[str] = []
        if prop in (".", "url.search") or not prev:
            st, notes = parse_query(search)
            st, more = resolve(st, store)
            notes += more
        else:
            st = ViewState.model_validate(prev)
            if prop == "panel-tabs.value":
                if controls["panel"] == st.panel or controls["panel"] not in PANELS:
                    raise PreventUpdate
                st = st.with_(panel=controls["panel"])
            elif prop in ("alpha-fig.clickData", "negentropy-fig.clickData"):
                st = _clicked_layer(st, clicks["alpha" if prop.startswith("alpha") else "negentropy"])
            elif prop.startswith(("cmp-dd.", "metric-radio.", "uni-heatmap.")):
                st = _apply_uni_control(st, prop, controls, clicks)
            elif prop.startswith(("latent-", "view-radio.")):
                st = _apply_latent_control(store, st, prop, controls, clicks)
            else:
                st = _apply_control(store, st, prop, controls, clicks, curve_layers)
            st, _ = resolve(st, store)  # a control can only ask for what exists; snap silently
        st = _fly(store, st, prev, fresh=prop == "." or not prev)
        query = st.to_query()
        data = st.model_dump()
        return {"url": query if query != (search or "") else no_update, "notice": _notice(notes), "view": data,
                "shown": {v: data if v == st.view else no_update for v in VIEWS}, "controls": _controls(store, st)}

    @app.callback(Output("building", "children"), Output("building-tick", "disabled"),
                  Input("building-tick", "n_intervals"))
    def building(_n):
        """Progress of atlases being built (the demo's), polled while any is."""
        items = store.building()
        if not items:
            # a build announces itself only once its model is loaded: keep looking for the
            # first two minutes after the page opened, then stop
            return [], (_n or 0) >= 24
        rows = [html.Li(f"{b['name']} ({b['model'] or 'model'}): {b['stage'] or 'starting'}"
                        + (f" {100 * b['done'] / b['total']:.0f} %" if b["done"] is not None and b["total"] else ""))
                for b in items]
        return html.Div([html.Strong("Being built (reload the page to open it when done): "), html.Ul(rows)],
                        className="notice info", id="building-box"), False

    # The camera has its own callback: plotly reports relayouts (autosize, rotation) at any
    # time, and a controller call started by one would supersede a pending user action.
    @app.callback(Output("url", "search", allow_duplicate=True), Input("cloud", "relayoutData"),
                  State("view", "data"), prevent_initial_call=True)
    def camera(relayout, view):
        cam = (relayout or {}).get("scene.camera")
        eye = cam.get("eye") if isinstance(cam, dict) else None
        if not view or not isinstance(eye, dict) or not all(isinstance(eye.get(c), (int, float)) for c in "xyz"):
            raise PreventUpdate
        st = ViewState.model_validate(view)
        center = cam.get("center")
        ctr = st.center
        if isinstance(center, dict) and all(isinstance(center.get(c), (int, float)) for c in "xyz"):
            ctr = tuple(round(float(center[c]), 3) for c in "xyz")
            ctr = None if not any(ctr) else ctr  # plotly's default centre stays out of the link
        eye = tuple(round(float(eye[c]), 2) for c in "xyz")
        if (eye, ctr) == (st.eye, st.center):
            raise PreventUpdate
        return st.with_(eye=eye, center=ctr).to_query()

    @app.callback(Output("cloud", "figure"), Output("rendered", "data"), Output("legend", "children"),
                  Input("view-cloud", "data"), State("rendered", "data"))
    def draw(view, rendered):
        # the hidden cloud waits: "rendered" keeps what it shows, so coming back patches from there
        if not view or view.get("atlas") is None or view.get("layer") is None or view.get("view") != "cloud":
            raise PreventUpdate
        st = ViewState.model_validate(view)
        old = ViewState.model_validate(rendered) if rendered else None
        try:
            if old is None or (old.atlas, old.layer) != (st.atlas, st.layer):
                fig, legend = cloud.figure(store, st)
                return fig, view, _legend(legend)
            p, legend = cloud.patch(store, old, st)
        except (UnknownAtlas, UnknownItem, AtlasError):
            raise PreventUpdate from None
        if p is None:
            return no_update, view, no_update
        return p, view, no_update if legend is None else _legend(legend)

    @app.callback(Output("card", "children"), Output("exports", "children"), Output("banner", "children"),
                  Output("lobes", "children"), Output("crystals", "children"), Output("cloud-exports", "children"),
                  Input("view", "data"))
    def side(view):
        if not view or view.get("atlas") is None:
            return [], [], [], [], [], []
        st = ViewState.model_validate(view)
        m = store.open(st.atlas).manifest
        banner = html.Div(f"Synthetic atlas: {m.title or st.atlas} holds generated data with planted structure, "
                          "not measurements of a model.", className="banner synthetic", id="synthetic-banner") \
            if m.synthetic else []
        if st.layer is None:   # a model-only atlas: no features
            return [], [], banner, [], [], []
        if st.view != "cloud":   # hidden: redrawn when the cloud comes back (the view changes then)
            return no_update, no_update, banner, no_update, no_update, no_update
        # a closed panel keeps what it showed; opening it is a view change that redraws it
        lobes = panels.lobes_panel(store, st, prefix) if st.panel == "lobes" else no_update
        crystals = panels.crystals_panel(store, st, prefix) if st.panel == "crystals" else no_update
        return (card_view.render(store, st, prefix), _exports(store, st, prefix), banner, lobes, crystals,
                panels.figure_exports("cloud", st, prefix))

    @app.callback(Output("spectra", "figure"), Output("spectra-note", "children"), Output("spectra-key", "data"),
                  Output("spectra-layers", "data"), Output("alpha-fig", "figure"), Output("negentropy-fig", "figure"),
                  Output("spectra-exports", "children"), Output("alpha-exports", "children"),
                  Output("negentropy-exports", "children"), Input("view-cloud", "data"), State("spectra-key", "data"))
    def spectra(view, key):
        if not view or view.get("atlas") is None or view.get("layer") is None or view.get("view") != "cloud":
            raise PreventUpdate
        st = ViewState.model_validate(view)
        if key == [st.atlas, st.layer]:
            raise PreventUpdate
        fig = figures.spectra(store, st)
        extra = []
        for name in ("alpha", "negentropy"):
            f = figures.FIGURES[name](store, st)
            extra += [f if f is not None else EMPTY_FIG]
        exports = [panels.figure_exports(n, st, prefix) if f is not None else []
                   for n, f in (("spectra", fig), ("alpha", extra[0] if extra[0] is not EMPTY_FIG else None),
                                ("negentropy", extra[1] if extra[1] is not EMPTY_FIG else None))]
        if fig is None:
            return (EMPTY_FIG, html.P("No eigenvalue spectra in this atlas (run the geometry stage).", className="hint"),
                    [st.atlas, st.layer], [], *extra, *exports)
        return (fig, html.P("Click a curve or a layer's point to open that layer. Dashed grey: isotropic cloud of "
                            "the same shape and total variance; dotted: power-law fit.", className="muted"),
                [st.atlas, st.layer], [t.meta for t in fig.data], *extra, *exports)

    @app.callback(Output("latent-cloud", "figure"), Output("latent-rendered", "data"),
                  Output("latent-legend", "children"), Output("latent-note", "children"),
                  Input("view-latent", "data"), State("latent-rendered", "data"))
    def latent_draw(view, rendered):
        """The latent cloud: drawn whole when what it shows changes, patched for a selection."""
        if not view or view.get("atlas") is None or view.get("view") != "latent":
            raise PreventUpdate
        st = ViewState.model_validate(view)
        key = [st.atlas, st.latent_layer, st.latent_projection, st.latent_color]
        try:
            if rendered and rendered["key"] == key:
                if rendered["point"] == list(st.latent_point or []):
                    raise PreventUpdate
                return (latent_view.patch_selection(store, st), {"key": key, "point": list(st.latent_point or [])},
                        no_update, no_update)
            fig, legend, note = latent_view.figure(store, st)
        except (UnknownAtlas, UnknownItem, AtlasError):
            raise PreventUpdate from None
        return fig, {"key": key, "point": list(st.latent_point or [])}, latent_view.legend(legend), note

    @app.callback(Output("latent-norms-fig", "figure"), Output("latent-positions-fig", "figure"),
                  Output("latent-sep-fig", "figure"), Output("latent-panels-key", "data"),
                  Input("view-latent", "data"), State("latent-panels-key", "data"))
    def latent_panels(view, key):
        if not view or view.get("atlas") is None or view.get("view") != "latent":
            raise PreventUpdate
        st = ViewState.model_validate(view)
        if key == [st.atlas, st.latent_layer]:
            raise PreventUpdate
        try:
            figs = (latent_view.norms_by_layer(store, st), latent_view.norms_by_position(store, st),
                    latent_view.separation(store, st))
        except (UnknownAtlas, UnknownItem, AtlasError):
            raise PreventUpdate from None
        return (*figs, [st.atlas, st.latent_layer])

    @app.callback(Output("latent-card", "children"), Input("view-latent", "data"))
    def latent_card(view):
        if not view or view.get("atlas") is None or view.get("view") != "latent":
            raise PreventUpdate
        st = ViewState.model_validate(view)
        try:
            return latent_view.token_card(store, st)
        except (UnknownAtlas, UnknownItem, AtlasError):
            raise PreventUpdate from None

    @app.callback(Output("uni-heatmap", "figure"), Output("uni-sides", "children"), Output("uni-card", "children"),
                  Output("uni-subspaces", "children"), Input("view-universality", "data"))
    def uni_draw(view):
        """The Universality view: heat map, who is compared, the selected cell and pair, subspaces."""
        if not view or view.get("view") != "universality" or not view.get("comparison"):
            raise PreventUpdate
        st = ViewState.model_validate(view)
        try:
            detail = uni_queries.detail(store, st.comparison)
            return (uni_view.heatmap(detail, st), uni_view.sides(detail),
                    uni_view.cell_card(store, st, detail, prefix), uni_view.subspace_table(store, st))
        except (UnknownItem, AtlasError):
            raise PreventUpdate from None

    @app.callback(Output("pairs-table", "children"), Output("pairs-offset", "data"),
                  Output("pairs-prev", "disabled"), Output("pairs-next", "disabled"), Output("uni-pairs", "className"),
                  Input("view-universality", "data"), Input("pairs-sort", "value"), Input("pairs-min", "value"),
                  Input("pairs-kept", "value"), Input("pairs-q", "value"), Input("pairs-prev", "n_clicks"),
                  Input("pairs-next", "n_clicks"), State("pairs-offset", "data"))
    def uni_pairs(view, sort, min_corr, kept, q, _prev, _next, offset):
        """A page of the selected cell's pairs, as the table's own controls (not the link) ask."""
        if not view or view.get("view") != "universality" or not view.get("comparison"):
            raise PreventUpdate
        st = ViewState.model_validate(view)
        if st.cell is None:
            return [], 0, True, True, "hidden"
        prop = ctx.triggered[0]["prop_id"] if ctx.triggered else "."
        key = [st.comparison, *st.cell]
        # the page is kept while the same cell shows (selecting a pair changes the view, not the page)
        start = offset["offset"] if isinstance(offset, dict) and offset.get("key") == key else 0
        if prop == "pairs-prev.n_clicks":
            start = max(0, start - uni_view.PAGE)
        elif prop == "pairs-next.n_clicks":
            start += uni_view.PAGE
        elif prop != "view-universality.data":
            start = 0   # a new sort or filter starts from its first page
        try:
            min_corr = float(min_corr) if isinstance(min_corr, (int, float)) and -1 <= min_corr <= 1 else None
            table, start, total = uni_view.pairs_table(store, st, prefix, sort or "-corr", min_corr,
                                                       "kept" in (kept or []), q, start)
        except (UnknownItem, AtlasError):
            raise PreventUpdate from None
        return table, {"key": key, "offset": start}, start == 0, start + uni_view.PAGE >= total, ""

    @app.callback(Output("search-results", "children"), Input("search-btn", "n_clicks"),
                  Input("search-input", "n_submit"), State("search-input", "value"), State("view", "data"),
                  prevent_initial_call=True)
    def do_search(_n, _s, q, view):
        if not q or not view:
            return []
        st = ViewState.model_validate(view)
        hits = search(store, st.atlas, st.layer, q, limit=15)
        if not hits:
            return html.P("no matches", className="muted")
        return html.Ul([html.Li([card_view.link(st, prefix, f"#{h.feature}", feature=h.feature), f"  {h.why}"])
                        for h in hits], id="search-list", className="nlist")

    app.clientside_callback(
        """function(n) {
            if (!n) { return "Copy link"; }
            try { navigator.clipboard.writeText(window.location.href); } catch (e) {}
            return "Copied";
        }""", Output("copy-btn", "children"), Input("copy-btn", "n_clicks"))
    app.clientside_callback(
        "function(s) { return window.location.origin + window.location.pathname + (s || ''); }",
        Output("permalink", "value"), Input("url", "search"))
    # PNG and SVG of any figure, rendered by plotly.js from the figure on the page
    app.clientside_callback(
        """function(clicks) {
            const t = dash_clientside.callback_context.triggered;
            if (!t || !t.length || !t[0].value) { return dash_clientside.no_update; }
            const id = JSON.parse(t[0].prop_id.slice(0, t[0].prop_id.lastIndexOf('.')));
            const gd = document.querySelector('#' + CSS.escape(id.graph) + ' .js-plotly-plot');
            if (!gd) { return dash_clientside.no_update; }
            Plotly.downloadImage(gd, {format: id.fmt, filename: id.name, scale: id.fmt === 'png' ? 2 : 1});
            return id.name + '.' + id.fmt;
        }""", Output("img-export-done", "data"),
        Input({"type": "img-export", "graph": ALL, "fmt": ALL, "name": ALL}, "n_clicks"), prevent_initial_call=True)
    return app


EMPTY_FIG = {"data": [], "layout": {"height": 60, "xaxis": {"visible": False}, "yaxis": {"visible": False}}}


def _clicked_layer(st: ViewState, click) -> ViewState:
    """The layer of a point clicked on a per-layer plot (its x value)."""
    x = (((click or {}).get("points") or [{}])[0]).get("x")
    if not isinstance(x, (int, float)) or int(x) == st.layer:
        raise PreventUpdate
    return st.with_(layer=int(x), feature=None, face=None)


def _apply_control(store: AtlasStore, st: ViewState, prop: str, controls: dict, clicks: dict,
                   curve_layers=None) -> ViewState:
    """The view a change of one control (``prop``, Dash's ``id.property``) asks for."""
    src = prop.rsplit(".", 1)[0]
    c = controls
    if src == "atlas-dd" and c["atlas"] != st.atlas:
        return st.with_(atlas=c["atlas"], feature=None, face=None)
    if src == "layer-dd" and c["layer"] is not None and c["layer"] != st.layer:
        return st.with_(layer=int(c["layer"]), feature=None, face=None)
    if src == "layout-radio" and c["layout"]:
        return st.with_(layout=c["layout"])
    if src in ("color-dd", "aff-dd", "k-dd"):
        return st.with_(coloring=_picked_coloring(c["coloring"], c["affinity"], c["k"]))
    if src == "size-check":
        return st.with_(size_by_freq="freq" in (c["size"] or []))
    if src == "crystal-check":
        return st.with_(min_edge_cos=float(c["min_edge_cos"]) if "on" in (c["crystals"] or []) else None)
    if src == "q-slider":
        return st.with_(min_edge_cos=float(c["min_edge_cos"])) if st.min_edge_cos is not None else st
    if prop == "cloud.clickData":
        return st.with_(feature=_clicked_feature(store, st, clicks["cloud"]))
    if prop == "spectra.clickData":
        curve = (((clicks["spectra"] or {}).get("points") or [{}])[0]).get("curveNumber")
        if not isinstance(curve, int) or not curve_layers or not 0 <= curve < len(curve_layers):
            raise PreventUpdate
        L = curve_layers[curve]
        return st.with_(layer=int(L), feature=None, face=None)
    raise PreventUpdate


def _apply_latent_control(store: AtlasStore, st: ViewState, prop: str, controls: dict, clicks: dict) -> ViewState:
    """The view a change of the view switch or a latent control (or a click in the latent view) asks for."""
    c = controls
    if prop == "view-radio.value" and c["view"] in VIEWS and c["view"] != st.view:
        return st.with_(view=c["view"])
    if prop == "latent-layer-dd.value" and c["latent_layer"] is not None:
        L = None if c["latent_layer"] == "all" else int(c["latent_layer"])
        if L != st.latent_layer:
            return st.with_(latent_layer=L, latent_point=None)
    if prop == "latent-proj-radio.value" and c["latent_projection"] in ("pca", "umap") \
            and c["latent_projection"] != st.latent_projection:
        return st.with_(latent_projection=c["latent_projection"])
    if prop == "latent-color-dd.value" and c["latent_color"] and c["latent_color"] != st.latent_color:
        return st.with_(latent_color=c["latent_color"])
    if prop == "latent-cloud.clickData" and st.view == "latent":
        pt = latent_view.clicked_point(store, st, clicks["latent"])
        if pt is not None:
            return st.with_(latent_point=pt)
    if prop in ("latent-norms-fig.clickData", "latent-sep-fig.clickData") and st.view == "latent":
        L = latent_view.clicked_layer(store, st, clicks["latent_norms" if "norms" in prop else "latent_sep"])
        if L is not None and L != st.latent_layer:
            return st.with_(latent_layer=L, latent_point=None)
    raise PreventUpdate


def _apply_uni_control(st: ViewState, prop: str, controls: dict, clicks: dict) -> ViewState:
    """The view a Universality control or a click on its heat map asks for."""
    c = controls
    if prop == "cmp-dd.value" and c["comparison"] and c["comparison"] != st.comparison:
        return st.with_(comparison=c["comparison"], cell=None, pair=None)
    if prop == "metric-radio.value" and c["metric"] in METRICS and c["metric"] != st.metric:
        return st.with_(metric=c["metric"])
    if prop == "uni-heatmap.clickData" and st.view == "universality":
        cell = uni_view.clicked_cell(clicks["uni"])
        if cell is not None and cell != st.cell:
            return st.with_(cell=cell, pair=None)
    raise PreventUpdate


def _picked_coloring(kind_v, aff_v, k_v) -> Coloring:
    """The colouring the colour, affinity and k dropdowns ask for (the layer's default where
    one is left empty)."""
    try:
        if kind_v == "lobe":
            return Coloring(kind="lobe", affinity=aff_v, k=k_v) if aff_v and k_v else Coloring()
        if kind_v == "geometry":
            return Coloring(kind="geometry", k=k_v or None)
        return Coloring(kind=kind_v or "lobe")
    except ValueError:  # not a value the dropdowns offer
        raise PreventUpdate from None


def _fly(store: AtlasStore, st: ViewState, prev: dict | None, fresh: bool) -> ViewState:
    """Fly the camera to a newly picked crystal face (a face link or a link with ``face=``).

    An opened link that already names a camera centre keeps it: that link restores a view.
    """
    if st.face is None or st.atlas is None or (prev and prev.get("face") == st.face
                                               and (prev.get("atlas"), prev.get("layer")) == (st.atlas, st.layer)):
        return st
    if fresh and st.center is not None:
        return st
    cam = cloud.fly_to_face(store, st)
    return st if cam is None else st.with_(eye=cam[0], center=cam[1])


def _clicked_feature(store: AtlasStore, st: ViewState, click) -> int:
    """The feature id of a click on the cloud (a point, a density cell, a neighbor marker:
    app.views.cloud.clicked_feature)."""
    pt = ((click or {}).get("points") or [{}])[0]
    f = cloud.clicked_feature(store, st, pt)
    if f is None:
        raise PreventUpdate
    return f


def _controls(store: AtlasStore, st: ViewState) -> dict:
    """Options and values of every control (the keys of CONTROL_OUTPUTS) for a resolved state."""
    panels = {"panel": st.panel, "panel_classes": ["panel" if p == st.panel else "panel hidden" for p in PANELS],
              **_latent_controls(store, st)}
    if st.atlas is None or st.layer is None:
        return {"atlas_options": [{"label": n, "value": n} for n in store.names()], "atlas": st.atlas,
                "layer_options": [], "layer": None, "layout_options": [],
                "layout": None, "coloring": None, "affinity_options": [], "affinity": None, "k_options": [],
                "k": None, "size": [], "crystals": [], "min_edge_cos": 0.5, **panels}
    layouts = store.layouts(st.atlas, st.layer) or ["pca"]
    opts = store.lobe_options(st.atlas, st.layer)
    kind = st.coloring.kind
    cooc = [a for a in opts if a != "geometry"]
    aff = st.coloring.affinity if kind == "lobe" else (cooc[0] if cooc else None)
    ks = opts.get("geometry" if kind == "geometry" else aff, []) if (aff or kind == "geometry") else []
    return {
        "atlas_options": [{"label": n, "value": n} for n in store.names()], "atlas": st.atlas,
        "layer_options": [{"label": f"layer {L}", "value": L} for L in store.open(st.atlas).layer_ids],
        "layer": st.layer,
        "layout_options": [{"label": f" {x.upper()}", "value": x, "disabled": x not in layouts}
                           for x in LAYOUTS],
        "layout": st.layout,
        "coloring": kind, "affinity_options": [{"label": a, "value": a} for a in cooc], "affinity": aff,
        "k_options": [{"label": str(x), "value": x} for x in ks],
        "k": st.coloring.k if kind in ("lobe", "geometry") else None,
        "size": ["freq"] if st.size_by_freq else [], "crystals": ["on"] if st.min_edge_cos is not None else [],
        "min_edge_cos": st.min_edge_cos if st.min_edge_cos is not None else 0.5, **panels}


def _latent_controls(store: AtlasStore, st: ViewState) -> dict:
    """The view switch, the latent and universality controls: values, options, and which view's parts show."""
    classes = [cls if view == st.view else f"{cls} hidden" for view in VIEWS for _, cls in VIEW_PARTS[view]]
    comparisons = store.comparison_names()
    out = {"view": st.view, "view_classes": classes, "latent_layer": None, "latent_layer_options": [],
           "latent_projection": st.latent_projection, "latent_color": st.latent_color,
           "latent_projection_options": [{**o, "disabled": True} for o in LATENT_PROJECTIONS],
           "latent_color_options": latent_view.COLOR_OPTIONS,
           "comparison": st.comparison, "comparison_options": [{"label": n, "value": n} for n in comparisons],
           "metric": st.metric}
    has_latent = has_layers = False
    if st.atlas is not None:
        try:
            m = store.open(st.atlas).manifest
            has_latent, has_layers = m.latent is not None, bool(m.layers)
        except (UnknownAtlas, AtlasError):
            pass
    out["view_options"] = [{**VIEW_OPTIONS[0], "disabled": not has_layers},
                           {**VIEW_OPTIONS[1], "disabled": not has_latent,
                            "title": "" if has_latent else "this atlas has no latent capture"},
                           {**VIEW_OPTIONS[2], "disabled": not comparisons,
                            "title": "" if comparisons else "no comparison (saegeo compare) is served here"}]
    if not has_latent:
        return out
    n = m.model.n_layers
    projections = store.latent_projections(st.atlas) if st.latent_layer is not None else ["pca"]
    out.update(latent_layer="all" if st.latent_layer is None else st.latent_layer,
               latent_layer_options=[{"label": "all layers", "value": "all"}]
               + [{"label": f"layer {L}", "value": L} for L in range(n)],
               latent_projection_options=[{**o, "disabled": o["value"] not in projections}
                                          for o in LATENT_PROJECTIONS],
               latent_color_options=[{**o, "disabled": o["value"] == "layer" and st.latent_layer is not None}
                                     for o in latent_view.COLOR_OPTIONS])
    return out


LATENT_PROJECTIONS = [{"label": " PCA", "value": "pca"}, {"label": " UMAP", "value": "umap"}]


def _notice(notes: list[str]):
    if not notes:
        return []
    return html.Div([html.Strong("Some of this link could not be shown: "),
                     html.Ul([html.Li(n) for n in notes])], className="notice", id="notice-box")


def _legend(entries: list) -> list:
    if not entries:
        return [html.P("continuous colour scale (see the bar beside the plot)", className="muted")]
    return [html.Div([html.Span(className="swatch", style={"background": c}),
                      html.Span(f"{label if label >= 0 else '–'} ", className="lid"),
                      html.Span(name or "", className="lname"), html.Span(f" ({n})", className="muted")],
                     className="lrow") for label, c, name, n in entries[:40]]


def _exports(store: AtlasStore, st: ViewState, prefix: str) -> list:
    base = f"{prefix.rstrip('/')}/api/atlases/{st.atlas}/layers/{st.layer}/export?layout={st.layout}"
    out = [html.Span("Export: ", className="muted"),
           html.A("all CSV", href=base + "&format=csv", download=""), " · ",
           html.A("all Parquet", href=base + "&format=parquet", download="")]
    if st.feature is not None:
        nb, _ = store.neighbors(st.atlas, st.layer, st.feature, cloud.N_NEIGHBORS)
        sel = ",".join(str(int(i)) for i in [st.feature, *nb])
        out += [" · ", html.A(f"#{st.feature} + neighbors CSV", href=f"{base}&format=csv&features={sel}", download="",
                              id="export-selection")]
    return out
