"""The Latent view (METHODS 4) as users meet it: the JSON API over real HTTP, the permalink's
resolution, and the page in headless Chromium (Debian's /usr/bin/chromium, Playwright).

The atlas served is ``smollm2`` of tests/_app_atlas.py: synthetic SAE layers 9 and 29 over a
real SmolLM2 latent capture (4 documents x 64 positions, 128 sampled tokens, UMAP of 32),
beside ``syn``, which has no latent capture.
"""
from __future__ import annotations

import re
from urllib.parse import parse_qs, urlparse

import httpx
import numpy as np
import pytest

from _app_atlas import LATENT_TEST, latent_atlas_root, start_server
from test_browser import _need_browser, browser, page  # noqa: F401 - the shared fixtures (CSP checked)

pytestmark = pytest.mark.model

N_LAYERS, S, U = 30, LATENT_TEST["sample_tokens"], LATENT_TEST["umap_tokens"]
K = 4 * N_LAYERS + 2
GD = "document.querySelector('#latent-cloud .js-plotly-plot')"
N_POINTS = f"() => {{ const g = {GD}; return g && g._fullData && g._fullData[0] ? g._fullData[0].x.length : -1; }}"


@pytest.fixture(scope="module")
def root(request, tmp_path_factory):
    return latent_atlas_root(request, tmp_path_factory)


@pytest.fixture(scope="module")
def server(root):
    proc, base = start_server(root)
    yield base
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def atlas(root):
    from analysis.atlas import open_atlas

    return open_atlas(root / "smollm2", verify="size")


# --------------------------------------------------------------------------- API over HTTP


def test_latent_routes_answer_with_the_capture(server, atlas):
    c = httpx.Client(base_url=server + "/api/atlases/smollm2/latent", timeout=30)
    s = httpx.get(server + "/api/atlases/smollm2/latent", timeout=30).json()
    assert (s["model"], s["n_layers"], len(s["captures"]), s["sample_tokens"], s["umap_tokens"]) == \
        ("SmolLM2-135M-Instruct", N_LAYERS, K, S, U)
    assert s["projections"] == ["pca", "umap"] and s["kinds"][1] == "attn_out" and "self_attn" in s["tensors"]["attn_out"]

    # all layers: every capture slot of every sample token, one PCA
    p = c.get("/points").json()
    assert p["layer"] is None and p["n"] == K * S == len(p["x"]) == len(p["slot"])
    assert p["slot"][:S] == [0] * S and p["kind"][0] == "embed" and p["kind"][-1] == "final_norm"
    assert p["depth"][0] == -1 and p["depth"][-1] == N_LAYERS and min(p["position"]) >= 1
    glob = np.asarray(atlas.array("latent/pca_global.npy"))
    np.testing.assert_allclose(p["x"][S:2 * S], glob[1, :, 0], rtol=1e-6)
    # one block: its five captures, in forward order, on its own PCA; a prefix of the sample
    p = c.get("/points", params={"layer": 9, "tokens": 10}).json()
    assert p["n"] == 50 and p["n_tokens"] == 10 and sorted(set(p["kind"])) == sorted(s["kinds"])
    lay = np.asarray(atlas.array("latent/pca_layer.npy"))
    np.testing.assert_allclose(np.reshape(p["z"], (5, 10)), lay[9, :, :10, 2], rtol=1e-6)
    # resid_pre of block 9 is stored once, as block 8's resid_post
    assert p["slot"][0] == s["captures"].index("blocks.8.hook_resid_post")
    p = c.get("/points", params={"layer": 0, "projection": "umap"}).json()
    assert p["n"] == 5 * U and p["slot"][0] == 0

    n = c.get("/norms").json()
    assert len(n["slots"]) == K and len(n["by_position"]) == K and len(n["by_position"][0]) == 64
    embed = n["slots"][0]
    assert embed["kind"] == "embed" and embed["pos0_ratio"] == pytest.approx(embed["pos0"] / embed["median"])
    sep = c.get("/separation").json()
    assert len(sep["layers"]) == N_LAYERS and sep["tokens"] == LATENT_TEST["separation_tokens"]
    assert all(0 <= r["raw"]["accuracy"] <= 1 and 0 <= r["unit"]["accuracy_shuffled"] <= 1 for r in sep["layers"])

    # a token in its document: the window's marked token is the token at that position
    t = c.get("/tokens/5", params={"slot": 3, "window": 4}).json()
    doc, pos = np.asarray(atlas.array("latent/sample.npy"))[5]
    toks = list(atlas.table("latent/docs.parquet")["tokens"].iloc[doc])
    assert (t["doc"], t["position"], t["capture"]) == (doc, pos, "blocks.0.hook_mlp_out")
    assert t["tokens"] == toks[max(0, pos - 4):pos + 5] and t["tokens"][t["peak"]] == t["token"] == toks[pos]
    assert t["norm"] == pytest.approx(float(atlas.array("latent/norms.npy")[3, doc, pos]))


@pytest.mark.parametrize("url, status, detail", [
    ("/api/atlases/syn/latent", 404, "atlas 'syn' has no latent capture"),
    ("/api/atlases/syn/latent/points", 404, "atlas 'syn' has no latent capture"),
    ("/api/atlases/nope/latent/norms", 404, "no atlas named 'nope'"),
    ("/api/atlases/smollm2/latent/points?layer=30", 404, "has layers 0..29; there is no layer 30"),
    ("/api/atlases/smollm2/latent/tokens/128", 404, "sample tokens 0..127; there is no token 128"),
    ("/api/atlases/smollm2/latent/tokens/1?slot=122", 404, "capture slots 0..121; there is no slot 122"),
    ("/api/atlases/smollm2/latent/points?projection=umap", 422, "umap is computed per layer"),
])
def test_latent_routes_refuse_what_is_not_there(server, url, status, detail):
    r = httpx.get(server + url, timeout=30)
    assert r.status_code == status and detail in r.json()["detail"], r.text
    r = httpx.get(server + "/api/atlases/smollm2/latent/points?projection=tsne", timeout=30)
    assert r.status_code == 422


# --------------------------------------------------------------------------- the permalink


def test_latent_links_resolve_to_what_the_capture_holds(root):
    from app.data import AtlasStore
    from app.state import parse_query, resolve

    store = AtlasStore(root)

    def open_(q):
        st, problems = parse_query(q)
        st, notes = resolve(st, store)
        return st, problems + notes

    st, notes = open_("?atlas=smollm2&view=latent&ll=40&lp=umap&lc=layer")
    assert (st.view, st.latent_layer, st.latent_projection, st.latent_color) == ("latent", 29, "umap", "kind")
    assert notes == ["the latent capture has layers 0..29; showing layer 29",
                     "every point of layer 29 has the same layer; colouring by capture kind"]
    st, notes = open_("?atlas=smollm2&view=latent&lp=umap")
    assert st.latent_projection == "pca" and notes == ["UMAP is computed per layer; showing the PCA of all layers"]
    # a point must be in the view: its capture among the layer's, its token among those projected
    st, notes = open_("?atlas=smollm2&view=latent&ll=2&lp=umap&pt=9:40")
    assert st.latent_point is None and notes == ["point 9:40 is not in the latent view of layer 2; nothing selected"]
    st, notes = open_("?atlas=smollm2&view=latent&ll=2&lp=pca&pt=9:40")
    assert st.latent_point == (9, 40) and notes == []
    st, notes = open_("?atlas=smollm2&view=latent&ll=2&pt=13:0")
    assert st.latent_point is None and len(notes) == 1
    # the feature cloud's keys are resolved as before, beside the latent ones
    st, notes = open_("?atlas=smollm2&layer=10&view=latent&ll=all&lc=position&pt=121:3")
    assert (st.layer, st.latent_point, st.latent_color) == (9, (121, 3), "position")
    assert notes == ["layer 10 is not in atlas 'smollm2'; showing layer 9"]


# --------------------------------------------------------------------------- in the browser


def open_latent(page, url: str, n: int):
    """Open a URL and wait until the latent cloud drew ``n`` points and listens to clicks."""
    page.goto(url)
    page.wait_for_function(f"() => ({N_POINTS})() === {n} && {GD}._ev && "
                           f"{GD}._ev.listeners('plotly_click').length > 0", timeout=60_000)


def query(page) -> dict:
    return {k: v[0] for k, v in parse_qs(urlparse(page.url).query).items()}


def wait_query(page, key: str, value: str | None):
    js = f"new URLSearchParams(location.search).get('{key}')"
    want = "null" if value is None else f"'{value}'"
    page.wait_for_function(f"() => {js} === {want}", timeout=20_000)


def pick(page, dropdown: str, label: str):
    """Choose ``label`` in a Dash dropdown as a user does: open it, click the option."""
    page.click(f"#{dropdown}")
    page.get_by_role("option", name=label, exact=True).click()


@pytest.mark.browser
def test_latent_view_draws_switches_restores_and_shows_a_token(server, browser, page, atlas):
    open_latent(page, f"{server}/?atlas=smollm2&view=latent", K * S)
    assert page.evaluate(f"() => {GD}._fullData[0].type") == "scatter3d"
    q = query(page)
    assert (q["view"], q["ll"], q["lp"], q["lc"]) == ("latent", "all", "pca", "kind")
    assert page.locator("#latent-legend .lrow").count() == 6        # embedding, 4 per block, final norm
    assert page.is_hidden("#cloud-main") and page.is_visible("#latent-main")
    # the panels: norm against layer with position 0 as its own traces, separation with baselines
    page.wait_for_function("() => { const g = document.querySelector('#latent-sep-fig .js-plotly-plot');"
                           " return g && g._fullData && g._fullData.length === 8 }", timeout=20_000)
    names = page.evaluate("() => document.querySelector('#latent-norms-fig .js-plotly-plot')._fullData"
                          ".map(t => t.name)")
    assert "residual stream, position 0" in names and "residual stream, median" in names

    # colouring and layer are controls; each change is in the URL
    pick(page, "latent-color-dd", "sequence position")
    wait_query(page, "lc", "position")
    page.wait_for_function(f"() => {GD}._fullData[0].marker.colorscale[0][1] !== undefined && "
                           f"{GD}._fullData[0].marker.showscale === true", timeout=20_000)
    pick(page, "latent-layer-dd", "layer 3")
    wait_query(page, "ll", "3")
    page.wait_for_function(f"() => ({N_POINTS})() === {5 * S}", timeout=20_000)
    page.check("#latent-proj-radio input[value=umap]")
    wait_query(page, "lp", "umap")
    page.wait_for_function(f"() => ({N_POINTS})() === {5 * U}", timeout=20_000)
    assert query(page)["lc"] == "position"

    # a click on a point shows its token in its document, and selects it in the URL
    page.evaluate(f"() => {GD}.emit('plotly_click', {{points: [{{curveNumber: 0, pointNumber: {U + 7}}}]}})")
    page.wait_for_selector("#latent-token-title", timeout=20_000)
    slot = atlas.manifest.latent.captures.index("blocks.3.hook_attn_out")   # the second capture of block 3
    wait_query(page, "pt", f"{slot}:7")
    doc, pos = np.asarray(atlas.array("latent/sample.npy"))[7]
    toks = list(atlas.table("latent/docs.parquet")["tokens"].iloc[doc])
    assert page.text_content("#latent-peak") == toks[pos].replace("\n", "⏎ ")
    assert page.locator("#latent-context span").count() >= 4
    assert "attention out, layer 3" in page.text_content("#latent-token-capture")
    assert f"position {pos}" in page.text_content("#latent-token-where")
    assert page.evaluate(f"() => {GD}._fullData[1].x.length") == 1           # the selected point drawn
    url = page.url

    # the URL restores the same view in a fresh page
    fresh = browser.new_page(viewport={"width": 1200, "height": 800})
    try:
        open_latent(fresh, url, 5 * U)
        assert query(fresh) == query(page)
        fresh.wait_for_selector("#latent-token-title", timeout=20_000)
        assert fresh.text_content("#latent-peak") == page.text_content("#latent-peak")
        assert "layer 3" in fresh.text_content("#latent-layer-dd")
        assert fresh.is_checked("#latent-proj-radio input[value=umap]")
        assert fresh.evaluate(f"() => {GD}._fullData[1].x.length") == 1
    finally:
        fresh.close()

    # a click on the separation plot opens that layer
    page.evaluate("() => document.querySelector('#latent-sep-fig .js-plotly-plot')"
                  ".emit('plotly_click', {points: [{curveNumber: 0, pointNumber: 12, x: 12}]})")
    wait_query(page, "ll", "12")
    wait_query(page, "pt", None)
    page.wait_for_function(f"() => ({N_POINTS})() === {5 * U}", timeout=20_000)
    assert page.errors == []


@pytest.mark.browser
def test_switching_views_keeps_each_views_link(server, page):
    cloud_pts = "() => { const g = document.querySelector('#cloud .js-plotly-plot');" \
                " return g && g._fullData && g._fullData[0] ? g._fullData[0].x.length : -1; }"
    page.goto(f"{server}/?atlas=smollm2&layer=29&layout=pca&color=lobe:phi:4&f=7")
    page.wait_for_function(f"() => ({cloud_pts})() === 200", timeout=60_000)
    before = page.url
    page.check("#view-radio input[value=latent]")
    wait_query(page, "view", "latent")
    page.wait_for_function(f"() => ({N_POINTS})() === {K * S}", timeout=60_000)
    q = query(page)
    assert (q["layer"], q["f"], q["color"]) == ("29", "7", "lobe:phi:4")     # the cloud's state kept
    page.check("#view-radio input[value=cloud]")
    wait_query(page, "view", None)
    assert page.url == before and page.is_visible("#cloud-main") and page.is_hidden("#latent-main")
    assert re.search(r"\d+", page.text_content("#card-title")).group() == "7"

    # an atlas without a latent capture: the link opens the cloud with a notice; Latent is disabled
    page.goto(f"{server}/?atlas=syn&layer=0&view=latent&ll=3")
    page.wait_for_selector("#notice-box", timeout=60_000)
    assert "has no latent capture" in page.text_content("#notice-box")
    page.wait_for_function(f"() => ({cloud_pts})() === 600", timeout=60_000)
    assert "view" not in query(page) and page.is_disabled("#view-radio input[value=latent]")
    assert page.errors == []
