"""The feature cloud of wide layers: level of detail in the figure, and in the real page.

One atlas ``wide`` (tests/_app_atlas.build_wide_atlas, built once per session): layer 0 of
262,144 features, layer 1 of 16,384. The browser test opens layer 0 on a real server in
headless Chromium; sizes are asserted in bytes, never in seconds.
"""
from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest

from _app_atlas import start_server, wide_atlas_root
from test_browser import GD, _need_browser, browser, page, query  # noqa: F401 - shared fixtures (CSP checked)

WIDE, SMALL = 262_144, 16_384


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return wide_atlas_root(tmp_path_factory, (WIDE, SMALL))


@pytest.fixture(scope="module")
def store(root):
    from app.data import AtlasStore

    return AtlasStore(root, verify="size")


def view(store, **kw):
    from app.state import ViewState, resolve

    st, _ = resolve(ViewState(atlas="wide", **kw), store)
    return st


def test_a_wide_layer_draws_its_budget_as_points_and_the_rest_as_density(store):
    from app.views import cloud

    st = view(store, layer=0)
    d = cloud.detail(store, st)
    pts = cloud.drawn(store, st)
    assert len(pts) == cloud.POINT_BUDGET and np.all(np.diff(pts) > 0)
    centre, count, rep = d.density
    # every feature is a point or counted in exactly one cell, and a cell's feature is not a point
    assert len(pts) + count.sum() == WIDE
    assert not np.isin(rep, pts).any() and np.all(d.cell[rep] == np.unique(d.cell[np.setdiff1d(np.arange(WIDE), pts)]))
    # stratified, most frequent first: every occupied cell keeps its most frequent feature as a point
    freq = store.frequency("wide", 0)[1]
    order = np.lexsort((np.arange(WIDE), -freq, d.cell))
    _, first = np.unique(d.cell[order], return_index=True)
    assert np.isin(order[first], pts).all()
    # a layer of POINT_BUDGET features or fewer (the demo's 4,096) is drawn whole, without density
    rng = np.random.default_rng(0)
    small = cloud.Detail(rng.normal(size=(4096, 3)).astype(np.float32), rng.random(4096), cloud.POINT_BUDGET)
    assert cloud.POINT_BUDGET >= 4096 and np.array_equal(small.points, np.arange(4096)) and len(small.density[1]) == 0


def test_clicks_resolve_to_the_feature_under_them(store):
    from app.views import cloud

    st = view(store, layer=0)
    pts = cloud.drawn(store, st)
    _, _, rep = cloud.detail(store, st).density
    assert cloud.clicked_feature(store, st, {"curveNumber": 0, "pointNumber": 5}) == pts[5]
    assert cloud.clicked_feature(store, st, {"curveNumber": 5, "pointNumber": 2}) == rep[2]
    assert cloud.clicked_feature(store, st, {"curveNumber": 0, "pointNumber": 5, "customdata": 77}) == 77
    assert cloud.clicked_feature(store, st, {"curveNumber": 0, "pointNumber": len(pts)}) is None
    # the selected feature brings its surroundings as points (trace 6), none of them in trace 0
    near = cloud.focus(store, st.with_(feature=int(rep[2])))
    assert len(near) == cloud.DETAIL_POINTS and not np.isin(near, pts).any()
    assert cloud.clicked_feature(store, st.with_(feature=int(rep[2])), {"curveNumber": 6, "pointNumber": 0}) == near[0]
    # zoomed in around the centre: the features nearest to it
    zoomed = st.with_(eye=(0.3, 0.3, 0.3), center=(0.0, 0.0, 0.0))
    assert 0 < len(cloud.focus(store, zoomed)) <= cloud.DETAIL_POINTS and len(cloud.focus(store, st)) == 0


def test_a_layer_just_over_the_budget_is_whole_once_a_feature_is_selected(tmp_path):
    from _app_atlas import build_wide_atlas
    from app.data import AtlasStore
    from app.views import cloud

    build_wide_atlas(tmp_path / "wide", (cloud.POINT_BUDGET + 1000,))
    store = AtlasStore(tmp_path, verify="size")
    st = view(store, layer=0)
    pts, near = cloud.drawn(store, st), cloud.focus(store, st.with_(feature=3))
    # the 1,000 features not drawn come around the selection, none of them twice
    assert len(near) == 1000 and len(np.union1d(pts, near)) == cloud.POINT_BUDGET + 1000


def test_partial_updates_send_the_detail_only_when_it_changes(store):
    from app.views import cloud

    st = view(store, layer=0)

    def ops(new):
        p, _ = cloud.patch(store, st, new)
        return {} if p is None else {tuple(o["location"][:2]): o for o in p.to_plotly_json()["operations"]}

    # a rotation that stays out of zooming sends nothing; a selection its surroundings and the note
    assert ops(st.with_(eye=(1.5, 1.2, 1.3))) == {}
    sel = ops(st.with_(feature=123))
    ids = np.frombuffer(base64.b64decode(sel[("data", 6)]["params"]["value"]["customdata"]["bdata"]), "<i4")
    assert np.array_equal(ids, cloud.focus(store, st.with_(feature=123))) and len(ids) == cloud.DETAIL_POINTS
    assert "4,096 more around the view" in sel[("layout", "annotations")]["params"]["value"]["text"]
    # a new colouring recolours the points drawn, not every feature
    from app.state import Coloring

    col = ops(st.with_(coloring=Coloring(kind="freq")))[("data", 0)]["params"]["value"]["color"]
    assert len(base64.b64decode(col["bdata"])) == 4 * cloud.POINT_BUDGET   # float32 per point


@pytest.fixture(scope="module")
def server(root):
    _need_browser()
    proc, base = start_server(root)
    yield base
    proc.terminate()
    proc.wait(timeout=10)


def figure_of_layer(layer: int):
    """A predicate: the draw callback's answer for ``layer`` (the cloud figure, whole or patched)."""
    def match(resp) -> bool:
        body = resp.request.post_data or ""
        return "_dash-update-component" in resp.url and "cloud.figure" in body and \
            re.search(rf'"layer":\s*{layer}[,}}]', body) is not None

    return match


def test_a_262k_feature_layer_opens_with_points_density_cards_and_search(server, store, page):
    from app.views import cloud

    page.goto(f"{server}/?atlas=wide&layer=0")
    page.wait_for_function(f"() => {{ const g = {GD}; return g && g._fullData && g._fullData.length === 7 && "
                           f"g._fullData[0].x.length === {cloud.POINT_BUDGET} && g._fullData[5].x.length > 0 && "
                           f"g._fullLayout.scene._scene && g._ev && g._ev.listeners('plotly_click').length > 0 }}",
                           timeout=90_000)
    # the page says how many features are points and that the rest is density
    note = page.locator("#cloud .annotation-text").first
    assert note.is_visible()
    n = cloud.POINT_BUDGET
    assert re.search(rf"{n:,} of {WIDE:,} features drawn as points.*the other {WIDE - n:,} as grey density",
                     note.text_content())
    st = view(store, layer=0)
    pts, rep = cloud.drawn(store, st), cloud.detail(store, st).density[2]
    assert page.evaluate(f"() => Array.from({GD}._fullData[0].customdata.slice(0, 3))") == pts[:3].tolist()

    # the hover label of a point names its feature and that feature's own tokens (t<id> first)
    box, label = page.locator("#cloud").bounding_box(), ""
    for i in range(200):
        x, y = 0.3 + 0.03 * (i % 14), 0.3 + 0.03 * (i // 14)
        page.mouse.move(box["x"] + box["width"] * x, box["y"] + box["height"] * y)
        page.wait_for_timeout(40)
        label = page.evaluate("() => (document.querySelector('#cloud .hovertext') || {}).textContent || ''")
        if label.startswith("#"):
            break
    assert re.fullmatch(r"#(\d+)  t\1 \w+ \w+", label), label
    page.mouse.move(box["x"] + 2, box["y"] + 2)

    # a click on a point opens that feature's card
    page.evaluate(f"() => {{ const g = {GD}; g.emit('plotly_click', {{points: [{{curveNumber: 0, pointNumber: 7, "
                  "customdata: g._fullData[0].customdata[7]}]}); }")
    page.wait_for_function(f"() => new URLSearchParams(location.search).get('f') === '{pts[7]}'", timeout=30_000)
    page.wait_for_function(f"() => (document.querySelector('#card-title') || {{}}).textContent === 'Feature {pts[7]}'",
                           timeout=30_000)
    # ... and a click on a density cell the card of its most frequent feature, not a point
    page.evaluate(f"() => {{ const g = {GD}; g.emit('plotly_click', {{points: [{{curveNumber: 5, pointNumber: 4, "
                  "customdata: g._fullData[5].customdata[4]}]}); }")
    page.wait_for_function(f"() => (document.querySelector('#card-title') || {{}}).textContent === 'Feature {rep[4]}'",
                           timeout=30_000)
    assert int(rep[4]) not in set(pts.tolist())
    # the selection brings the features around it as points, and the note counts them
    page.wait_for_function(f"() => {GD}._fullData[6].x.length === {cloud.DETAIL_POINTS}", timeout=30_000)
    assert f"{cloud.DETAIL_POINTS:,} more around the view" in note.text_content()

    # search finds a feature that is not drawn as a point, and its result opens the card
    hidden = next(f for f in range(WIDE - 1, 0, -1) if f not in set(pts.tolist()) | set(rep.tolist()))
    page.fill("#search-input", f"t{hidden}")
    page.click("#search-btn")
    page.wait_for_selector("#search-list a", timeout=30_000)
    page.locator("#search-list a").first.click()
    page.wait_for_function(f"() => (document.querySelector('#card-title') || {{}}).textContent === 'Feature {hidden}'",
                           timeout=30_000)
    assert query(page)["f"] == str(hidden)
    # the selected marker (trace 2) is drawn for it though it is no point of trace 0
    assert page.evaluate(f"() => {GD}._fullData[2].x.length") == 11

    # zoomed in (the user's camera, through the link), the features around the view's centre come as points
    page.evaluate(f"() => Plotly.relayout({GD}, {{'scene.camera': {{eye: {{x: 0.35, y: 0.35, z: 0.35}}, "
                  "center: {x: 0, y: 0, z: 0}, up: {x: 0, y: 0, z: 1}}})")
    near = cloud.focus(store, st.with_(feature=hidden, eye=(0.35, 0.35, 0.35)))
    assert 0 < len(near) and not np.array_equal(near, cloud.focus(store, st.with_(feature=hidden)))
    page.wait_for_function(f"() => {{ const c = {GD}._fullData[6].customdata; "
                           f"return c && c.length === {len(near)} && c[0] === {near[0]}; }}", timeout=30_000)

    # the 16,384-feature layer's figure stays under half a megabyte as it travels
    with page.expect_response(figure_of_layer(1), timeout=90_000) as got:
        page.goto(f"{server}/?atlas=wide&layer=1")
    body = got.value.body()
    fig = json.loads(body)["response"]["cloud"]["figure"]
    ids = np.frombuffer(base64.b64decode(fig["data"][0]["customdata"]["bdata"]), "<i4")
    assert np.array_equal(ids, cloud.drawn(store, view(store, layer=1)))   # the whole figure
    assert 100_000 < len(body) < 500_000, len(body)
    page.wait_for_function(f"() => {{ const g = {GD}; return g && g._fullData && g._fullData[0] && "
                           f"g._fullData[0].x.length === {cloud.POINT_BUDGET} && g._fullLayout.scene._scene }}",
                           timeout=90_000)
    assert not page.errors
