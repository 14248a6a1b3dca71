"""The JSON API: every number the explorer shows, typed and documented (OpenAPI at /docs).

Routes (all read-only, under ``/api``):

* ``GET /atlases`` - the atlases served, with layers and widths
* ``GET /atlases/{atlas}`` - manifest summary, what is computed per layer
* ``GET /atlases/{atlas}/spectra`` - eigenvalue spectra and power-law fits of every layer
* ``GET /atlases/{atlas}/layers/{layer}/points`` - 3-D coordinates, frequency, lobe labels
* ``GET /atlases/{atlas}/layers/{layer}/features/{feature}`` - a feature's card
* ``GET /atlases/{atlas}/layers/{layer}/lobes`` - lobe sizes, names, corpus-subset composition
* ``GET /atlases/{atlas}/layers/{layer}/crystals`` - crystal faces with their quality
* ``GET /atlases/{atlas}/layers/{layer}/search`` - features by id, token or context text
* ``GET /atlases/{atlas}/layers/{layer}/atom`` - crystal counts against their random baseline,
  the best faces, LDA silhouettes and the word-pair distractor (atom.json)
* ``GET /atlases/{atlas}/layers/{layer}/export`` - a selection or a lobe of features as CSV or Parquet
* ``GET /atlases/{atlas}/layers/{layer}/figures/{name}.{html|json}`` - any figure of the explorer
  as standalone HTML (plotly.js inlined, opens offline) or plotly JSON

Errors are HTTP status codes with a readable ``detail``: 404 for an unknown atlas, layer,
feature or a result the atlas does not hold; 422 for a malformed parameter; 503 for an atlas
that fails validation (the detail is the one-line AtlasError naming the bad file).
"""
from __future__ import annotations

import io
import re
from typing import Literal

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Response
from pydantic import BaseModel, Field

from app import figures as figs
from app.data import AtlasStore, UnknownAtlas, UnknownItem
from app.state import _COLOR, ViewState, resolve_color
from analysis.atlas import AtlasError

Layout = Literal["pca", "umap"]
Affinity = Literal["phi", "simple_matching", "jaccard", "dice", "overlap", "geometry"]


# --------------------------------------------------------------------------- models


class LayerSummary(BaseModel):
    layer: int
    n_features: int
    hook: str = ""
    sae_source: str = ""


class AtlasSummary(BaseModel):
    name: str
    title: str = ""
    model: str = ""
    synthetic: bool = False
    layers: list[LayerSummary] = Field(default_factory=list)
    error: str | None = Field(None, description="why this atlas cannot be opened (validation failure)")


class LayerDetail(LayerSummary):
    n_tokens: int
    n_blocks: int
    threshold: float | None
    sae: dict
    layouts: list[Layout]
    lobes: dict[str, list[int]] = Field(description="affinity -> the k computed")
    files: list[str]


class AtlasDetail(BaseModel):
    name: str
    title: str
    synthetic: bool
    created: str
    model: dict
    corpus: dict
    layers: list[LayerDetail]
    notes: list[str]


class LobeLabels(BaseModel):
    affinity: Affinity
    k: int
    labels: list[int] = Field(description="lobe per feature; -1 = dead/excluded")
    names: dict[int, str] = Field(default_factory=dict, description="lobe -> its top tokens")


class Points(BaseModel):
    atlas: str
    layer: int
    layout: Layout
    n: int
    x: list[float]
    y: list[float]
    z: list[float]
    fire_count: list[int] | None
    frequency: list[float] | None = Field(description="fraction of tokens on which the feature fired")
    lobes: LobeLabels | None


class Neighbour(BaseModel):
    feature: int
    cos: float


class Context(BaseModel):
    rank: int
    value: float
    doc: int
    subset: str
    tokens: list[str]
    peak: int


class TopToken(BaseModel):
    token: str
    count: int


class CoocPartner(BaseModel):
    feature: int
    blocks: int
    phi: float | None


class Crystal(BaseModel):
    index: int = Field(description="row of crystals.parquet")
    a: int
    b: int
    c: int
    d: int
    kind: str
    edge_cos: float | None = None
    length_ratio: float | None = None
    closing_error: float | None = None


class Histogram(BaseModel):
    edges: list[float]
    counts: list[int]


class LobeOf(BaseModel):
    affinity: str
    k: int
    lobe: int


class FeatureCard(BaseModel):
    atlas: str
    layer: int
    feature: int
    fire_count: int | None
    frequency: float | None
    neighbours: list[Neighbour]
    contexts: list[Context]
    top_tokens: list[TopToken]
    cooc_partners: list[CoocPartner] | None
    crystals: list[Crystal] | None
    act_hist: Histogram | None
    lobes: list[LobeOf]
    neuronpedia: str | None


class LobeRow(BaseModel):
    lobe: int
    size: int
    name: str
    subsets: dict[str, int] = Field(default_factory=dict, description="blocks won per corpus subset")


class Lobes(BaseModel):
    atlas: str
    layer: int
    affinity: Affinity
    k: int
    lobes: list[LobeRow]
    stats: dict | None = Field(None, description="brain.json entry for (affinity, k): AMI, accuracy, z-scores")


class Spectrum(BaseModel):
    layer: int
    eigenvalues: list[float]
    fit: dict | None


class Spectra(BaseModel):
    atlas: str
    layers: list[Spectrum]


class AtomSummary(BaseModel):
    atlas: str
    layer: int
    n_faces: int | None = Field(None, description="faces in crystals.parquet (None: crystals not computed)")
    n_parallelogram: int | None = None
    n_trapezoid: int | None = None
    baseline: dict | None = Field(None, description="atom.json crystal_baseline: faces passing the same "
                                                    "thresholds on random directions of matched norms")
    best: list[Crystal] = Field(default_factory=list, description="best faces: highest edge cosine first")
    lda: dict | None = Field(None, description="atom.json lda: silhouette per LDA dimension, raw silhouette")
    distractor: dict | None = Field(None, description="atom.json distractor: PC1 scores, length differences, r")
    n_pairs: int | None = None


class SearchHit(BaseModel):
    feature: int
    why: str


class SearchResult(BaseModel):
    query: str
    hits: list[SearchHit]


class Health(BaseModel):
    status: Literal["ok"]
    atlases: int


# --------------------------------------------------------------------------- helpers


def _http(e: Exception) -> HTTPException:
    if isinstance(e, (UnknownAtlas, UnknownItem)):
        return HTTPException(404, detail=str(e.args[0]))
    if isinstance(e, AtlasError):
        return HTTPException(503, detail=str(e))
    raise e


def neuronpedia_url(store: AtlasStore, atlas: str, layer: int, feature: int) -> str | None:
    np_id = store.open(atlas).manifest.layer(layer).sae.neuronpedia
    if not np_id or not re.fullmatch(r"[A-Za-z0-9_.\-]+/[A-Za-z0-9_.\-]+", np_id):
        return None
    return f"https://www.neuronpedia.org/{np_id}/{feature}"


def feature_card(store: AtlasStore, atlas: str, layer: int, feature: int, k: int = 10) -> FeatureCard:
    """Everything the card shows about one feature (missing files give empty parts)."""
    store.check_feature(atlas, layer, feature)
    fr = store.frequency(atlas, layer)
    idx, cos = store.neighbours(atlas, layer, feature, k)
    ctx = store.rows_of(atlas, layer, "contexts.parquet", feature)
    toks = store.rows_of(atlas, layer, "top_tokens.parquet", feature)
    a = store.open(atlas)
    hist = None
    if a.has(f"layers/{layer}/act_hist.npy") and a.has(f"layers/{layer}/act_hist_edges.npy"):
        hist = Histogram(edges=np.asarray(a.array(f"layers/{layer}/act_hist_edges.npy"), float).tolist(),
                         counts=np.asarray(a.array(f"layers/{layer}/act_hist.npy")[feature]).tolist())
    crystals = None
    tab = store.crystals(atlas, layer)
    if tab is not None:
        hit = tab[(tab["a"] == feature) | (tab["b"] == feature) | (tab["c"] == feature) | (tab["d"] == feature)]
        crystals = [_crystal(i, r) for i, r in hit.head(20).iterrows()]
    lobes = []
    for aff, ks in store.lobe_options(atlas, layer).items():
        for kk in ks:
            lab = store.lobes(atlas, layer, aff, kk)
            lobes.append(LobeOf(affinity=aff, k=kk, lobe=int(lab[feature])))
    return FeatureCard(
        atlas=atlas, layer=layer, feature=feature,
        fire_count=int(fr[0][feature]) if fr else None,
        frequency=float(fr[1][feature]) if fr else None,
        neighbours=[Neighbour(feature=int(i), cos=round(float(c), 4)) for i, c in zip(idx, cos)],
        contexts=[] if ctx is None else [
            Context(rank=int(r["rank"]), value=float(r["value"]), doc=int(r["doc"]), subset=str(r["subset"]),
                    tokens=[str(t) for t in r["tokens"]], peak=int(r["peak"])) for _, r in ctx.iterrows()],
        top_tokens=[] if toks is None else [TopToken(token=str(r["token"]), count=int(r["count"]))
                                             for _, r in toks.iterrows()],
        cooc_partners=None if (p := store.cooc_partners(atlas, layer, feature)) is None else
        [CoocPartner(**x) for x in p],
        crystals=crystals, act_hist=hist, lobes=lobes,
        neuronpedia=neuronpedia_url(store, atlas, layer, feature),
    )


def _crystal(i, r) -> Crystal:
    def num(col):
        return float(r[col]) if col in r and r[col] == r[col] else None

    return Crystal(index=int(i), a=int(r["a"]), b=int(r["b"]), c=int(r["c"]), d=int(r["d"]), kind=str(r["kind"]),
                   edge_cos=num("edge_cos"), length_ratio=num("length_ratio"), closing_error=num("closing_error"))


def best_faces(tab, n: int = 15):
    """The ``n`` best faces: highest edge cosine, then smallest closing error."""
    by = [c for c in ("edge_cos", "closing_error") if c in tab]
    if by:
        tab = tab.sort_values(by, ascending=[c != "edge_cos" for c in by], kind="stable")
    return tab.head(n)


def atom_summary(store: AtlasStore, atlas: str, layer: int, n_best: int = 15) -> AtomSummary:
    a = store.layer(atlas, layer)
    tab = store.crystals(atlas, layer)
    atom = a.json(f"layers/{layer}/atom.json") if a.has(f"layers/{layer}/atom.json") else {}
    out = AtomSummary(atlas=atlas, layer=layer, baseline=atom.get("crystal_baseline"), lda=atom.get("lda"),
                      distractor=atom.get("distractor"), n_pairs=atom.get("n_pairs"))
    if tab is not None:
        kinds = tab["kind"].astype(str) if "kind" in tab else None
        out.n_faces = len(tab)
        if kinds is not None:
            out.n_parallelogram, out.n_trapezoid = int((kinds == "parallelogram").sum()), int((kinds == "trapezoid").sum())
        out.best = [_crystal(i, r) for i, r in best_faces(tab, n_best).iterrows()]
    return out


def search(store: AtlasStore, atlas: str, layer: int, q: str, limit: int = 20) -> list[SearchHit]:
    """Features by id (``123`` or ``#123``), then by top token, then by text in contexts."""
    q = q.strip()
    n = store.n_features(atlas, layer)
    hits: list[SearchHit] = []
    seen: set[int] = set()

    def add(f: int, why: str):
        if f not in seen and len(hits) < limit:
            seen.add(f)
            hits.append(SearchHit(feature=f, why=why))

    if re.fullmatch(r"#?\d{1,9}", q) and int(q.lstrip("#")) < n:
        add(int(q.lstrip("#")), "feature id")
    needle = q.lower()
    if not needle:
        return hits
    tt = store.table(atlas, layer, "top_tokens.parquet")
    if tt is not None:
        tok = tt["token"].astype(str).str.strip().str.lower()
        m = tt[tok == needle].sort_values("count", ascending=False)
        for f, t in zip(m["feature"], m["token"]):
            add(int(f), f"top token {t!r}")
    ctx = store.table(atlas, layer, "contexts.parquet")
    if ctx is not None and len(hits) < limit:
        text = store.memo(atlas, ("ctx-text", layer),
                          lambda a: ctx["tokens"].map(lambda ts: "".join(map(str, ts)).lower()).to_numpy())
        needle_ns = needle.replace(" ", "")
        for i in np.flatnonzero([needle_ns in t.replace(" ", "") for t in text])[:limit * 4]:
            add(int(ctx["feature"].iat[i]), "context text")
    return hits


def _parse_features(spec: str, n: int) -> np.ndarray:
    """``"1,2,5-9"`` -> sorted unique int array; raises 422 on malformed or out-of-range ids."""
    out: list[int] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        m = re.fullmatch(r"(\d{1,9})(?:-(\d{1,9}))?", part)
        if not m:
            raise HTTPException(422, detail=f"features: {part[:30]!r} is not an id or a range like 5-9")
        lo, hi = int(m[1]), int(m[2] or m[1])
        if hi < lo or hi >= n:
            raise HTTPException(422, detail=f"features: {part!r} is outside 0..{n - 1}")
        out.extend(range(lo, hi + 1))
    return np.unique(np.asarray(out, dtype=np.int64))


def _parse_lobe(store: AtlasStore, atlas: str, layer: int, spec: str) -> np.ndarray:
    """``"phi:8:3"`` (affinity:k:lobe) -> the ids of lobe 3 of the phi lobes with k=8."""
    m = re.fullmatch(r"([a-z_]{1,20}):(\d{1,5}):(-?\d{1,5})", spec.strip())
    if not m:
        raise HTTPException(422, detail=f"lobe: {spec[:40]!r} is not affinity:k:lobe, e.g. phi:8:3")
    labels = store.lobes(atlas, layer, m[1], int(m[2]))
    if labels is None:
        ks = store.lobe_options(atlas, layer).get(m[1])
        raise UnknownItem(f"no {m[1]} lobes with k={m[2]} in layer {layer} (computed: {ks or 'none'})")
    ids = np.flatnonzero(labels == int(m[3]))
    if not len(ids):
        raise UnknownItem(f"{m[1]} lobes with k={m[2]} of layer {layer} have no lobe {m[3]}")
    return ids


def figure_state(store: AtlasStore, atlas: str, layer: int, layout: str, color: str, f: int | None,
                 q: float | None, face: int | None, size: bool) -> ViewState:
    """The view a figure is drawn for; 404 for what this layer does not hold."""
    store.layer(atlas, layer)
    if not _COLOR.match(color):
        raise HTTPException(422, detail=f"color: {color[:40]!r}; use lobe:<affinity>:<k>, freq, subset or geometry:<k>")
    resolved, why = resolve_color(color, store, atlas, layer)
    if why:
        raise UnknownItem(f"color={color}: " + why.split(";")[0])
    if f is not None:
        store.check_feature(atlas, layer, f)
    if face is not None:
        tab = store.crystals(atlas, layer)
        if tab is None or not 0 <= face < len(tab):
            raise UnknownItem(f"layer {layer} has no crystal face {face}")
    return ViewState(atlas=atlas, layer=layer, layout=layout, color=resolved, f=f, q=q, face=face, size=size)


def selection_table(store: AtlasStore, atlas: str, layer: int, features: np.ndarray, layout: str = "pca"):
    """A DataFrame of the selected features: coordinates, counts, top tokens, lobe labels."""
    import pandas as pd

    cols: dict[str, object] = {"feature": features}
    xyz = store.coords(atlas, layer, layout)
    if xyz is not None:
        for j, c in enumerate("xyz"):
            cols[c] = xyz[features, j]
    fr = store.frequency(atlas, layer)
    if fr is not None:
        cols["fire_count"], cols["frequency"] = fr[0][features], fr[1][features]
    toks = store.top_tokens(atlas, layer)
    if toks is not None:
        cols["top_tokens"] = [toks[i] for i in features]
    for aff, ks in store.lobe_options(atlas, layer).items():
        for k in ks:
            cols[f"lobe_{aff}_{k}"] = store.lobes(atlas, layer, aff, k)[features]
    return pd.DataFrame(cols)


# --------------------------------------------------------------------------- routes


def make_router(store: AtlasStore) -> APIRouter:
    r = APIRouter(prefix="/api", tags=["atlas"])

    def guard(fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except (UnknownAtlas, UnknownItem, AtlasError) as e:
            raise _http(e) from None

    @r.get("/atlases", response_model=list[AtlasSummary], summary="The atlases served")
    def list_atlases() -> list[AtlasSummary]:
        out = []
        for name in store.names():
            try:
                a = store.open(name)
            except AtlasError as e:
                out.append(AtlasSummary(name=name, error=str(e)))
                continue
            m = a.manifest
            out.append(AtlasSummary(
                name=name, title=m.title, model=m.model.name, synthetic=m.synthetic,
                layers=[LayerSummary(layer=li.layer, n_features=store.n_features(name, li.layer), hook=li.hook,
                                     sae_source=li.sae.source) for li in m.layers]))
        return out

    @r.get("/atlases/{atlas}", response_model=AtlasDetail, summary="Manifest summary of one atlas")
    def atlas_detail(atlas: str) -> AtlasDetail:
        def build():
            m = store.open(atlas).manifest
            layers = []
            for li in m.layers:
                prefix = f"layers/{li.layer}/"
                layers.append(LayerDetail(
                    layer=li.layer, n_features=store.n_features(atlas, li.layer), hook=li.hook,
                    sae_source=li.sae.source, n_tokens=li.n_tokens, n_blocks=li.n_blocks, threshold=li.threshold,
                    sae=li.sae.model_dump(exclude={"training"}), layouts=store.layouts(atlas, li.layer),
                    lobes=store.lobe_options(atlas, li.layer),
                    files=sorted(f[len(prefix):] for f in m.files if f.startswith(prefix))))
            return AtlasDetail(name=atlas, title=m.title, synthetic=m.synthetic, created=m.created,
                               model=m.model.model_dump(), corpus=m.corpus.model_dump(), layers=layers,
                               notes=m.notes)

        return guard(build)

    @r.get("/atlases/{atlas}/spectra", response_model=Spectra, summary="Eigenvalue spectra with power-law fits")
    def spectra(atlas: str) -> Spectra:
        def build():
            a = store.open(atlas)
            out = []
            for L in a.layer_ids:
                rel = f"layers/{L}/spectrum.npy"
                if a.has(rel):
                    fit = a.json(f"layers/{L}/galaxy.json") if a.has(f"layers/{L}/galaxy.json") else None
                    out.append(Spectrum(layer=L, eigenvalues=np.asarray(a.array(rel), float).tolist(), fit=fit))
            return Spectra(atlas=atlas, layers=out)

        return guard(build)

    @r.get("/atlases/{atlas}/layers/{layer}/points", response_model=Points,
           summary="3-D coordinates, firing frequency and lobe labels of every feature")
    def points(atlas: str, layer: int, layout: Layout = "pca", affinity: Affinity = "phi",
               k: int | None = Query(None, ge=1, description="lobe count; default: the smallest computed")) -> Points:
        def build():
            xyz = store.coords(atlas, layer, layout)
            if xyz is None:
                raise UnknownItem(f"layout {layout!r} was not computed for layer {layer} of atlas {atlas!r}")
            fr = store.frequency(atlas, layer)
            lobes = None
            ks = store.lobe_options(atlas, layer).get(affinity)
            if k is not None and (not ks or k not in ks):
                raise UnknownItem(f"no {affinity} lobes with k={k} in layer {layer} (computed: {ks or 'none'})")
            if ks:
                kk = k if k is not None else ks[0]
                lobes = LobeLabels(affinity=affinity, k=kk, labels=store.lobes(atlas, layer, affinity, kk).tolist(),
                                   names=store.lobe_names(atlas, layer, affinity, kk))
            return Points(atlas=atlas, layer=layer, layout=layout, n=len(xyz),
                          x=xyz[:, 0].tolist(), y=xyz[:, 1].tolist(), z=xyz[:, 2].tolist(),
                          fire_count=fr[0].tolist() if fr else None, frequency=fr[1].tolist() if fr else None,
                          lobes=lobes)

        return guard(build)

    @r.get("/atlases/{atlas}/layers/{layer}/features/{feature}", response_model=FeatureCard,
           summary="A feature's card: frequency, neighbours, contexts, tokens, partners")
    def feature(atlas: str, layer: int, feature: int,
                k: int = Query(10, ge=1, le=100, description="neighbours to return")) -> FeatureCard:
        return guard(feature_card, store, atlas, layer, feature, k)

    @r.get("/atlases/{atlas}/layers/{layer}/lobes", response_model=Lobes, summary="Lobes at one (affinity, k)")
    def lobes(atlas: str, layer: int, affinity: Affinity = "phi", k: int = Query(..., ge=1)) -> Lobes:
        def build():
            lab = store.lobes(atlas, layer, affinity, k)
            if lab is None:
                ks = store.lobe_options(atlas, layer).get(affinity)
                raise UnknownItem(f"no {affinity} lobes with k={k} in layer {layer} (computed: {ks or 'none'})")
            names = store.lobe_names(atlas, layer, affinity, k)
            subsets: dict[int, dict[str, int]] = {}
            ls = store.table(atlas, layer, "lobe_subsets.parquet")
            if ls is not None:
                t = ls[(ls["affinity"] == affinity) & (ls["k"] == k)]
                for lobe, s, b in zip(t["lobe"], t["subset"], t["blocks"]):
                    subsets.setdefault(int(lobe), {})[str(s)] = int(b)
            ids, sizes = np.unique(lab[lab >= 0], return_counts=True)
            stats = None
            a = store.open(atlas)
            if a.has(f"layers/{layer}/brain.json"):
                stats = _brain_entry(a.json(f"layers/{layer}/brain.json"), affinity, k)
            return Lobes(atlas=atlas, layer=layer, affinity=affinity, k=k, stats=stats,
                         lobes=[LobeRow(lobe=int(i), size=int(s), name=names.get(int(i), ""),
                                        subsets=subsets.get(int(i), {})) for i, s in zip(ids, sizes)])

        return guard(build)

    @r.get("/atlases/{atlas}/layers/{layer}/crystals", response_model=list[Crystal],
           summary="Crystal faces (parallelograms, trapezoids) with their quality")
    def crystals(atlas: str, layer: int, min_cos: float = Query(0.0, ge=-1, le=1),
                 limit: int = Query(500, ge=1, le=100_000)) -> list[Crystal]:
        def build():
            tab = store.crystals(atlas, layer)
            if tab is None:
                raise UnknownItem(f"crystals were not computed for layer {layer} of atlas {atlas!r}")
            if "edge_cos" in tab:
                tab = tab[tab["edge_cos"] >= min_cos]
            return [_crystal(i, r) for i, r in tab.head(limit).iterrows()]

        return guard(build)

    @r.get("/atlases/{atlas}/layers/{layer}/search", response_model=SearchResult,
           summary="Find features by id, top token or context text")
    def search_route(atlas: str, layer: int, q: str = Query(..., min_length=1, max_length=200),
                     limit: int = Query(20, ge=1, le=200)) -> SearchResult:
        return SearchResult(query=q, hits=guard(search, store, atlas, layer, q, limit))

    @r.get("/atlases/{atlas}/layers/{layer}/export", summary="Export selected features as CSV or Parquet",
           responses={200: {"content": {"text/csv": {}, "application/vnd.apache.parquet": {}}}})
    def export(atlas: str, layer: int,
               features: str = Query("", max_length=100_000, description="ids and ranges, e.g. 1,2,10-20; empty = all"),
               lobe: str = Query("", max_length=60, description="the features of one lobe, affinity:k:lobe, e.g. "
                                                                "phi:8:3 (instead of features)"),
               format: Literal["csv", "parquet"] = "csv", layout: Layout = "pca") -> Response:
        def build():
            n = store.n_features(atlas, layer)
            if features.strip() and lobe.strip():
                raise HTTPException(422, detail="give features or lobe, not both")
            if lobe.strip():
                sel = _parse_lobe(store, atlas, layer, lobe)
            else:
                sel = _parse_features(features, n) if features.strip() else np.arange(n)
            df = selection_table(store, atlas, layer, sel, layout)
            what = "lobe-" + lobe.strip().replace(":", "-") if lobe.strip() else "features"
            fname = f"{atlas}-layer{layer}-{what}.{format}"
            head = {"Content-Disposition": f'attachment; filename="{fname}"'}
            if format == "csv":
                return Response(df.to_csv(index=False), media_type="text/csv", headers=head)
            buf = io.BytesIO()
            df.to_parquet(buf, index=False)
            return Response(buf.getvalue(), media_type="application/vnd.apache.parquet", headers=head)

        return guard(build)

    @r.get("/atlases/{atlas}/layers/{layer}/atom", response_model=AtomSummary,
           summary="Crystals against their random baseline, best faces, LDA silhouette, distractor")
    def atom(atlas: str, layer: int, best: int = Query(15, ge=0, le=1000, description="best faces to list")) -> AtomSummary:
        return guard(atom_summary, store, atlas, layer, best)

    @r.get("/atlases/{atlas}/layers/{layer}/figures/{name}.{fmt}",
           summary="A figure of the explorer as standalone HTML or plotly JSON",
           description="Figures: " + ", ".join(figs.FIGURES) + ". HTML inlines plotly.js (opens offline); "
                       "JSON is the plotly figure (data and layout). PNG and SVG are rendered by plotly.js in "
                       "the browser from the same figures (the PNG/SVG buttons under each figure). The query "
                       "parameters are the permalink's: they choose what the cloud, the lobe heat map and the "
                       "activation histogram show. 404: unknown figure, or one whose data this atlas lacks.",
           responses={200: {"content": {"text/html": {}, "application/json": {}}}})
    def figure(atlas: str, layer: int, name: str, fmt: str, layout: Layout = "pca",
               color: str = Query("lobe", max_length=40, description="lobe:<affinity>:<k>, freq, subset, geometry:<k>"),
               f: int | None = Query(None, description="selected feature (cloud overlays, activations)"),
               q: float | None = Query(None, ge=-1, le=1, description="crystal overlay: minimum edge cosine"),
               face: int | None = Query(None, ge=0, description="crystal face drawn (row of crystals.parquet)"),
               size: bool = Query(False, description="size cloud points by firing frequency")) -> Response:
        if name not in figs.FIGURES:
            raise HTTPException(404, detail=f"no figure {name[:40]!r}; figures: {', '.join(figs.FIGURES)}")
        if fmt not in ("html", "json"):
            raise HTTPException(404, detail=f"figures are served as .html or .json, not .{fmt[:10]}; "
                                            "PNG and SVG come from the buttons under each figure in the explorer")

        def build():
            st = figure_state(store, atlas, layer, layout, color, f, q, face, size)
            fig = figs.FIGURES[name](store, st)
            if fig is None:
                raise UnknownItem(f"layer {layer} of atlas {atlas!r} lacks the data of figure {name!r}"
                                  + (" (select a feature with f=)" if name == "activations" and f is None else ""))
            title = f"{atlas}-layer{layer}-{name}"
            if fmt == "json":
                return Response(fig.to_json(), media_type="application/json")
            return Response(figs.standalone_html(fig, title), media_type="text/html",
                            headers={"Content-Disposition": f'inline; filename="{title}.html"'})

        return guard(build)

    return r


def _brain_entry(brain: dict, affinity: str, k: int) -> dict | None:
    """The brain.json record for (affinity, k): ``results[affinity]`` is a list of per-k rows."""
    rows = (brain.get("results") or {}).get(affinity)
    if isinstance(rows, list):
        for row in rows:
            if isinstance(row, dict) and row.get("k") == k:
                return row
    return None
