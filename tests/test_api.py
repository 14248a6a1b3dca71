"""The JSON API, in process (TestClient) and over HTTP against a real uvicorn server."""
from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from _app_atlas import app_atlas_root, start_server
from analysis.atlas import open_atlas
from app.server import create_app

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def root(request, tmp_path_factory) -> Path:
    return app_atlas_root(request, tmp_path_factory)


@pytest.fixture(scope="module")
def client(root) -> TestClient:
    return TestClient(create_app(root))


@pytest.fixture(scope="module")
def two_atlases(root, tmp_path_factory) -> Path:
    """``good`` and ``broken`` (a truncated array) side by side."""
    d = tmp_path_factory.mktemp("two")
    shutil.copytree(root / "syn", d / "good")
    shutil.copytree(root / "syn", d / "broken")
    f = d / "broken" / "layers" / "0" / "fire_count.npy"
    f.write_bytes(f.read_bytes()[:-16])
    return d


@pytest.fixture(scope="module")
def http(root):
    proc, base = start_server(root)
    with httpx.Client(base_url=base, timeout=30) as c:
        yield c
    proc.terminate()
    proc.wait(timeout=10)


# --------------------------------------------------------------------------- shapes


def check_contract(c):
    """The same checks in process and over HTTP."""
    r = c.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok", "atlases": 1}

    r = c.get("/api/atlases")
    assert r.status_code == 200
    (a,) = r.json()
    assert a["name"] == "syn" and a["synthetic"] is True and a["error"] is None
    assert [(x["layer"], x["n_features"]) for x in a["layers"]] == [(0, 600), (1, 600), (2, 600)]

    r = c.get("/api/atlases/syn")
    d = r.json()
    assert r.status_code == 200 and d["synthetic"] and d["model"]["d_model"] == 48
    assert d["layers"][1]["layouts"] == ["pca", "umap"] and d["layers"][1]["lobes"]["phi"] == [2, 4]
    assert "decoder.npy" in d["layers"][1]["files"]

    r = c.get("/api/atlases/syn/layers/1/points", params={"layout": "umap", "k": 4})
    p = r.json()
    assert r.status_code == 200 and p["n"] == 600 and len(p["x"]) == len(p["z"]) == len(p["frequency"]) == 600
    assert p["lobes"]["k"] == 4 and len(p["lobes"]["labels"]) == 600 and set(p["lobes"]["labels"]) <= {-1, 0, 1, 2, 3}
    assert sorted(p["lobes"]["names"]) == ["0", "1", "2", "3"]

    r = c.get("/api/atlases/syn/layers/1/features/42")
    card = r.json()
    assert r.status_code == 200 and card["feature"] == 42 and len(card["neighbors"]) == 10
    cos = [n["cos"] for n in card["neighbors"]]
    assert cos == sorted(cos, reverse=True) and 42 not in [n["feature"] for n in card["neighbors"]]
    assert len(card["contexts"]) == 3 and card["contexts"][0]["tokens"][card["contexts"][0]["peak"]]
    assert card["top_tokens"][0]["count"] >= card["top_tokens"][-1]["count"]
    assert card["neuronpedia"] is None and card["act_hist"] is not None
    return card


def test_contract_in_process(client):
    check_contract(client)


def test_contract_over_http(http):
    check_contract(http)
    assert http.get("/api/atlases/nope").status_code == 404
    assert http.get("/api/atlases/syn/layers/1/points", params={"layout": "tsne"}).status_code == 422
    assert "text/html" in http.get("/").headers["content-type"]
    assert http.get("/openapi.json").json()["paths"]["/api/atlases/{atlas}/layers/{layer}/features/{feature}"]


def test_numbers_match_the_atlas(client, root):
    atlas = open_atlas(root / "syn", verify="size")
    W = np.asarray(atlas.array("layers/2/decoder.npy"), dtype=np.float64)
    U = W / np.linalg.norm(W, axis=1, keepdims=True)
    cos = U @ U[7]
    cos[7] = -2
    card = client.get("/api/atlases/syn/layers/2/features/7").json()
    assert [n["feature"] for n in card["neighbors"]] == list(np.argsort(-cos)[:10])
    assert card["neighbors"][0]["cos"] == pytest.approx(cos.max(), abs=1e-4)
    fc = np.asarray(atlas.array("layers/2/fire_count.npy"))
    assert card["fire_count"] == fc[7] and card["frequency"] == pytest.approx(fc[7] / atlas.manifest.layer(2).n_tokens)
    xyz = np.asarray(atlas.array("layers/2/coords_pca.npy"))
    p = client.get("/api/atlases/syn/layers/2/points").json()
    np.testing.assert_allclose(np.c_[p["x"], p["y"], p["z"]], xyz, rtol=1e-6)
    # planted lobes come back as the k=4 phi labels
    planted = np.asarray(atlas.array("layers/2/planted_lobes.npy"))
    labels = np.asarray(client.get("/api/atlases/syn/layers/2/points", params={"k": 4}).json()["lobes"]["labels"])
    live = labels >= 0
    assert (labels[live] == planted[live]).all()


def test_crystal_partners_and_faces(client, root):
    faces = open_atlas(root / "syn", verify="size").table("layers/0/planted_crystals.parquet")
    a = int(faces["a"].iloc[0])
    card = client.get(f"/api/atlases/syn/layers/0/features/{a}").json()
    assert any(x["a"] == a and x["b"] == faces["b"].iloc[0] for x in card["crystals"])
    rows = client.get("/api/atlases/syn/layers/0/crystals", params={"min_cos": 0.99}).json()
    assert len(rows) >= 6 and all(r["edge_cos"] >= 0.99 for r in rows)
    assert {r["kind"] for r in rows} >= {"parallelogram"}


def test_lobes_search_spectra(client):
    lobes = client.get("/api/atlases/syn/layers/0/lobes", params={"k": 4}).json()
    assert [x["lobe"] for x in lobes["lobes"]] == [0, 1, 2, 3] and sum(x["size"] for x in lobes["lobes"]) >= 590
    hits = client.get("/api/atlases/syn/layers/0/search", params={"q": "#17"}).json()["hits"]
    assert hits[0] == {"feature": 17, "why": "feature id"}
    hits = client.get("/api/atlases/syn/layers/0/search", params={"q": "lemma"}).json()["hits"]
    assert hits and all(h["why"] in ("top token 'lemma'", "context text") for h in hits)
    card = client.get(f"/api/atlases/syn/layers/0/features/{hits[0]['feature']}").json()
    assert "lemma" in [t["token"] for t in card["top_tokens"]]
    spectra = client.get("/api/atlases/syn/spectra").json()["layers"]
    assert [s["layer"] for s in spectra] == [0, 1, 2] and len(spectra[0]["eigenvalues"]) == 48
    # the planted exponent rises to the middle layer
    assert spectra[1]["fit"]["power_law"]["alpha"] > spectra[0]["fit"]["power_law"]["alpha"] + 0.1


def test_export_csv_and_parquet(client):
    r = client.get("/api/atlases/syn/layers/1/export", params={"features": "3,1,10-12"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    df = pd.read_csv(io.StringIO(r.text))
    assert list(df["feature"]) == [1, 3, 10, 11, 12] and {"x", "frequency", "lobe_phi_4"} <= set(df.columns)
    r = client.get("/api/atlases/syn/layers/1/export", params={"format": "parquet"})
    assert len(pd.read_parquet(io.BytesIO(r.content))) == 600
    for bad in ("1,x", "5-2", "600"):
        r = client.get("/api/atlases/syn/layers/1/export", params={"features": bad})
        assert r.status_code == 422 and "features" in r.json()["detail"]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("url, needle", [
    ("/api/atlases/nope", "no atlas named 'nope'"),
    ("/api/atlases/...", "not a valid atlas name"),
    ("/api/atlases/syn/layers/9/points", "has no layer 9"),
    ("/api/atlases/syn/layers/0/features/600", "no feature 600"),
    ("/api/atlases/syn/layers/0/features/-1", "no feature -1"),
    ("/api/atlases/syn/layers/0/lobes?k=3", "k=3"),
    ("/api/nothing/here", "no API route"),
])
def test_unknown_things_are_404_with_a_readable_detail(client, url, needle):
    r = client.get(url)
    assert r.status_code == 404 and needle in r.json()["detail"]


@pytest.mark.parametrize("url", [
    "/api/atlases/syn/layers/x/points", "/api/atlases/syn/layers/0/points?layout=tsne",
    "/api/atlases/syn/layers/0/points?k=0", "/api/atlases/syn/layers/0/features/1.5",
    "/api/atlases/syn/layers/0/points?affinity=cosine", "/api/atlases/syn/layers/0/search?q=",
])
def test_bad_parameters_are_422(client, url):
    r = client.get(url)
    assert r.status_code == 422 and r.json()["detail"]


def test_nothing_outside_the_atlas_folder_is_served(root, client):
    for url in ("/api/atlases/%2e%2e", "/api/atlases/..%2f..%2fetc", "/assets/..%2f..%2fpyproject.toml",
                "/assets/%2e%2e/%2e%2e/pyproject.toml", "/_dash-component-suites/..%2f..%2fpyproject.toml"):
        r = client.get(url)
        assert "[project]" not in r.text and r.status_code in (200, 400, 404), url  # 200 = the page itself
    # an atlas path that is not one of the listed atlas folders is unknown
    (root / ".hidden").mkdir(exist_ok=True)
    assert client.get("/api/atlases/.hidden").status_code == 404


def test_a_corrupted_atlas_gives_its_validation_message(two_atlases):
    c = TestClient(create_app(two_atlases))
    listing = {a["name"]: a for a in c.get("/api/atlases").json()}
    assert listing["good"]["error"] is None and listing["good"]["layers"]
    assert "fire_count.npy" in listing["broken"]["error"] and "truncated" in listing["broken"]["error"]
    r = c.get("/api/atlases/broken/layers/0/features/1")
    assert r.status_code == 503 and "fire_count.npy" in r.json()["detail"] and "Traceback" not in r.text
    assert c.get("/api/atlases/good/layers/0/features/1").status_code == 200


def test_the_server_never_imports_torch(root):
    code = (
        "import sys\n"
        "from fastapi.testclient import TestClient\n"
        "from app.server import create_app\n"
        f"c = TestClient(create_app({str(root)!r}))\n"
        "assert c.get('/api/atlases/syn/layers/0/features/3').status_code == 200\n"
        "assert c.get('/api/atlases/syn/layers/0/points').status_code == 200\n"
        "assert c.get('/').status_code == 200\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_the_geometry_stage_output_is_served(tmp_path):
    """The real geometry stage's files (tiny settings, no UMAP) through the API and every view."""
    from analysis.synthetic import make_synthetic_atlas
    from app.data import AtlasStore
    from app.state import ViewState, resolve
    from app.views import card, cloud, panels

    make_synthetic_atlas(tmp_path / "staged", n_features=200, d_model=32, layers=(0, 1), n_blocks=300, seed=0,
                         geometry_config={"affinities": ["phi"], "ks": [2, 4], "n_permutations": 5, "n_random": 5,
                                          "entropy_bootstrap": 3, "umap": False, "entropy_samples": 200,
                                          "entropy_components": 10})
    c = TestClient(create_app(tmp_path))
    d = c.get("/api/atlases/staged").json()["layers"][0]
    assert d["layouts"] == ["pca"] and d["lobes"] == {"phi": [2, 4], "geometry": [2, 4]}
    assert c.get("/api/atlases/staged/layers/0/points", params={"layout": "umap"}).status_code == 404
    lobes = c.get("/api/atlases/staged/layers/0/lobes", params={"k": 4}).json()
    assert lobes["stats"]["ami"]["ami"] > 0.3 and all(x["name"] and x["subsets"] for x in lobes["lobes"])
    assert c.get("/api/atlases/staged/layers/1/features/5").status_code == 200
    spectra = c.get("/api/atlases/staged/spectra").json()["layers"]
    assert [s["layer"] for s in spectra] == [0, 1] and spectra[0]["fit"]["power_law"]["alpha"] > 0

    store = AtlasStore(tmp_path)
    st, notes = resolve(ViewState(atlas="staged", layer=0, layout="umap", f=5, q=0.5), store)
    assert st.layout == "pca" and str(st.coloring) == "lobe:phi:4" and len(notes) == 1
    fig, legend = cloud.figure(store, st)
    assert len(fig.data) == 7 and len(legend) >= 4
    assert card.render(store, st)[0].children == "Feature 5"
    assert "AMI vs geometry" in panels.lobes_panel(store, st)[0].children
    assert panels.spectra_figure(store, st) is not None


# --------------------------------------------------------------------------- figures and lobe exports


def figure_of(page: str) -> dict:
    """The figure inside a standalone HTML page: the JSON arguments of ``Plotly.newPlot("figure", ...)``."""
    import json
    from html.parser import HTMLParser

    class Scripts(HTMLParser):
        def __init__(self):
            super().__init__()
            self.scripts, self.srcs, self._in = [], [], False

        def handle_starttag(self, tag, attrs):
            if tag == "script":
                self._in = True
                self.scripts.append("")
                self.srcs += [v for k, v in attrs if k == "src"]

        def handle_endtag(self, tag):
            self._in = tag != "script" and self._in

        def handle_data(self, data):
            if self._in:
                self.scripts[-1] += data

    p = Scripts()
    p.feed(page)
    assert p.srcs == [], "a standalone page loads no script from elsewhere"
    (js,) = [s for s in p.scripts if 'Plotly.newPlot(' in s and '"figure"' in s]
    dec = json.JSONDecoder()
    pos = js.index('"figure"', js.index("Plotly.newPlot(")) + len('"figure"')
    pos = js.index("[", pos)
    data, end = dec.raw_decode(js, pos)
    layout, _ = dec.raw_decode(js, js.index("{", end))
    return {"data": data, "layout": layout, "plotly_js": any("plotly.js v" in s or "Plotly" in s[:5000]
                                                            for s in p.scripts if len(s) > 1_000_000)}


def values(v) -> np.ndarray:
    """A plotly array: a list, or a typed-array spec ``{dtype, bdata[, shape]}``."""
    import base64

    if isinstance(v, dict) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]).newbyteorder("<"))
        return a.reshape([int(x) for x in str(v["shape"]).split(",")]) if "shape" in v else a
    return np.asarray(v, dtype=float)


def test_figures_as_standalone_html_hold_the_atlas_numbers(client, root):
    atlas = open_atlas(root / "syn", verify="size")
    base = "/api/atlases/syn/layers/1/figures"
    galaxies = [atlas.json(f"layers/{L}/galaxy.json") for L in (0, 1, 2)]
    fig = figure_of(client.get(f"{base}/alpha.html").text)
    assert fig["plotly_js"]  # plotly.js inlined: the page opens offline
    alpha = fig["data"][0]
    np.testing.assert_allclose(values(alpha["y"]), [g["power_law"]["alpha"] for g in galaxies])
    np.testing.assert_allclose(values(alpha["error_y"]["array"]), [g["power_law"]["ci95"] for g in galaxies])
    np.testing.assert_allclose(values(fig["data"][1]["y"]), [g["isotropic"]["alpha"] for g in galaxies])
    neg = figure_of(client.get(f"{base}/negentropy.html").text)["data"][0]
    np.testing.assert_allclose(values(neg["y"]), [g["entropy"]["negentropy"] for g in galaxies])

    # spectra: one curve per layer (meta = layer) holding its eigenvalues, and the isotropic line
    spec = figure_of(client.get(f"{base}/spectra.html").text)["data"]
    curves = {t["meta"]: values(t["y"]) for t in spec if t.get("mode") == "lines" and "dash" not in t.get("line", {})}
    np.testing.assert_allclose(curves[2], np.asarray(atlas.array("layers/2/spectrum.npy")), rtol=1e-6)
    assert any(t.get("name") == "isotropic (layer 1)" for t in spec)

    # the cloud of the permalink's view: coordinates of the layout, the chosen face drawn
    cloud = figure_of(client.get(f"{base}/cloud.html", params={"layout": "umap", "face": 2, "f": 3}).text)["data"]
    np.testing.assert_allclose(np.c_[values(cloud[0]["x"]), values(cloud[0]["y"]), values(cloud[0]["z"])],
                               np.asarray(atlas.array("layers/1/coords_umap.npy")), rtol=1e-6)
    assert len(values(cloud[4]["i"])) == 2 and len(values(cloud[2]["x"])) == 11

    # lobe heat map: planted lobe i wins blocks of subset i only (lobe_subsets.parquet)
    heat = figure_of(client.get(f"{base}/lobe-subsets.html", params={"color": "lobe:phi:4"}).text)["data"][0]
    z = values(heat["z"]).reshape(4, -1)
    np.testing.assert_allclose(z.sum(1), 1)
    np.testing.assert_allclose(np.diag(z), 1)

    atom = atlas.json("layers/1/atom.json")
    sil = figure_of(client.get(f"{base}/silhouette.html").text)["data"]
    np.testing.assert_allclose(values(sil[0]["y"]), atom["lda"]["silhouette"])
    assert values(sil[1]["y"])[0] == pytest.approx(atom["lda"]["raw_silhouette"])
    dis = figure_of(client.get(f"{base}/distractor.html").text)["data"]
    assert len(dis) == 4 and sum(len(values(t["x"])) for t in dis) == atom["n_pairs"] == 48
    hist = client.get(f"{base}/activations.json", params={"f": 7}).json()["data"][0]
    assert values(hist["y"]).tolist() == np.asarray(atlas.array("layers/1/act_hist.npy")[7]).tolist()


@pytest.mark.parametrize("url, status, needle", [
    ("/api/atlases/syn/layers/1/figures/nope.html", 404, "no figure 'nope'"),
    ("/api/atlases/syn/layers/1/figures/spectra.png", 404, "PNG and SVG"),
    ("/api/atlases/syn/layers/9/figures/spectra.html", 404, "has no layer 9"),
    ("/api/atlases/nope/layers/1/figures/spectra.html", 404, "no atlas named"),
    ("/api/atlases/syn/layers/1/figures/activations.html", 404, "select a feature"),
    ("/api/atlases/syn/layers/1/figures/cloud.html?f=600", 404, "no feature 600"),
    ("/api/atlases/syn/layers/1/figures/cloud.html?color=lobe:phi:5", 404, "k=5"),
    ("/api/atlases/syn/layers/1/figures/cloud.html?face=99", 404, "no crystal face 99"),
    ("/api/atlases/syn/layers/1/figures/cloud.html?color=rainbow", 422, "color"),
    ("/api/atlases/syn/layers/1/figures/lobe-subsets.html?color=freq", 404, "lacks the data"),
])
def test_figure_errors(client, url, status, needle):
    r = client.get(url)
    assert r.status_code == status and needle in str(r.json()["detail"])


def test_figure_route_is_documented(client):
    op = client.get("/openapi.json").json()["paths"]["/api/atlases/{atlas}/layers/{layer}/figures/{name}.{fmt}"]["get"]
    assert "lobe-subsets" in op["description"] and {p["name"] for p in op["parameters"]} >= {"color", "f", "face"}


def test_lobe_export_opens_in_pandas(client, root):
    labels = np.asarray(open_atlas(root / "syn", verify="size").array("layers/1/lobes_phi.npy"))[1]
    r = client.get("/api/atlases/syn/layers/1/export", params={"lobe": "phi:4:2"})
    assert r.status_code == 200 and "lobe-phi-4-2.csv" in r.headers["content-disposition"]
    df = pd.read_csv(io.StringIO(r.text))
    assert list(df["feature"]) == list(np.flatnonzero(labels == 2)) and (df["lobe_phi_4"] == 2).all()
    r = client.get("/api/atlases/syn/layers/1/export", params={"lobe": "geometry:2:0", "format": "parquet"})
    pq = pd.read_parquet(io.BytesIO(r.content))
    assert len(pq) > 100 and (pq["lobe_geometry_2"] == 0).all()
    for bad, status in (("phi:4:9", 404), ("phi:5:0", 404), ("phi:4", 422), ("<b>:1:1", 422)):
        assert client.get("/api/atlases/syn/layers/1/export", params={"lobe": bad}).status_code == status, bad
    r = client.get("/api/atlases/syn/layers/1/export", params={"lobe": "phi:4:1", "features": "1,2"})
    assert r.status_code == 422 and "not both" in r.json()["detail"]


def test_atom_summary(client, root):
    atlas = open_atlas(root / "syn", verify="size")
    s = client.get("/api/atlases/syn/layers/0/atom", params={"best": 5}).json()
    faces = atlas.table("layers/0/crystals.parquet")
    assert s["n_faces"] == len(faces) == s["n_parallelogram"] + s["n_trapezoid"] and s["n_parallelogram"] == 6
    assert s["baseline"] == atlas.json("layers/0/atom.json")["crystal_baseline"] and s["baseline"]["n_repeats"] == 2
    cos = [b["edge_cos"] for b in s["best"]]
    assert len(cos) == 5 and cos == sorted(cos, reverse=True) and cos[0] == pytest.approx(faces["edge_cos"].max())
    assert s["lda"]["dims"] == [2, 3] and s["distractor"]["pearson_r"] > 0.9  # the planted length distractor


# --------------------------------------------------------------------------- the error handlers, over HTTP


@pytest.mark.parametrize("url, status, needle", [
    ("/api/atlases/nope/layers/0/features/1", 404, "no atlas named 'nope' (available: syn)"),
    ("/api/atlases/nope/spectra", 404, "no atlas named 'nope'"),
    ("/api/atlases/syn/layers/0/features/600", 404,
     "layer 0 of atlas 'syn' has features 0..599; there is no feature 600"),
    ("/api/atlases/syn/layers/7/atom", 404, "atlas 'syn' has no layer 7 (layers: 0, 1, 2)"),
    ("/api/atlases/syn/layers/1/points?layout=umap&k=3", 404, "no phi lobes with k=3 in layer 1 (computed: [2, 4])"),
    ("/api/atlases/syn/layers/1/export?features=2-1", 422, "features: '2-1' is outside 0..599"),
    ("/api/atlases/syn/layers/1/export?lobe=phi", 422, "lobe: 'phi' is not affinity:k:lobe"),
    ("/api/atlases/syn/layers/1/figures/cloud.json?color=lobe:phi:3", 404,
     "color=lobe:phi:3: phi lobes with k=3 are not computed"),
    ("/api/atlases/syn/layers/1/figures/cloud.json?color=rainbow", 422, "color: 'rainbow'; use lobe:<affinity>:<k>"),
])
def test_store_errors_become_status_codes_with_the_message(http, url, status, needle):
    r = http.get(url)
    assert r.status_code == status and r.headers["content-type"] == "application/json"
    assert needle in r.json()["detail"] and isinstance(r.json()["detail"], str)


def test_a_corrupted_atlas_is_503_over_http(two_atlases):
    proc, base = start_server(two_atlases)
    try:
        with httpx.Client(base_url=base, timeout=30) as c:
            for url in ("/api/atlases/broken", "/api/atlases/broken/layers/0/features/1",
                        "/api/atlases/broken/layers/0/figures/spectra.html"):
                r = c.get(url)
                assert r.status_code == 503, url
                assert "fire_count.npy" in r.json()["detail"] and "Traceback" not in r.text
            assert c.get("/api/atlases/good/layers/0/features/1").status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_error_answers_are_documented(client):
    paths = client.get("/openapi.json").json()["paths"]
    op = paths["/api/atlases/{atlas}/layers/{layer}/features/{feature}"]["get"]
    assert {"404", "422", "503"} <= set(op["responses"])
    assert op["responses"]["404"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorDetail")
