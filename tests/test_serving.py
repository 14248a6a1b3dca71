"""Serving under load, without timing anything: the answers' cache, the memory-mapped
co-occurrence matrix, the store's re-check of a replaced atlas, several worker processes."""
from __future__ import annotations

import json
import os
import time

import httpx
import numpy as np
import psutil
import pytest
import scipy.sparse as sp
from fastapi.testclient import TestClient

from _app_atlas import app_atlas_root, start_server
from app.data import AtlasStore, LRUBytes, MappedCSR, csr_rows
from app.server import create_app, default_workers
from app.queries import features


@pytest.fixture(scope="module")
def root(request, tmp_path_factory):
    return app_atlas_root(request, tmp_path_factory)


def test_lru_keeps_the_recent_answers_within_its_byte_bound():
    c = LRUBytes(max_bytes=1000, max_items=100)
    for i in range(10):
        c.put(i, bytes(200))
    assert c.bytes <= 1000 and len(c) == 5
    assert c.get(0) is None and c.get(9) == bytes(200)
    c.get(5)                       # used: survives the next insertions
    c.put(10, bytes(200))
    c.put(11, bytes(200))
    assert c.get(5) is not None and c.get(6) is None
    c.put("huge", bytes(600))      # over a quarter of the bound: not kept, nothing evicted for it
    assert c.get("huge") is None and c.bytes <= 1000
    small = LRUBytes(max_bytes=10**6, max_items=3)
    for i in range(5):
        small.put(i, b"x")
    assert len(small) == 3 and small.get(1) is None


def test_mapped_csr_reads_the_rows_and_diagonal_of_an_uncompressed_npz(tmp_path):
    rng = np.random.default_rng(0)
    m = sp.random(50, 50, density=0.2, random_state=1, format="csr", dtype=np.float64)
    m = (m + sp.diags(rng.integers(1, 9, 50).astype(float))).tocsr()
    sp.save_npz(tmp_path / "c.npz", m, compressed=False)
    mc = MappedCSR(tmp_path / "c.npz")
    assert mc.shape == (50, 50) and isinstance(mc.data, np.memmap)
    for i in (0, 7, 49):
        cols, vals = mc.row(i)
        assert np.array_equal(cols, m.getrow(i).indices) and np.array_equal(vals, m.getrow(i).data)
    assert np.array_equal(mc.diagonal(), m.diagonal())
    # a compressed file cannot be mapped: it is read into memory, with the same two methods
    sp.save_npz(tmp_path / "z.npz", m, compressed=True)
    with pytest.raises(ValueError):
        MappedCSR(tmp_path / "z.npz")

    class A:
        path = tmp_path

        def sparse(self, rel):
            return sp.load_npz(tmp_path / rel).tocsr()

    rows = csr_rows(A(), "z.npz")
    assert np.array_equal(rows.row(7)[0], m.getrow(7).indices) and np.array_equal(rows.diagonal(), m.diagonal())


def test_the_store_maps_the_atlas_cooccurrences_and_gives_the_same_partners(root):
    store = AtlasStore(root)
    partners = store.cooc_partners("syn", 1, 5)
    assert isinstance(store.memo("syn", ("cooc", 1), None), MappedCSR)
    C = store.open("syn").sparse("layers/1/cooc.npz")      # the whole matrix, as before
    blocks = {p["feature"]: p["blocks"] for p in partners}
    assert blocks and all(C[5, f] == b for f, b in blocks.items())


def test_crystals_of_a_feature_are_the_rows_with_it_at_a_corner(root):
    store = AtlasStore(root)
    tab = store.crystals("syn", 0)
    for f in set(tab["a"].head(5)) | {0, 1}:
        want = tab[(tab["a"] == f) | (tab["b"] == f) | (tab["c"] == f) | (tab["d"] == f)]
        assert store.crystals_of("syn", 0, f).index.tolist() == want.index.tolist()


def test_cached_answers_are_the_same_bytes_and_a_replaced_atlas_is_not_answered_from_the_cache(root):
    store = AtlasStore(root, recheck=0.0)
    calls = []

    def make():
        calls.append(1)
        return features.feature_card(store, "syn", 0, 3).model_dump_json().encode()

    a = store.cached(("syn", "card", 0, 3), make)
    b = store.cached(("syn", "card", 0, 3), make)
    assert a == b and len(calls) == 1 and store.answers.hits == 1
    manifest = root / "syn" / "manifest.json"
    st = manifest.stat()
    try:
        os.utime(manifest, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))   # "replaced"
        c = store.cached(("syn", "card", 0, 3), make)
        assert c == a and len(calls) == 2
    finally:
        os.utime(manifest, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_the_api_answers_repeated_requests_from_the_cache_with_identical_bodies(root):
    app = create_app(root)
    c = TestClient(app)
    store = app.state.store
    for url in ("/api/atlases/syn/layers/0/features/11", "/api/atlases/syn/layers/1/points?k=4",
                "/api/atlases/syn/layers/0/lobes?k=2", "/api/atlases/syn/layers/0/search?q=def",
                "/api/atlases/syn/layers/0/export?lobe=phi:4:1"):
        hits = store.answers.hits
        first, second = c.get(url), c.get(url)
        assert first.status_code == second.status_code == 200, url
        assert first.content == second.content and store.answers.hits == hits + 1, url
        assert first.headers["content-type"] == second.headers["content-type"]
    card = c.get("/api/atlases/syn/layers/0/features/11").json()
    assert card["feature"] == 11 and card["neighbors"] and card["contexts"]
    # errors are answered, and never cached
    assert c.get("/api/atlases/syn/layers/0/features/99999").status_code == 404
    assert c.get("/api/atlases/syn/layers/0/features/99999").status_code == 404
    assert c.get("/api/atlases/nope/layers/0/features/1").status_code == 404


def test_several_worker_processes_serve_the_same_answers(root):
    urls = ["/api/atlases/syn/layers/0/features/11", "/api/atlases/syn/layers/2/points?layout=umap&k=2",
            "/api/atlases/syn/layers/1/lobes?k=4&affinity=geometry", "/api/atlases/syn/layers/0/export?features=1-9",
            "/api/atlases"]
    want = {u: TestClient(create_app(root)).get(u).content for u in urls}
    proc, base = start_server(root, extra=["--workers", "2"])
    try:
        deadline = time.time() + 60
        workers = []
        while len(workers) < 2 and time.time() < deadline:   # the supervisor starts them
            workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
                       if "multiprocessing.spawn" in " ".join(p.cmdline())]
            time.sleep(0.2)
        assert len(workers) == 2
        for _ in range(12):   # fresh connections land on either worker
            with httpx.Client(base_url=base, timeout=30) as c:
                for u in urls:
                    r = c.get(u)
                    assert r.status_code == 200 and r.content == want[u], u
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in workers)


def test_default_workers_is_one_per_core_up_to_four():
    assert 1 <= default_workers() <= 4


# --------------------------------------------------------------------------- the page's callbacks


def _callback(client, deps: list, output: str, values: dict):
    """POST the page's callback whose output names ``output``, with ``values`` ({"id.prop":
    value}) for its inputs and state, as the page's renderer does; the parsed answer or None (204)."""
    dep = next(d for d in deps if d["output"] == output or d["output"].startswith(f"..{output}..."))
    outs = [dict(zip(("id", "property"), o.rsplit(".", 1))) for o in dep["output"].strip(".").split("...")]

    def fill(refs):
        return [{**r, **({"value": values[f"{r['id']}.{r['property']}"]}
                         if f"{r['id']}.{r['property']}" in values else {})} for r in refs]

    body = {"output": dep["output"], "outputs": outs, "inputs": fill(dep["inputs"]), "state": fill(dep["state"]),
            "changedPropIds": [f"{r['id']}.{r['property']}" for r in dep["inputs"]]}
    r = client.post("/_dash-update-component", json=body)
    assert r.status_code in (200, 204), (output, r.status_code, r.content[:300])
    return r.json() if r.status_code == 200 else None


def test_the_page_callbacks_answer_the_same_from_the_cache_as_computed_afresh(root):
    """The explorer keeps figures, cards and lobes by their inputs (app.data.AtlasStore.reuse and
    cached): over HTTP, a repeated callback (answered from those caches) equals the first, and
    both equal the answer of an app whose caches are emptied before every request."""
    from app.data import LRUBytes as _LRU
    from app.state import ViewState
    from fastapi.testclient import TestClient

    from app.server import create_app

    ref_app = create_app(root)
    ref_store, ref = ref_app.state.store, TestClient(ref_app)

    def fresh(output, values):
        ref_store.answers, ref_store.objects = _LRU(), _LRU()
        return _callback(ref, deps, output, values)

    # each view differs from one before it in one field the cloud's key holds
    views = [ViewState(atlas="syn", layer=1, color="lobe:phi:4"),
             ViewState(atlas="syn", layer=1, color="geometry:4"),
             ViewState(atlas="syn", layer=1, color="geometry:4", cam=(1.5, 0.5, 0.25)),
             ViewState(atlas="syn", layer=1, color="lobe:phi:4", f=123, panel="lobes"),
             ViewState(atlas="syn", layer=0, layout="umap", color="freq", size=True, f=7, q=0.5, panel="crystals"),
             ViewState(atlas="syn", layer=2, color="subset", f=42, cam=(0.5, -1.75, 0.25))]
    proc, base = start_server(root)
    try:
        with httpx.Client(base_url=base, timeout=60) as c:
            deps = c.get("/_dash-dependencies").json()
            c.get("/api/atlases/syn/layers/0/features/7")     # this card's answer comes from the API's cache
            for st in views:
                view = st.model_dump(mode="json")
                for output, values in (("cloud.figure", {"view-cloud.data": view}),
                                       ("card.children", {"view.data": view}),
                                       ("spectra.figure", {"view-cloud.data": view})):
                    first, again = _callback(c, deps, output, values), _callback(c, deps, output, values)
                    assert first == again == fresh(output, values), (output, st)
                    assert first is not None and first["response"]
            # the card of a feature shown: the histogram and the neighbours are in it
            side = _callback(c, deps, "card.children", {"view.data": views[3].model_dump(mode="json")})
            assert "card-hist" in json.dumps(side) and "card-neighbors" in json.dumps(side)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_the_card_histogram_is_the_figure_plotly_builds(root):
    """The card's histogram is sent as a dict with a layout validated once: the same figure as
    the one plotly's Figure builds, property for property."""
    from plotly.io.json import to_json_plotly

    from app.views import card

    store = AtlasStore(root)
    for f in (0, 5, 123):
        c = features.feature_card(store, "syn", 1, f)
        bar = card.histogram_bar(c)
        if bar is None:
            continue
        want = json.loads(to_json_plotly(card.histogram_figure(bar)))
        assert json.loads(to_json_plotly(card.histogram(c).figure)) == want


def test_kept_objects_are_bounded_and_a_replaced_atlas_is_not_answered_from_them(root):
    store = AtlasStore(root, recheck=0.0, max_cache_bytes=10 * 2**16)
    calls = []
    for i in range(20):
        store.reuse(("syn", "x", i), lambda: calls.append(1) or object())
    assert store.objects.bytes <= 10 * 2**16 and len(store.objects) <= 10
    a = store.reuse(("syn", "y"), lambda: ["first"])
    assert store.reuse(("syn", "y"), lambda: ["second"]) is a
    assert store.reuse(("syn", "none"), lambda: None) is None
    assert store.reuse(("syn", "none"), lambda: "computed again") is None   # None is kept too
    manifest = root / "syn" / "manifest.json"
    st = manifest.stat()
    try:
        os.utime(manifest, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        assert store.reuse(("syn", "y"), lambda: ["second"]) == ["second"]
    finally:
        os.utime(manifest, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_heavy_work_is_limited_per_worker_with_a_readable_503(root, monkeypatch):
    from app.api import deps

    client = TestClient(create_app(root))
    url = "/api/atlases/syn/layers/1/figures/spectra.json"
    monkeypatch.setattr(deps, "HEAVY_WAIT", 0.2)
    for _ in range(deps.HEAVY_SLOTS):          # every slot busy, as with a user's burst of exports
        assert deps._heavy.acquire(timeout=1)
    try:
        r = client.get(url)
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        assert "busy" in r.json()["detail"] and "retry" in r.json()["detail"]
        busy = client.get("/api/atlases/syn/layers/1/export?features=1-5")
        assert busy.status_code == 503
        assert client.get("/api/atlases/syn/layers/1/features/3").status_code == 200   # cards still served
    finally:
        for _ in range(deps.HEAVY_SLOTS):
            deps._heavy.release()
    assert client.get(url).status_code == 200


def test_serving_beyond_loopback_warns_and_every_request_is_logged(root):
    import subprocess
    import sys

    from _app_atlas import REPO, free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--atlas-dir", str(root), "--host", "0.0.0.0",
                             "--port", str(port), "--workers", "1"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.3)
        for path in ("/api/atlases", "/api/atlases/syn", "/api/atlases/nope"):
            httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert "warning: serving on 0.0.0.0" in out and "no login" in out
    logged = [line for line in out.splitlines() if '"GET /api/atlases' in line]
    assert len(logged) == 3 and " 404" in logged[-1]                 # one line per request, with its status
