"""Feature-level answers: a feature's card, search by id / token / text, its Neuronpedia link."""
from __future__ import annotations

import re

import numpy as np

from analysis.atlas import LayerFiles
from app.data import AtlasStore
from app.models import CoocPartner, Context, FeatureCard, Histogram, LobeOf, Neighbor, SearchHit, TopToken
from app.queries.layers import crystal, records

_NEURONPEDIA_ID = re.compile(r"[A-Za-z0-9_.\-]+/[A-Za-z0-9_.\-]+")


def neuronpedia_url(store: AtlasStore, atlas: str, layer: int, feature: int) -> str | None:
    """The feature's page on Neuronpedia when its SAE names a well-formed ``model/sae`` id there."""
    np_id = store.open(atlas).manifest.layer(layer).sae.neuronpedia
    if not np_id or not _NEURONPEDIA_ID.fullmatch(np_id):
        return None
    return f"https://www.neuronpedia.org/{np_id}/{feature}"


def feature_card(store: AtlasStore, atlas: str, layer: int, feature: int, k: int = 10) -> FeatureCard:
    """Everything the card shows about one feature (missing files give empty parts)."""
    store.check_feature(atlas, layer, feature)
    fr = store.frequency(atlas, layer)
    idx, cos = store.neighbors(atlas, layer, feature, k)
    ctx = store.rows_of(atlas, layer, "contexts.parquet", feature)
    toks = store.rows_of(atlas, layer, "top_tokens.parquet", feature)
    a, f = store.open(atlas), LayerFiles(layer)
    hist = None
    if a.has(f.act_hist) and a.has(f.act_hist_edges):
        hist = Histogram(edges=np.asarray(a.array(f.act_hist_edges), float).tolist(),
                         counts=np.asarray(a.array(f.act_hist)[feature]).tolist())
    crystals = None
    hit = store.crystals_of(atlas, layer, feature)
    if hit is not None:
        crystals = [crystal(i, r) for i, r in records(hit.head(20))]
    lobes = [LobeOf(affinity=aff, k=kk, lobe=int(store.lobes(atlas, layer, aff, kk)[feature]))
             for aff, ks in store.lobe_options(atlas, layer).items() for kk in ks]
    partners = store.cooc_partners(atlas, layer, feature)
    return FeatureCard(
        atlas=atlas, layer=layer, feature=feature,
        fire_count=int(fr[0][feature]) if fr else None,
        frequency=float(fr[1][feature]) if fr else None,
        neighbors=[Neighbor(feature=int(i), cos=round(float(c), 4)) for i, c in zip(idx, cos)],
        contexts=[] if ctx is None else [
            Context(rank=int(r["rank"]), value=float(r["value"]), doc=int(r["doc"]), subset=str(r["subset"]),
                    tokens=[str(t) for t in r["tokens"]], peak=int(r["peak"])) for _, r in records(ctx)],
        top_tokens=[] if toks is None else [TopToken(token=str(r["token"]), count=int(r["count"]))
                                             for _, r in records(toks)],
        cooc_partners=None if partners is None else [CoocPartner(**x) for x in partners],
        crystals=crystals, act_hist=hist, lobes=lobes,
        neuronpedia=neuronpedia_url(store, atlas, layer, feature),
    )


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
