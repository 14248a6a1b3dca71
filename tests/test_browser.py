"""The real page in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright).

The server is a real uvicorn process on a free port serving the synthetic atlas. Without the
browser these tests skip, unless SAEGEO_REQUIRE_BROWSER=1 (CI), where they fail.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import numpy as np
import pytest

from _app_atlas import app_atlas_root, start_server

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-dev-shm-usage", "--enable-unsafe-swiftshader", "--disable-background-networking"]
GD = "document.querySelector('#cloud .js-plotly-plot')"
N_POINTS = f"() => {{ const g = {GD}; return g && g._fullData && g._fullData[0] ? g._fullData[0].x.length : -1; }}"


def _need_browser():
    why = None
    if not Path(CHROMIUM).is_file():
        why = f"{CHROMIUM} is missing (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            why = "python playwright is not installed"
    if why:
        if os.environ.get("SAEGEO_REQUIRE_BROWSER") == "1":
            pytest.fail(f"browser tests required (SAEGEO_REQUIRE_BROWSER=1) but {why}")
        pytest.skip(why)


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    _need_browser()
    proc, base = start_server(app_atlas_root(request, tmp_path_factory))
    yield base
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def browser(server):
    # shared with the other views' browser tests (they import it with `page`)
    _need_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    pg = ctx.new_page()
    pg.errors, pg.csp = [], []
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    # the server's Content-Security-Policy must let every interaction of every test work
    pg.on("console", lambda m: pg.csp.append(m.text) if "Content Security Policy" in m.text else None)
    yield pg
    ctx.close()
    assert not pg.csp, pg.csp


def open_view(page, url: str, n: int = 600):
    """Open a URL and wait until the cloud drew ``n`` points and Dash listens to its clicks."""
    page.goto(url)
    page.wait_for_function(f"() => ({N_POINTS})() === {n} && {GD}._ev && "
                           f"{GD}._ev.listeners('plotly_click').length > 0", timeout=45_000)


def query(page) -> dict:
    return {k: v[0] for k, v in parse_qs(urlparse(page.url).query).items()}


def card_feature(page) -> int:
    page.wait_for_selector("#card-title", timeout=15_000)
    return int(re.search(r"\d+", page.text_content("#card-title")).group())


def test_cloud_click_card_and_permalink(server, browser, page):
    # The first response carrying the cloud figure: coordinates must travel as typed arrays.
    figures = []

    def grab(resp):
        if "_dash-update-component" in resp.url and not figures:
            try:
                body = resp.json()
            except Exception:  # noqa: BLE001 - a response without a body (navigation) is not ours
                return
            if "cloud" in body.get("response", {}):
                figures.append((body["response"]["cloud"]["figure"], len(resp.body())))

    page.on("response", grab)
    open_view(page, f"{server}/?atlas=syn&layer=1&layout=pca&color=lobe:phi:4")
    # WebGL scene drew all 600 features
    assert page.locator("#cloud canvas").count() >= 1
    assert page.evaluate(f"() => {GD}._fullData[0].type") == "scatter3d"
    assert page.is_visible("#synthetic-banner") and "Synthetic atlas" in page.text_content("#synthetic-banner")
    fig, nbytes = figures[0]
    trace = fig["data"][0]
    assert set(trace["x"]) == {"dtype", "bdata"} and trace["x"]["dtype"] == "f4"
    assert set(trace["marker"]["color"]) == {"dtype", "bdata"}
    legend = page.locator("#legend .lrow").all_text_contents()
    assert len(legend) == 5 and legend[0].startswith("–") and "(" in legend[1]

    # a click on point 123 (plotly's own click event) opens its card and changes the URL
    page.evaluate(f"() => {GD}.emit('plotly_click', {{points: [{{curveNumber: 0, pointNumber: 123}}]}})")
    page.wait_for_function("() => new URLSearchParams(location.search).get('f') === '123'", timeout=15_000)
    assert card_feature(page) == 123
    api = httpx.get(f"{server}/api/atlases/syn/layers/1/features/123").json()
    shown = [int(x.strip("#")) for x in page.locator("#card-neighbors a").all_text_contents()]
    assert shown == [n["feature"] for n in api["neighbors"]]
    assert page.locator("#card-contexts mark").count() == 3  # peak token highlighted in each context
    # neighbor edges drawn: 10 segments of 3 vertices (the third a gap)
    assert page.evaluate(f"() => {GD}._fullData[1].x.length") == 30

    # a neighbor link is a permalink followed without reloading the page
    page.evaluate("() => { window.__same_page = true; }")
    page.click("#card-neighbors li:nth-child(2) a")
    second = shown[1]
    page.wait_for_function(f"() => new URLSearchParams(location.search).get('f') === '{second}'", timeout=15_000)
    page.wait_for_function(f"() => document.querySelector('#card-title').textContent === 'Feature {second}'")
    assert page.evaluate("() => window.__same_page") is True
    url = page.url

    # the URL restores the same view in a fresh page
    fresh = browser.new_page(viewport={"width": 1200, "height": 800})
    try:
        open_view(fresh, url)
        assert card_feature(fresh) == second
        assert query(fresh)["layer"] == "1" and query(fresh)["f"] == str(second)
        assert "layer 1" in fresh.text_content("#layer-dd")
        assert fresh.evaluate(f"() => {GD}._fullData[2].x.length") == 11  # selected + 10 neighbors
    finally:
        fresh.close()
    assert page.errors == []


def test_a_bad_link_opens_the_nearest_view_with_a_notice(server, page):
    bad = (f"{server}/?atlas=nope&layer=7&layout=tsne&color=%3Cimg%20src%3Dx%20onerror%3Dwindow.__x%3D1%3E"
           "&f=99999&%3Cscript%3Ewindow.__y%3D1%3C%2Fscript%3E=1")
    open_view(page, bad)
    notice = page.text_content("#notice-box")
    for expected in ("no atlas 'nope'", "layer 7", "ignored layout='tsne'", "<img src=x onerror=window.__x=1>"):
        assert expected in notice
    # nothing from the link became markup
    assert page.locator("#notice img, #notice script").count() == 0
    assert page.evaluate("() => [window.__x, window.__y]") == [None, None]
    q = query(page)
    assert (q["atlas"], q["layer"], q["layout"]) == ("syn", "2", "pca") and "f" not in q
    assert page.errors == []


def test_partial_updates_keep_the_figure_and_overlays_draw(server, page):
    open_view(page, f"{server}/?atlas=syn&layer=0&layout=pca&color=lobe:phi:4&f=5")
    card_feature(page)
    page.evaluate(f"() => {{ window.__gd = {GD}; }}")
    bodies = []

    def grab(resp):
        if "_dash-update-component" in resp.url:
            try:
                bodies.append(resp.json())
            except Exception:  # noqa: BLE001 - a response without a body
                pass

    page.on("response", grab)
    page.check("#size-check input")
    page.wait_for_function(f"() => Array.isArray({GD}._fullData[0].marker.size) || "
                           f"ArrayBuffer.isView({GD}._fullData[0].marker.size)", timeout=15_000)
    # the update was a Patch: only marker size went over the wire, not the coordinates
    for _ in range(50):  # the response event may be handled just after the redraw
        cloud_updates = [b["response"]["cloud"]["figure"] for b in bodies if "cloud" in b.get("response", {})]
        if cloud_updates:
            break
        page.wait_for_timeout(100)
    assert cloud_updates and all("__dash_patch_update" in u for u in cloud_updates)
    touched = [op["location"] for u in cloud_updates for op in u["operations"]]
    assert ["data", 0, "marker", "size"] in touched and all(loc[:2] != ["data", 0] or loc[2] == "marker"
                                                            for loc in touched)
    assert page.evaluate(f"() => window.__gd === {GD}")  # same graph, not a redraw from scratch
    assert query(page)["size"] == "freq"

    page.check("#crystal-check input")
    page.wait_for_function(f"() => {GD}._fullData[3].i && {GD}._fullData[3].i.length > 0", timeout=15_000)
    assert query(page)["q"] == "0.5"
    # layout switch moves the points, keeps the selection
    page.check("#layout-radio input[value=umap]")
    page.wait_for_function("() => new URLSearchParams(location.search).get('layout') === 'umap'")
    assert card_feature(page) == 5
    assert page.errors == []


def test_spectra_search_camera_and_crystal_faces(server, root_faces, page):
    open_view(page, f"{server}/?atlas=syn&layer=0&layout=pca&color=lobe:phi:4")
    # a click on layer 2's spectrum opens layer 2
    page.wait_for_function("() => { const g = document.querySelector('#spectra .js-plotly-plot');"
                           " return g && g._fullData && g._fullData.length >= 3 }")
    curve = page.evaluate("() => document.querySelector('#spectra .js-plotly-plot')._fullData"
                          ".findIndex(t => t.meta === 2)")
    page.evaluate("(c) => document.querySelector('#spectra .js-plotly-plot')"
                  ".emit('plotly_click', {points: [{curveNumber: c, pointNumber: 3}]})", curve)
    page.wait_for_function("() => new URLSearchParams(location.search).get('layer') === '2'")

    # search by token: the hits are links to features whose top tokens include it
    page.fill("#search-input", "lemma")
    page.press("#search-input", "Enter")
    page.wait_for_selector("#search-list a")
    first = int(page.text_content("#search-list a").strip("#"))
    page.click("#search-list a")
    assert card_feature(page) == first
    assert "lemma" in page.text_content("#card")

    # the camera goes into the URL after a rotation
    page.evaluate(f"() => Plotly.relayout({GD}, {{'scene.camera': {{eye: {{x: 0.5, y: -1.75, z: 0.25}}}}}})")
    page.wait_for_function("() => new URLSearchParams(location.search).get('cam') === '0.5,-1.75,0.25'")

    # a crystal partner link in the card draws that face
    a, face = root_faces
    open_view(page, f"{server}/?atlas=syn&layer=0&f={a}")
    page.click("#card-crystals a.facelink")
    page.wait_for_function(f"() => new URLSearchParams(location.search).get('face') === '{face}'")
    page.wait_for_function(f"() => {GD}._fullData[4].i && {GD}._fullData[4].i.length === 2")
    assert page.errors == []


# Where the picked face's centroid lands on the canvas, in clip coordinates (-1..1, 0 = the
# middle): plotly.js's own model, view and projection matrices applied to the drawn vertices.
FACE_ON_SCREEN = f"""() => {{
    const g = {GD}, sc = g._fullLayout.scene._scene, cp = sc.glplot.cameraParams, f = g._fullData[4];
    const n = f.x.length, p = [0, 0, 0, 1];
    for (let i = 0; i < n; i++) {{ p[0] += f.x[i] / n; p[1] += f.y[i] / n; p[2] += f.z[i] / n; }}
    for (let k = 0; k < 3; k++) p[k] *= sc.dataScale[k];
    const mul = (m, v) => [0, 1, 2, 3].map(r => m[r] * v[0] + m[4 + r] * v[1] + m[8 + r] * v[2] + m[12 + r] * v[3]);
    const c = mul(cp.projection, mul(cp.view, mul(cp.model, p)));
    const cam = g._fullLayout.scene.camera, e = cam.eye, m = cam.center;
    return [c[0] / c[3], c[1] / c[3], Math.hypot(e.x - m.x, e.y - m.y, e.z - m.z), [m.x, m.y, m.z]];
}}"""


def test_crystal_overlay_threshold_and_flying_to_a_face(server, root_faces, crystal_table, page):
    edge = crystal_table["edge_cos"].to_numpy()
    n_faces = f"() => {{ const t = {GD}._fullData[3]; return t.i ? t.i.length / 2 : 0; }}"
    open_view(page, f"{server}/?atlas=syn&layer=0&layout=pca&color=lobe:phi:4")
    assert page.evaluate(n_faces) == 0
    # the overlay at the default threshold draws every face at least that good
    page.check("#crystal-check input")
    page.wait_for_function(f"() => ({n_faces})() > 0", timeout=15_000)
    assert query(page)["q"] == "0.5" and page.evaluate(n_faces) == (edge >= 0.5).sum() == len(edge)
    # the slider, moved to its top end from the keyboard: no face reaches an edge cosine of 1
    page.focus("#q-slider [role=slider]")
    page.keyboard.press("End")
    page.wait_for_function("() => new URLSearchParams(location.search).get('q') === '1'", timeout=15_000)
    page.wait_for_function(f"() => ({n_faces})() === 0", timeout=15_000)
    # thresholds between two neighboring face qualities, from a link: strictly fewer faces above
    # (each threshold is a face's quality rounded down, so the next one leaves that face out)
    qs = np.unique(np.floor(edge * 1000) / 1000)
    assert len(qs) >= 2
    counts = []
    for q in qs:
        open_view(page, f"{server}/?atlas=syn&layer=0&layout=pca&color=lobe:phi:4&q={q:.3f}")
        page.wait_for_function(f"() => ({n_faces})() === {(edge >= q).sum()}", timeout=15_000)
        counts.append(page.evaluate(n_faces))
    assert all(hi > lo for hi, lo in zip(counts, counts[1:])) and counts[-1] > 0, counts
    # unticking the overlay removes the faces
    page.uncheck("#crystal-check input")
    page.wait_for_function(f"() => ({n_faces})() === 0", timeout=15_000)
    assert "q" not in query(page)

    # a face link flies the camera to the face: centred (the middle of the canvas) and close
    a, face = root_faces
    open_view(page, f"{server}/?atlas=syn&layer=0&f={a}")
    before = page.evaluate(FACE_ON_SCREEN)
    assert before[3] == [0, 0, 0]
    page.click("#card-crystals a.facelink")
    page.wait_for_function(f"() => new URLSearchParams(location.search).get('face') === '{face}'")
    page.wait_for_function(f"() => {GD}._fullData[4].i && {GD}._fullData[4].i.length === 2")
    page.wait_for_function(f"() => {GD}._fullLayout.scene.camera.center.x !== 0", timeout=15_000)
    x, y, dist, center = page.evaluate(FACE_ON_SCREEN)
    assert abs(x) < 0.05 and abs(y) < 0.05, (x, y)
    assert dist < 0.5 * before[2] and max(map(abs, center)) > 0.05
    # the camera is part of the link, and the link alone brings the same view back
    q = query(page)
    assert [float(v) for v in q["ctr"].split(",")] == pytest.approx(center, abs=1e-3)
    url = page.url
    open_view(page, f"{server}/?atlas=syn&layer=0&layout=pca&color=lobe:phi:4")
    open_view(page, url)
    page.wait_for_function(f"() => {GD}._fullData[4].i && {GD}._fullData[4].i.length === 2")
    assert page.evaluate(FACE_ON_SCREEN)[3] == pytest.approx(center, abs=1e-3)
    assert query(page)["ctr"] == q["ctr"] and query(page)["cam"] == q["cam"]
    assert page.errors == []


@pytest.fixture(scope="module")
def crystal_table(request, tmp_path_factory):
    from analysis.atlas import open_atlas

    return open_atlas(app_atlas_root(request, tmp_path_factory) / "syn", verify="size").table(
        "layers/0/crystals.parquet")


@pytest.fixture(scope="module")
def root_faces(request, tmp_path_factory):
    """A planted crystal of layer 0: (its first feature, its row in crystals.parquet)."""
    from analysis.atlas import open_atlas

    t = open_atlas(app_atlas_root(request, tmp_path_factory) / "syn", verify="size").table(
        "layers/0/crystals.parquet")
    return int(t["a"].iloc[0]), int(t[t["a"] == t["a"].iloc[0]].index[0])


def test_panels_open_from_a_link_best_faces_and_figure_downloads(server, page):
    open_view(page, f"{server}/?atlas=syn&layer=0&layout=pca&color=lobe:phi:4&panel=crystals")
    # the link opened the crystals panel: best faces listed, word-pair plots drawn
    page.wait_for_selector("#best-faces a.facelink", timeout=15_000)
    assert page.is_hidden("#panel-spectra") and page.is_visible("#panel-crystals")
    assert "random directions" in page.text_content("#crystal-counts")
    page.wait_for_function("() => { const g = document.querySelector('#silhouette-fig .js-plotly-plot');"
                           " return g && g._fullData && g._fullData[0].y.length === 2 }")
    # a best face: drawn in the cloud and its first feature selected, the panel stays open
    href = page.get_attribute("#best-faces li:first-child a.facelink", "href")
    want = {k: v[0] for k, v in parse_qs(urlparse(href).query).items()}
    page.click("#best-faces li:first-child a.facelink")
    page.wait_for_function(f"() => new URLSearchParams(location.search).get('face') === '{want['face']}'")
    page.wait_for_function(f"() => {GD}._fullData[4].i && {GD}._fullData[4].i.length === 2")
    assert card_feature(page) == int(want["f"]) and query(page)["panel"] == "crystals"

    # the spectra tab: out of the URL (the default), alpha per layer with its interval
    page.click("#panel-tabs >> text=Spectra")
    page.wait_for_function("() => !new URLSearchParams(location.search).has('panel')")
    assert page.is_visible("#panel-spectra") and page.is_hidden("#panel-crystals")
    alpha = page.evaluate("() => { const t = document.querySelector('#alpha-fig .js-plotly-plot')._fullData[0];"
                          " return [Array.from(t.x), t.error_y.array.length] }")
    assert alpha == [[0, 1, 2], 3]
    # SVG of a figure, made in the browser by plotly.js
    with page.expect_download(timeout=15_000) as dl:
        page.click("#alpha-exports-row button:has-text('SVG')")
    assert dl.value.suggested_filename == "syn-layer0-alpha.svg"
    assert Path(dl.value.path()).read_text()[:200].lstrip().startswith("<svg")

    # the lobes tab: subset heat map, one row per lobe
    page.click("#panel-tabs >> text=Lobes")
    page.wait_for_function("() => new URLSearchParams(location.search).get('panel') === 'lobes'")
    page.wait_for_function("() => { const g = document.querySelector('#lobe-subsets-fig .js-plotly-plot');"
                           " return g && g._fullData && g._fullData[0].type === 'heatmap' }")
    assert page.locator("#lobes-table .lobe-export a").count() == 8
    assert page.errors == []


def test_security_headers_and_a_policy_the_page_works_under(server, page):
    r = httpx.get(server + "/")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self' 'sha256-" in csp and "frame-ancestors 'none'" in csp and "unsafe-eval" not in csp
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
    api = httpx.get(server + "/api/atlases")
    assert api.headers["x-content-type-options"] == "nosniff" and "content-security-policy" in api.headers
    assert "content-security-policy" not in httpx.get(server + "/docs").headers   # Swagger UI's CDN scripts
    # an inline script slipped into the page (as a link or an atlas string could try) does not run
    open_view(page, server + "/?layer=1")
    page.evaluate("() => { const s = document.createElement('script'); s.textContent = 'window.__ran = 1';"
                  " document.body.appendChild(s); }")
    assert page.evaluate("() => window.__ran") is None
    page.wait_for_timeout(300)
    assert len(page.csp) == 1 and "script-src" in page.csp[0]      # refused, and said so
    page.csp.clear()
