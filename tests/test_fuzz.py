"""Hostile input: the JSON API fuzzed from its own OpenAPI description, and permalinks fuzzed
through the parser, the resolver and the real page.

Every request is built by a seeded generator from the schema the server publishes (so a new
route is fuzzed without a line here): path and query parameters drawn from well-formed values
that reach deep into the code (the served atlas and comparison names, layers and features that
exist) and from hostile ones (path traversal, markup, SQL-ish text, control characters, huge
and negative numbers, non-numbers, very long strings), plus unknown parameters. The server
must never answer 5xx, every error must be a 4xx whose body says what was wrong, and every
200 JSON answer must validate against the model the schema declares for it.
"""
from __future__ import annotations

import random
from urllib.parse import quote, urlencode

import pytest
from fastapi.testclient import TestClient
from pydantic import TypeAdapter

from _app_atlas import comparison_root
from app import models
from app.server import create_app

N_CALLS = 10_000
HOSTILE = ["", " ", "..", "../..", "../../../etc/passwd", "..%2f..%2fetc", "%2e%2e", "syn/../syn", "/etc/passwd",
           "\\..\\..\\windows", "\x00", "\x1b[31m", "<script>alert(1)</script>", "<img src=x onerror=alert(1)>",
           "' OR '1'='1", '"; DROP TABLE x; --', "λ🙂", "a" * 3000, "-1", "1e309", "NaN", "inf", "null", "[]", "{}",
           "9" * 40, "0x10", "1,2,3", "1-", "-", ":::", "phi:4:999", "lobe:nope:3", "%00", "CON", ".hidden"]
INTS = [0, 1, 2, 3, -1, -7, 599, 600, 10 ** 6, 2 ** 31, 2 ** 63, -(2 ** 63) - 1]


@pytest.fixture(scope="module")
def client(request, tmp_path_factory):
    root = comparison_root(request, tmp_path_factory)
    # server errors become 500 answers (to count), not exceptions in the test
    with TestClient(create_app(root), raise_server_exceptions=False) as c:
        yield c


def _types(schema: dict) -> list[str]:
    if not schema:
        return ["string"]
    if "anyOf" in schema:
        return [t for s in schema["anyOf"] for t in _types(s)]
    if "enum" in schema:
        return ["enum"]
    return [schema.get("type", "string")]


def _value(schema: dict, rng: random.Random, good: dict, name: str):
    if rng.random() < 0.35:                     # hostile of any kind
        return rng.choice(HOSTILE + [str(v) for v in INTS])
    if name in good and rng.random() < 0.7:     # a value that exists, to reach deep code
        return rng.choice(good[name])
    kind = rng.choice(_types(schema))
    if kind == "enum":
        return rng.choice(schema["enum"])
    if kind == "integer":
        lo, hi = schema.get("minimum", -5), schema.get("maximum", 700)
        return rng.choice([rng.randint(int(lo), int(min(hi, 10 ** 6))), rng.choice(INTS)])
    if kind == "number":
        return rng.choice([rng.uniform(-2, 2), 0.5, -0.0, 1e308])
    if kind == "boolean":
        return rng.choice(["true", "false", "1", "0", "yes", "maybe"])
    if kind == "null":
        return ""
    return rng.choice(["pca", "umap", "csv", "parquet", "phi", "lobe:phi:4", "1-5", "a", "the", "#3", "-corr"])


def _model_of(schema: dict):
    """The pydantic type the schema of a 200 answer names (app.models holds every one)."""
    if "$ref" in schema:
        return getattr(models, schema["$ref"].rsplit("/", 1)[1])
    if schema.get("type") == "array" and "$ref" in schema.get("items", {}):
        return list[_model_of(schema["items"])]
    return None


def test_the_api_survives_ten_thousand_fuzzed_calls(client):
    spec = client.get("/openapi.json").json()
    ops = [(path, op) for path, item in spec["paths"].items() for method, op in item.items() if method == "get"]
    good = {"atlas": ["syn", "syn2"], "comparison": ["syn-vs-syn2", "orphan", "broken"], "layer": [0, 1, 2],
            "layer_a": [1, 2], "layer_b": [0, 1], "feature": [0, 5, 599], "sample": [0, 3],
            "name": ["spectra", "cloud", "alpha", "lobes", "activations"], "fmt": ["html", "json"]}
    adapters: dict = {}
    rng = random.Random(0)
    status: dict[int, int] = {}
    for i in range(N_CALLS):
        path, op = rng.choice(ops)
        params = op.get("parameters", [])
        url = path
        for p in (p for p in params if p["in"] == "path"):
            url = url.replace("{" + p["name"] + "}", quote(str(_value(p.get("schema", {}), rng, good, p["name"])),
                                                           safe=""))
        query = {p["name"]: _value(p.get("schema", {}), rng, good, p["name"])
                 for p in params if p["in"] == "query" and rng.random() < 0.6}
        if rng.random() < 0.05:
            query["unknown_" + str(rng.randrange(9))] = rng.choice(HOSTILE)
        r = client.get(url + ("?" + urlencode(query) if query else ""))
        status[r.status_code] = status.get(r.status_code, 0) + 1
        where = f"call {i}: GET {url} {query}"
        assert r.status_code < 500 or r.status_code == 503, (where, r.status_code, r.text[:300])
        if r.status_code == 503:   # only the broken comparison, said why
            assert "broken" in url and "truncated" in r.json()["detail"], (where, r.text[:300])
        if r.status_code >= 400:
            detail = r.json().get("detail")
            assert detail, (where, r.text[:300])
            text = detail if isinstance(detail, str) else " ".join(str(d.get("msg", "")) for d in detail)
            assert text.strip() and "Traceback" not in text, (where, text)
        elif r.status_code == 200 and r.headers["content-type"].startswith("application/json"):
            schema = op["responses"]["200"]["content"]["application/json"]["schema"]
            model = _model_of(schema)
            if model is not None:
                adapter = adapters.setdefault(path, TypeAdapter(model))
                adapter.validate_json(r.content)             # raises on an answer outside its model
    ok = status.get(200, 0)
    assert ok > N_CALLS // 10, status        # the generator reaches deep code, not only errors
    assert {404, 422} <= set(status), status


def test_path_traversal_and_oversized_requests_are_refused(client):
    for url in ["/api/atlases/..%2F..%2Fetc%2Fpasswd", "/api/atlases/%2e%2e", "/api/atlases/syn%2F..%2Fsyn2",
                "/api/comparisons/..%2Fsyn", "/api/atlases/.hidden", "/api/atlases/syn/layers/1/figures/..%2Fx.html"]:
        r = client.get(url)
        assert r.status_code in (404, 422), (url, r.status_code)
        assert "passwd" not in r.text or r.json()["detail"]
    r = client.get("/api/atlases/syn/layers/1/search", params={"q": "a" * 10_000})
    assert r.status_code == 422 and "at most" in r.text
    r = client.get("/api/atlases/syn/layers/1/export", params={"features": "1-599," * 5_000})
    assert r.status_code in (200, 422)
    # every free-text parameter is bounded in the published schema (enums and numbers are by type)
    spec = client.get("/openapi.json").json()
    unbounded = []
    for path, item in spec["paths"].items():
        for p in item["get"].get("parameters", []):
            schemas = p["schema"].get("anyOf", [p["schema"]])
            for sc in schemas:
                if sc.get("type") == "string" and "enum" not in sc and "maxLength" not in sc and p["in"] == "query":
                    unbounded.append((path, p["name"]))
    assert not unbounded, unbounded


# ----------------------------------------------------------------------- permalinks

KEYS = ["atlas", "layer", "layout", "color", "size", "f", "face", "q", "panel", "cam", "ctr", "view", "ll", "lp", "lc",
        "pt", "cmp", "um", "cell", "pair"]
GOOD = {"atlas": ["syn", "syn2"], "layer": ["0", "1", "2"], "layout": ["pca", "umap"],
        "color": ["lobe:phi:4", "freq", "subset", "geometry:4"], "f": ["3", "599"], "panel": ["lobes", "crystals"],
        "view": ["cloud", "latent", "universality"], "cmp": ["syn-vs-syn2"], "cell": ["1:0"], "q": ["0.5"]}


def fuzzed_link(rng: random.Random) -> str:
    pairs = []
    for _ in range(rng.randint(0, 8)):
        key = rng.choice(KEYS + ["junk", "a" * 50, "<b>", ""])
        value = rng.choice(GOOD.get(key, []) + HOSTILE) if rng.random() < 0.6 else rng.choice(HOSTILE)
        pairs.append((key, value))
    return "?" + urlencode(pairs)


def test_fuzzed_permalinks_parse_and_resolve_to_a_view(request, tmp_path_factory):
    from app.data import AtlasStore
    from app.state import parse_query, resolve

    store = AtlasStore(comparison_root(request, tmp_path_factory))
    rng = random.Random(1)
    noticed = 0
    for _ in range(5_000):
        link = fuzzed_link(rng)
        st, notes = parse_query(link)
        st, more = resolve(st, store)
        noticed += bool(notes or more)
        assert all(isinstance(n, str) and n.strip() for n in notes + more), (link, notes, more)
        st.to_query()                       # every resolved view writes a link again
    assert noticed > 2_500                 # most fuzzed links are worth a notice


def check_links(base: str, n: int, seed: int) -> int:
    """Open ``n`` fuzzed permalinks (each with a markup payload) in Chromium; assert each renders
    a page with its link resolved, nothing injected runs, no page error, no CSP violation.
    Returns how many links showed a notice. (bench/soak_fuzz.py runs it longer.)"""
    from playwright.sync_api import sync_playwright
    from test_browser import ARGS, CHROMIUM

    rng = random.Random(seed)
    noticed = 0
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = b.new_page()
        errors, csp = [], []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: csp.append(m.text) if "Content Security Policy" in m.text else None)
        page.on("dialog", lambda d: errors.append("a dialog opened: " + d.message))
        for _ in range(n):
            link = fuzzed_link(rng) + "&f=" + quote("<img src=x onerror=window.__pwned=1>")
            r = page.goto(base + "/" + link)
            assert r.status == 200, link
            # a rendered page: the controller answered (the permalink box holds a link)
            page.wait_for_function("() => { const e = document.querySelector('#permalink');"
                                   " return e && e.value && e.value.includes('?'); }", timeout=45_000)
            assert page.evaluate("() => window.__pwned") is None, link
            assert not page.query_selector("#notice img, #notice script"), link
            notice = page.text_content("#notice") or ""
            noticed += bool(notice.strip())
            assert "Traceback" not in notice and "Internal Server Error" not in page.content(), link
        assert not errors and not csp, (errors, csp)
        b.close()
    return noticed


@pytest.mark.browser
def test_fuzzed_permalinks_in_the_real_page(request, tmp_path_factory):
    from test_browser import _need_browser
    from _app_atlas import start_server

    _need_browser()
    proc, base = start_server(comparison_root(request, tmp_path_factory))
    try:
        assert check_links(base, 20, seed=2) >= 15      # the payload alone earns a notice (f is not a number)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
