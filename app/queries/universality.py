"""Universality answers (METHODS 5): the comparisons served, one comparison's layer-by-layer
matrices, the paired features of a layer pair, the semantic-subspace table.

A comparison names its two atlases by the folder it was computed from (``manifest.a.path``).
A pair's feature ids are latents of an SAE, so any served atlas of the same SAEs shows those
features: ``side`` links each side to the served atlas that is that very folder (symlinks
resolved), else one of the same folder name, else one of the same model whose compared layers
carry the same SAE sources; a match by name or by SAEs is said in ``note``, and so is no match.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import get_args
from urllib.parse import urlencode

import numpy as np

from analysis.atlas import AtlasError
from analysis.universality import AtlasRef
from app.data import AtlasStore, BadParameter, UnknownAtlas, UnknownItem
from app.models import (ComparisonDetail, ComparisonSide, ComparisonSummary, Context, FeaturePair,
                        LayerPairStats, PairFeature, Pairs, PairSort, SubspaceRow, Subspaces, TopToken)

MAX_LIMIT = 500
SORTS = get_args(PairSort)
N_TOP = 5


def _num(v) -> float | None:
    v = None if v is None else float(v)
    return None if v is None or math.isnan(v) else v


def _same_saes(store: AtlasStore, name: str, ref: AtlasRef) -> bool:
    m = store.open(name).manifest
    if m.model.name != ref.model:
        return False
    by_layer = {li.layer: li.sae.source for li in m.layers}
    return all(by_layer.get(L) == ref.saes.get(str(L)) for L in ref.layers)


def side(store: AtlasStore, ref: AtlasRef) -> ComparisonSide:
    """One side of a comparison with the served atlas of its features (or a note why none)."""
    atlas, note = None, None
    paths = store.paths()
    target = Path(ref.path).resolve()
    usable = []
    for n in store.names():
        try:
            store.open(n)
            usable.append(n)
        except (UnknownAtlas, AtlasError):
            continue
    same_folder = [n for n in usable if paths[n].resolve() == target]
    if same_folder:
        atlas = same_folder[0]
    elif target.name in usable and _same_saes(store, target.name, ref):
        atlas, note = target.name, f"served as {target.name!r} (the same name and SAEs; not the folder compared)"
    else:
        same = [n for n in usable if _same_saes(store, n, ref)]
        if same:
            atlas = same[0]
            note = (f"atlas {target.name!r} is not served; its features are shown from {atlas!r}, an atlas of the "
                    "same SAEs (top tokens and contexts from that atlas's corpus)")
        else:
            note = f"atlas {target.name!r} ({ref.model}) is not served here: its features have no cards"
    return ComparisonSide(path=ref.path, title=ref.title, model=ref.model, tokenizer=ref.tokenizer,
                          layers=list(ref.layers), widths={int(k): v for k, v in ref.widths.items()},
                          saes={int(k): v for k, v in ref.saes.items()}, atlas=atlas, note=note)


def summaries(store: AtlasStore) -> list[ComparisonSummary]:
    """Every comparison served; one that fails validation is listed with its error."""
    out = []
    for name in store.comparison_names():
        try:
            m = store.comparison(name).manifest
        except AtlasError as e:
            out.append(ComparisonSummary(name=name, error=str(e)))
            continue
        out.append(ComparisonSummary(name=name, title=m.title, a=side(store, m.a), b=side(store, m.b)))
    return out


def _matrix(c, name: str) -> list[list[float | None]]:
    return [[_num(v) for v in row] for row in np.asarray(c.array(name), dtype=np.float64)]


def detail(store: AtlasStore, name: str) -> ComparisonDetail:
    c = store.comparison(name)
    m = c.manifest
    stats = []
    for r in store.comparison_memo(name, "summary", lambda c: c.summary()).get("pairs", []):
        keys = set(LayerPairStats.model_fields) - {"counts"}
        stats.append(LayerPairStats(
            **{k: _num(r.get(k)) if k not in ("layer_a", "layer_b", "n_pairs", "n_shuffles") else r.get(k)
               for k in keys},
            counts={k: v for k, v in r.items() if k not in keys and isinstance(v, (int, float))}))
    return ComparisonDetail(
        name=name, title=m.title, a=side(store, m.a), b=side(store, m.b), created=m.created, corpus=m.corpus,
        alignment=m.alignment.model_dump(), settings=m.configs.get("compare", {}), notes=m.notes,
        svcca=_matrix(c, "svcca"), svcca_p=_matrix(c, "svcca_p"), rsa=_matrix(c, "rsa"), rsa_p=_matrix(c, "rsa_p"),
        n_pairs=np.asarray(c.array("n_pairs")).astype(int).tolist(), layer_pairs=stats)


def check_layer_pair(store: AtlasStore, name: str, layer_a: int, layer_b: int) -> None:
    m = store.comparison(name).manifest
    if layer_a not in m.a.layers or layer_b not in m.b.layers:
        raise UnknownItem(f"comparison {name!r} has no layer pair {layer_a}-{layer_b} "
                          f"(layers of A: {', '.join(map(str, m.a.layers))}; of B: {', '.join(map(str, m.b.layers))})")


def _table(store: AtlasStore, name: str, layer_a: int, layer_b: int):
    check_layer_pair(store, name, layer_a, layer_b)
    return store.comparison_memo(name, ("pairs", layer_a, layer_b), lambda c: c.pairs(layer_a, layer_b))


def _matches(tab, q: str) -> np.ndarray:
    """Rows whose feature id (``#12`` or ``12``) or one of whose comparison top tokens matches ``q``."""
    q = q.strip().lower()
    ids = q.lstrip("#")
    if ids.isdigit():
        return (tab["feature_a"].to_numpy() == int(ids)) | (tab["feature_b"].to_numpy() == int(ids))
    return np.array([any(q in str(t).lower() for t in list(ta) + list(tb))
                     for ta, tb in zip(tab["tokens_a"], tab["tokens_b"])], dtype=bool)


def _feature(store: AtlasStore, atlas: str | None, layer: int, feature: int, tokens) -> PairFeature:
    out = PairFeature(feature=feature, compare_tokens=[str(t) for t in tokens])
    if atlas is None:
        return out
    try:
        store.check_feature(atlas, layer, feature)
    except UnknownItem:
        return out   # the served atlas of these SAEs lacks this layer or feature: no card to open
    toks = store.rows_of(atlas, layer, "top_tokens.parquet", feature)
    if toks is not None:
        out.top_tokens = [TopToken(token=str(r["token"]), count=int(r["count"])) for _, r in toks.head(N_TOP).iterrows()]
    ctx = store.rows_of(atlas, layer, "contexts.parquet", feature)
    if ctx is not None and len(ctx):
        r = ctx.iloc[0]
        out.context = Context(rank=int(r["rank"]), value=float(r["value"]), doc=int(r["doc"]), subset=str(r["subset"]),
                              tokens=[str(t) for t in r["tokens"]], peak=int(r["peak"]))
    out.link = "?" + urlencode({"atlas": atlas, "layer": layer, "f": feature})
    return out


def pairs(store: AtlasStore, name: str, layer_a: int, layer_b: int, offset: int = 0, limit: int = 50,
          sort: str = "-corr", min_corr: float | None = None, kept: bool = True, q: str | None = None) -> Pairs:
    """A page of the pairs of layer pair ``layer_a``-``layer_b``: kept pairs only unless ``kept`` is
    False, correlation at least ``min_corr``, matching ``q`` (a feature id or a token), sorted."""
    if sort not in SORTS:
        raise BadParameter(f"sort: {str(sort)[:40]!r}; use one of {', '.join(SORTS)}")
    tab = _table(store, name, layer_a, layer_b)
    m = store.comparison(name).manifest
    keep = np.ones(len(tab), dtype=bool)
    if kept:
        keep &= tab["kept"].to_numpy()
    if min_corr is not None:
        keep &= tab["corr"].to_numpy() >= min_corr
    if q and q.strip():
        keep &= _matches(tab, q)
    rows = tab[keep]
    col = sort.lstrip("-")
    rows = rows.sort_values([col, "feature_b"], ascending=[not sort.startswith("-"), True], kind="stable")
    page = rows.iloc[offset:offset + limit]
    atlas_a, atlas_b = side(store, m.a).atlas, side(store, m.b).atlas
    out = [_pair_of(store, r, atlas_a, atlas_b, layer_a, layer_b) for _, r in page.iterrows()]
    return Pairs(comparison=name, layer_a=layer_a, layer_b=layer_b, atlas_a=atlas_a, atlas_b=atlas_b,
                 total=int(keep.sum()), offset=offset, limit=limit, sort=sort, pairs=out)


def pair(store: AtlasStore, name: str, layer_a: int, layer_b: int, feature_b: int) -> FeaturePair:
    """The pair of B feature ``feature_b`` (its best A feature), kept or not."""
    tab = _table(store, name, layer_a, layer_b)
    hit = tab[tab["feature_b"].to_numpy() == feature_b]
    if not len(hit):
        raise UnknownItem(f"layer {layer_b} of B in comparison {name!r} has no feature {feature_b} "
                          f"(features 0..{int(tab['feature_b'].max())})")
    m = store.comparison(name).manifest
    return _pair_of(store, hit.iloc[0], side(store, m.a).atlas, side(store, m.b).atlas, layer_a, layer_b)


def _pair_of(store: AtlasStore, r, atlas_a: str | None, atlas_b: str | None, layer_a: int, layer_b: int) -> FeaturePair:
    return FeaturePair(corr=round(float(r["corr"]), 4), kept=bool(r["kept"]), punctuation=bool(r["punctuation"]),
                       shared_token=bool(r["shared_token"]),
                       a=_feature(store, atlas_a, layer_a, int(r["feature_a"]), r["tokens_a"]),
                       b=_feature(store, atlas_b, layer_b, int(r["feature_b"]), r["tokens_b"]))


def subspaces(store: AtlasStore, name: str, layer_a: int | None = None, layer_b: int | None = None) -> Subspaces:
    """The keyword groups' SVCCA and RSA per layer pair (all pairs, or the one given)."""
    if layer_a is not None or layer_b is not None:
        if layer_a is None or layer_b is None:
            raise BadParameter("give both layer_a and layer_b, or neither")
        check_layer_pair(store, name, layer_a, layer_b)
    tab = store.comparison_memo(name, "subspaces", lambda c: c.subspaces())
    if layer_a is not None:
        tab = tab[(tab["layer_a"] == layer_a) & (tab["layer_b"] == layer_b)]
    rows = [SubspaceRow(layer_a=int(r["layer_a"]), layer_b=int(r["layer_b"]), group=str(r["group"]), n_a=int(r["n_a"]),
                        n_b=int(r["n_b"]), n_pairs=int(r["n_pairs"]), svcca=_num(r["svcca"]), svcca_p=_num(r["svcca_p"]),
                        rsa=_num(r["rsa"]), rsa_p=_num(r["rsa_p"]), n_shuffles=int(r["n_shuffles"]),
                        skipped=str(r["skipped"] or "")) for _, r in tab.iterrows()]
    groups = store.comparison_memo(name, "summary", lambda c: c.summary()).get("keyword_groups", {})
    return Subspaces(comparison=name, keyword_groups=groups, rows=rows)
