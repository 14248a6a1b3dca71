"""A selection of features - ids and ranges, or the members of one lobe - as a table."""
from __future__ import annotations

import io
import re
from typing import Literal

import numpy as np

from app.data import AtlasStore, BadParameter, UnknownItem
from app.queries.layers import lobe_labels

Format = Literal["csv", "parquet"]
MEDIA_TYPES = {"csv": "text/csv", "parquet": "application/vnd.apache.parquet"}


def parse_features(spec: str, n: int) -> np.ndarray:
    """``"1,2,5-9"`` -> sorted unique ids; BadParameter on malformed or out-of-range ids."""
    out: list[int] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        m = re.fullmatch(r"(\d{1,9})(?:-(\d{1,9}))?", part)
        if not m:
            raise BadParameter(f"features: {part[:30]!r} is not an id or a range like 5-9")
        lo, hi = int(m[1]), int(m[2] or m[1])
        if hi < lo or hi >= n:
            raise BadParameter(f"features: {part!r} is outside 0..{n - 1}")
        out.extend(range(lo, hi + 1))
    return np.unique(np.asarray(out, dtype=np.int64))


def parse_lobe(store: AtlasStore, atlas: str, layer: int, spec: str) -> np.ndarray:
    """``"phi:8:3"`` (affinity:k:lobe) -> the ids of lobe 3 of the phi lobes with k=8."""
    m = re.fullmatch(r"([a-z_]{1,20}):(\d{1,5}):(-?\d{1,5})", spec.strip())
    if not m:
        raise BadParameter(f"lobe: {spec[:40]!r} is not affinity:k:lobe, e.g. phi:8:3")
    ids = np.flatnonzero(lobe_labels(store, atlas, layer, m[1], int(m[2])) == int(m[3]))
    if not len(ids):
        raise UnknownItem(f"{m[1]} lobes with k={m[2]} of layer {layer} have no lobe {m[3]}")
    return ids


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


def file_name(atlas: str, layer: int, lobe: str, format: str) -> str:
    """The download's name: ``<atlas>-layer<L>-features.csv`` or ``...-lobe-phi-8-3.csv``."""
    lobe = lobe.strip()
    what = "lobe-" + lobe.replace(":", "-") if lobe else "features"
    return f"{atlas}-layer{layer}-{what}.{format}"


def export(store: AtlasStore, atlas: str, layer: int, features: str = "", lobe: str = "",
           format: Format = "csv", layout: str = "pca") -> tuple[bytes | str, str]:
    """The file for a selection (``features`` ids and ranges, or a ``lobe``; neither: every
    feature) and its file name."""
    n = store.n_features(atlas, layer)
    features, lobe = features.strip(), lobe.strip()
    if features and lobe:
        raise BadParameter("give features or lobe, not both")
    if lobe:
        sel = parse_lobe(store, atlas, layer, lobe)
    else:
        sel = parse_features(features, n) if features else np.arange(n)
    df = selection_table(store, atlas, layer, sel, layout)
    name = file_name(atlas, layer, lobe, format)
    if format == "csv":
        return df.to_csv(index=False), name
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue(), name
