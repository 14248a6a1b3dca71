"""The Universality view (METHODS 5) as users meet it: comparisons listed apart from atlases,
the JSON API over real HTTP, the permalink's resolution, and the page in headless Chromium.

The folder served (tests/_app_atlas.py ``comparison_root``): atlases ``syn`` and ``syn2``, the
comparison ``syn-vs-syn2`` of their layers 1, 2 x 0, 1 written in ``saegeo compare``'s format
from a planted pairing, ``orphan`` (its B atlas is not served) and ``broken`` (a truncated file).
"""
from __future__ import annotations

import math
from urllib.parse import parse_qs, urlparse

import httpx
import numpy as np
import pandas as pd
import pytest

from _app_atlas import comparison_root, start_server
from test_browser import _need_browser, browser, page  # noqa: F401 - the shared fixtures (CSP checked)

CMP = "syn-vs-syn2"


@pytest.fixture(scope="module")
def root(request, tmp_path_factory):
    return comparison_root(request, tmp_path_factory)


@pytest.fixture(scope="module")
def server(root):
    proc, base = start_server(root)
    yield base
    proc.terminate()
    proc.wait(timeout=10)


def same(a, b) -> bool:
    return (a is None and math.isnan(b)) or (a is not None and a == pytest.approx(b))


# --------------------------------------------------------------------------- the store and the API


def test_comparisons_are_listed_apart_from_atlases(server):
    atlases = [a["name"] for a in httpx.get(server + "/api/atlases", timeout=30).json()]
    assert atlases == ["syn", "syn2"]
    cmps = {c["name"]: c for c in httpx.get(server + "/api/comparisons", timeout=30).json()}
    assert sorted(cmps) == ["broken", "orphan", CMP]
    assert "truncated" in cmps["broken"]["error"] and cmps["broken"]["a"] is None
    ok = cmps[CMP]
    assert (ok["a"]["atlas"], ok["b"]["atlas"], ok["a"]["layers"], ok["b"]["layers"]) == ("syn", "syn2", [1, 2], [0, 1])
    assert ok["a"]["widths"] == {"1": 600, "2": 600} and ok["error"] is None
    orphan = cmps["orphan"]
    assert orphan["a"]["atlas"] == "syn" and orphan["b"]["atlas"] is None
    assert "'gone-src' (other-model) is not served here" in orphan["b"]["note"]


def test_a_comparison_answers_with_its_files(server, root):
    d = httpx.get(f"{server}/api/comparisons/{CMP}", timeout=30).json()
    for name in ("svcca", "svcca_p", "rsa", "rsa_p"):
        ref = np.load(root / CMP / f"{name}.npy")
        assert all(same(d[name][i][j], ref[i, j]) for i in range(2) for j in range(2)), name
    assert d["n_pairs"] == np.load(root / CMP / "n_pairs.npy").tolist()
    lp = {(x["layer_a"], x["layer_b"]): x for x in d["layer_pairs"]}
    assert sorted(lp) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert lp[(2, 1)]["svcca"] == pytest.approx(d["svcca"][1][1]) and lp[(2, 1)]["svcca_null_mean"] is not None
    assert lp[(1, 0)]["counts"]["n_corr_ok"] > 0 and d["alignment"]["same_tokenizer"] is True


def test_pairs_are_paged_sorted_filtered_and_linked(server, root):
    url = f"{server}/api/comparisons/{CMP}/pairs/2/1"
    tab = pd.read_parquet(root / CMP / "pairs" / "2_1.parquet")
    kept = tab[tab["kept"]].sort_values(["corr", "feature_b"], ascending=[False, True])
    p = httpx.get(url, params={"limit": 10}, timeout=30).json()
    assert (p["total"], p["atlas_a"], p["atlas_b"], len(p["pairs"])) == (len(kept), "syn", "syn2", 10)
    assert [x["b"]["feature"] for x in p["pairs"]] == kept["feature_b"].head(10).tolist()
    first = p["pairs"][0]
    assert first["a"]["feature"] == int(kept["feature_a"].iloc[0]) and first["corr"] == pytest.approx(kept["corr"].iloc[0], abs=1e-4)
    assert first["a"]["link"] == f"?atlas=syn&layer=2&f={first['a']['feature']}"
    assert first["b"]["link"] == f"?atlas=syn2&layer=1&f={first['b']['feature']}"
    # top tokens and the context come from each atlas's own files
    from analysis.atlas import open_atlas

    syn = open_atlas(root / "syn", verify="size")
    tt = syn.table("layers/2/top_tokens.parquet")
    own = tt[tt["feature"] == first["a"]["feature"]].sort_values("rank")["token"].head(5).tolist()
    assert [t["token"] for t in first["a"]["top_tokens"]] == own and first["a"]["context"]["tokens"]
    # the next page, the other order, a minimum correlation, all rows, a token filter
    p2 = httpx.get(url, params={"limit": 10, "offset": 10}, timeout=30).json()
    assert [x["b"]["feature"] for x in p2["pairs"]] == kept["feature_b"].iloc[10:20].tolist()
    low = httpx.get(url, params={"sort": "corr", "limit": 3}, timeout=30).json()["pairs"]
    assert [x["corr"] for x in low] == sorted(x["corr"] for x in low) and low[0]["corr"] <= first["corr"]
    assert httpx.get(url, params={"min_corr": 0.9}, timeout=30).json()["total"] == int((kept["corr"] >= 0.9).sum())
    assert httpx.get(url, params={"kept": False}, timeout=30).json()["total"] == len(tab)
    fb = int(kept["feature_b"].iloc[3])
    hit = httpx.get(url, params={"q": f"#{fb}", "kept": False}, timeout=30).json()["pairs"]
    assert fb in [x["b"]["feature"] for x in hit]


def test_subspaces_list_computed_and_skipped_groups(server):
    s = httpx.get(f"{server}/api/comparisons/{CMP}/subspaces", timeout=30).json()
    assert len(s["rows"]) == 8 and s["keyword_groups"]["time"] == ["day", "hour"]
    one = httpx.get(f"{server}/api/comparisons/{CMP}/subspaces", params={"layer_a": 1, "layer_b": 0},
                    timeout=30).json()["rows"]
    time_, months = one
    assert time_["group"] == "time" and time_["svcca"] is not None and time_["skipped"] == ""
    assert months["svcca"] is None and "needs > 2 per side" in months["skipped"]


@pytest.mark.parametrize("path, status, detail", [
    ("/api/comparisons/nope", 404, "no comparison named 'nope' (available: broken, orphan, syn-vs-syn2)"),
    (f"/api/comparisons/{CMP}/pairs/3/0", 404, "has no layer pair 3-0 (layers of A: 1, 2; of B: 0, 1)"),
    (f"/api/comparisons/{CMP}/subspaces?layer_a=1&layer_b=7", 404, "has no layer pair 1-7"),
    (f"/api/comparisons/{CMP}/subspaces?layer_a=1", 422, "give both layer_a and layer_b"),
    ("/api/comparisons/broken", 503, "truncated"),
    (f"/api/atlases/{CMP}", 404, "no atlas named 'syn-vs-syn2'"),
])
def test_comparison_routes_refuse_what_is_not_there(server, path, status, detail):
    r = httpx.get(server + path, timeout=30)
    assert r.status_code == status and detail in r.json()["detail"], r.text


def test_malformed_pair_parameters_are_422(server):
    for params in ({"sort": "random"}, {"limit": 0}, {"limit": 501}, {"min_corr": 2}, {"offset": -1}):
        r = httpx.get(f"{server}/api/comparisons/{CMP}/pairs/1/0", params=params, timeout=30)
        assert r.status_code == 422, params


# --------------------------------------------------------------------------- the permalink


def test_universality_links_resolve_to_what_is_served(root):
    from app.data import AtlasStore
    from app.state import parse_query, resolve

    store = AtlasStore(root)

    def open_(q):
        st, problems = parse_query(q)
        st, notes = resolve(st, store)
        return st, problems + notes

    st, notes = open_(f"?view=universality&cmp={CMP}&um=rsa&cell=2:1&pair=5")
    assert (st.view, st.comparison, st.metric, st.cell, st.pair, notes) == ("universality", CMP, "rsa", (2, 1), 5, [])
    # no comparison named: the first one that opens (the broken one is passed over silently)
    st, notes = open_("?view=universality")
    assert st.comparison == "orphan" and notes == []
    st, notes = open_("?view=universality&cmp=nope&cell=2:1")
    assert st.comparison == "orphan" and st.cell is None and "there is no comparison 'nope'" in notes
    st, notes = open_("?view=universality&cmp=broken")
    assert st.comparison == "orphan" and any("cannot be opened" in n and "truncated" in n for n in notes)
    st, notes = open_(f"?view=universality&cmp={CMP}&cell=0:0&pair=3")
    assert st.cell is None and st.pair is None and any("no layer pair 0:0" in n for n in notes)
    st, notes = open_(f"?view=universality&cmp={CMP}&cell=1:0&pair=300")
    assert st.cell == (1, 0) and st.pair is None and any("pair 300" in n for n in notes)
    st, notes = open_(f"?view=universality&cmp={CMP}&um=cka&cell=x")
    assert (st.metric, st.cell) == ("svcca", None) and len(notes) == 2


# --------------------------------------------------------------------------- the page in Chromium

HM = "document.querySelector('#uni-heatmap .js-plotly-plot')"


def query(page) -> dict:
    return {k: v[0] for k, v in parse_qs(urlparse(page.url).query).items()}


def heatmap_z(page):
    return page.evaluate(f"() => {{ const g = {HM}; return g && g._fullData && g._fullData[0] ? "
                         "g._fullData[0].z : null; }")


def open_heatmap(page, url: str):
    page.goto(url)
    page.wait_for_function(f"() => {{ const g = {HM}; return g && g._fullData && g._fullData[0] && "
                           f"g._fullData[0].z && g._ev && g._ev.listeners('plotly_click').length > 0; }}",
                           timeout=45_000)


@pytest.mark.browser
def test_a_cell_click_lists_pairs_and_a_pair_opens_its_card(server, root, page):
    open_heatmap(page, f"{server}/?view=universality&cmp={CMP}")
    ref = np.load(root / CMP / "svcca.npy")
    np.testing.assert_allclose(np.asarray(heatmap_z(page), float), ref, rtol=1e-9)
    assert page.locator("#uni-main").is_visible() and not page.locator("#cloud-main").is_visible()
    assert page.locator("#pairs-list").count() == 0
    # a real mouse click on the cell of A layer 2 x B layer 1 (row 1, column 1)
    xy = page.evaluate(f"""() => {{ const L = {HM}._fullLayout, r = {HM}.getBoundingClientRect();
        return [r.left + L.xaxis._offset + L.xaxis.l2p(1), r.top + L.yaxis._offset + L.yaxis.l2p(1)]; }}""")
    page.mouse.click(*xy)
    page.wait_for_selector("#pairs-list", timeout=30_000)
    assert query(page)["cell"] == "2:1"
    assert page.locator("#uni-cell-title").inner_text() == "A layer 2 × B layer 1"
    tab = pd.read_parquet(root / CMP / "pairs" / "2_1.parquet")
    kept = tab[tab["kept"]].sort_values(["corr", "feature_b"], ascending=[False, True])
    assert f"pairs 1-25 of {len(kept):,}" == page.locator("#pairs-count").inner_text()
    rows = page.locator("#pairs-list tr")
    assert rows.count() == 26
    fa, fb = int(kept["feature_a"].iloc[0]), int(kept["feature_b"].iloc[0])
    assert rows.nth(1).locator("td").nth(0).inner_text().startswith(f"{kept['corr'].iloc[0]:.3f}")
    assert f"A #{fa}" in rows.nth(1).inner_text() and f"B #{fb}" in rows.nth(1).inner_text()
    # filter by correlation: the count follows
    page.fill("#pairs-min", "0.9")
    page.press("#pairs-min", "Enter")
    n = int((kept["corr"] >= 0.9).sum())
    page.wait_for_function(f"() => document.querySelector('#pairs-count').innerText.endsWith('of {n:,}')",
                           timeout=30_000)
    # the next page, then a pair selected: the page stays and the card column shows the pair whole
    page.fill("#pairs-min", "")
    page.press("#pairs-min", "Enter")
    page.wait_for_function(f"() => document.querySelector('#pairs-count').innerText === 'pairs 1-25 of {len(kept):,}'",
                           timeout=30_000)
    page.click("#pairs-next")
    page.wait_for_function("() => document.querySelector('#pairs-count').innerText.startsWith('pairs 26-')",
                           timeout=30_000)
    fb27 = int(kept["feature_b"].iloc[26])
    page.click(f"#pairs-list tr:nth-child(3) >> text=select")
    page.wait_for_selector("#uni-pair", timeout=30_000)
    assert query(page)["pair"] == str(fb27) and page.locator("#pairs-count").inner_text().startswith("pairs 26-")
    link = page.url
    # a pair's A feature opens its card in the feature cloud of syn, layer 2
    fa27 = int(kept["feature_a"].iloc[26])
    page.click(f"#uni-pair >> text=A #{fa27}")
    page.wait_for_selector("#card-title", timeout=45_000)
    q = query(page)
    assert (q["atlas"], q["layer"], q["f"], q.get("view")) == ("syn", "2", str(fa27), None)
    assert page.locator("#card-title").inner_text() == f"Feature {fa27}" and page.locator("#cloud-main").is_visible()
    # the B feature's link opens its card in syn2, layer 1
    page.goto(link)
    page.wait_for_selector("#uni-pair", timeout=30_000)
    page.click(f"#uni-pair >> text=B #{fb27}")
    page.wait_for_function(f"() => (document.querySelector('#card-title') || {{}}).innerText === 'Feature {fb27}'",
                           timeout=45_000)
    assert (query(page)["atlas"], query(page)["layer"]) == ("syn2", "1")
    assert page.errors == []


@pytest.mark.browser
def test_the_url_restores_the_view_and_malformed_keys_get_a_notice(server, root, page):
    tab = pd.read_parquet(root / CMP / "pairs" / "1_0.parquet")
    fb = int(tab[tab["kept"]]["feature_b"].iloc[0])
    fa = int(tab["feature_a"].iloc[fb])
    open_heatmap(page, f"{server}/?view=universality&cmp={CMP}&um=rsa&cell=1:0&pair={fb}")
    np.testing.assert_allclose(np.asarray(heatmap_z(page), float), np.load(root / CMP / "rsa.npy"), rtol=1e-9)
    page.wait_for_selector("#uni-pair", timeout=30_000)
    assert page.locator("#metric-radio input[value=rsa]").is_checked()
    assert f"A #{fa}" in page.locator("#uni-pair").inner_text() and f"B #{fb}" in page.locator("#uni-pair").inner_text()
    assert page.locator("#pairs-list tr.prow-on").count() in (0, 1)
    assert page.locator("#subspace-table tr").count() == 3 and "skipped" in page.locator("#subspace-table").inner_text()
    # the hover names the p-value and the null's mean
    hover = page.evaluate(f"() => {HM}._fullData[0].hovertemplate")
    assert "p = " in hover and "null mean" in hover
    # switching the metric is a link change
    page.click("#metric-radio >> text=SVCCA")
    page.wait_for_function("() => window.location.search.includes('um=svcca')", timeout=30_000)
    page.wait_for_function(f"() => Math.abs({HM}._fullData[0].z[0][0] - {float(np.load(root / CMP / 'svcca.npy')[0, 0])})"
                           " < 1e-9", timeout=30_000)
    # malformed values are dropped with a notice; the rest of the link still shows
    open_heatmap(page, f"{server}/?view=universality&cmp={CMP}&um=cka&cell=9:9")
    notice = page.locator("#notice-box").inner_text()
    assert "ignored um='cka'" in notice and "no layer pair 9:9" in notice
    assert query(page).get("cell") is None and query(page)["um"] == "svcca"
    # the orphan comparison says its B atlas is not served, and its pairs have no B card link
    open_heatmap(page, f"{server}/?view=universality&cmp=orphan&cell=0:0")
    page.wait_for_selector("#pairs-list", timeout=30_000)
    assert "is not served here" in page.locator("#uni-side-b").inner_text()
    assert page.locator("#pairs-list a", has_text="B #").count() == 0
    assert page.locator("#pairs-list a", has_text="A #").count() > 0
    assert page.errors == []
