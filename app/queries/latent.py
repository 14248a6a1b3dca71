"""Latent-geometry answers (METHODS 4): the 3-D cloud of captured states, norms, separation, a
token in its document. All read ``latent/`` of an atlas (docs/atlas.md, "Latent geometry").

Points are addressed by capture slot (a row of ``manifest.latent.captures``) and sample token
(a row of ``latent/sample.npy``). ``cloud`` answers with numpy arrays for the explorer; the
API's ``points`` turns the same arrays into a model.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analysis.latent import EMBED, FINAL_NORM, KINDS, slot_of
from app.data import AtlasStore, BadParameter, UnknownItem
from app.models import (LatentNorms, LatentNormSlot, LatentPoints, LatentSeparation, LatentSummary, LatentToken,
                        LayerSeparation, SeparationScores)

# kinds of the all-layers view, in depth order (resid_pre is stored as the previous resid_post)
GLOBAL_KINDS = ("embed", "attn_out", "resid_mid", "mlp_out", "resid_post", "final_norm")
CONTEXT = 12   # tokens shown on each side of a clicked token


def slot_kind(name: str, n_layers: int) -> tuple[str, int]:
    """``(kind, depth)`` of a capture slot name: depth -1 is the embedding, ``n_layers`` the final norm."""
    if name == EMBED:
        return "embed", -1
    if name == FINAL_NORM:
        return "final_norm", n_layers
    block, hook = name.split(".hook_")
    return hook, int(block.split(".")[1])


def n_layers(store: AtlasStore, atlas: str) -> int:
    return store.open(atlas).manifest.model.n_layers


def check_layer(store: AtlasStore, atlas: str, layer: int) -> None:
    n = n_layers(store, atlas)
    store.latent(atlas)
    if not 0 <= layer < n:
        raise UnknownItem(f"the latent capture of atlas {atlas!r} has layers 0..{n - 1}; there is no layer {layer}")


def summary(store: AtlasStore, atlas: str) -> LatentSummary:
    lat = store.latent(atlas)
    m = store.open(atlas).manifest
    return LatentSummary(atlas=atlas, model=m.model.name, n_layers=m.model.n_layers, captures=lat.captures,
                         kinds=list(KINDS), tensors=lat.tensors, n_docs=lat.n_docs, n_positions=lat.n_positions,
                         bos=lat.bos, sample_tokens=lat.sample_tokens, umap_tokens=lat.umap_tokens,
                         projections=store.latent_projections(atlas))


@dataclass
class Cloud:
    """The points of one latent view, capture-major: point ``i`` is capture ``slots[i // n_tokens]``
    of sample token ``i % n_tokens``."""
    xyz: np.ndarray          # float32 [N, 3]
    slots: list[int]         # the captures shown, in point order
    kinds: list[str]         # kind of each capture shown
    depths: list[int]        # block of each capture shown
    n_tokens: int
    sample: np.ndarray       # int32 [n_tokens, 2]: (document, position) of each token

    def point(self, slot: int, sample: int) -> int | None:
        """Index of the point of (slot, sample), or None when this view does not show it."""
        if slot not in self.slots or not 0 <= sample < self.n_tokens:
            return None
        return self.slots.index(slot) * self.n_tokens + sample

    def at(self, index: int) -> tuple[int, int]:
        """``(slot, sample)`` of point ``index``."""
        return self.slots[index // self.n_tokens], index % self.n_tokens


def cloud(store: AtlasStore, atlas: str, layer: int | None, projection: str = "pca",
          max_tokens: int | None = None) -> Cloud:
    """The captures of block ``layer`` (its own PCA or UMAP), or of every layer (``None``: one
    PCA of them all), for the first ``max_tokens`` sample tokens (all when None)."""
    lat = store.latent(atlas)
    n = n_layers(store, atlas)
    sample = np.asarray(store.latent_array(atlas, "sample.npy"))
    if projection not in ("pca", "umap"):
        raise BadParameter(f"projection: {str(projection)[:40]!r}; use pca or umap")
    if layer is None:
        if projection != "pca":
            raise BadParameter("projection: umap is computed per layer; give a layer, or use pca for all layers")
        coords = store.latent_array(atlas, "pca_global.npy")                     # [K, S, c]
        slots = list(range(len(lat.captures)))
        kinds, depths = zip(*(slot_kind(c, n) for c in lat.captures))
    else:
        check_layer(store, atlas, layer)
        if projection == "umap":
            if "umap" not in store.latent_projections(atlas):
                raise UnknownItem(f"the latent capture of atlas {atlas!r} has no UMAP (umap_tokens was 0)")
            coords = store.latent_array(atlas, "umap_layer.npy")[layer]         # [5, U, 3]
        else:
            coords = store.latent_array(atlas, "pca_layer.npy")[layer]          # [5, S, c]
        slots = [slot_of(n, layer, kind) for kind in KINDS]
        kinds, depths = KINDS, [layer] * len(KINDS)
    T = coords.shape[1] if max_tokens is None else max(0, min(int(max_tokens), coords.shape[1]))
    xyz = np.zeros((len(slots), T, 3), dtype=np.float32)
    c = min(3, coords.shape[2])
    xyz[:, :, :c] = coords[:, :T, :c]
    return Cloud(xyz.reshape(-1, 3), slots, list(kinds), list(depths), T, sample[:T])


def points(store: AtlasStore, atlas: str, layer: int | None, projection: str = "pca",
           max_tokens: int | None = None) -> LatentPoints:
    cl = cloud(store, atlas, layer, projection, max_tokens)
    T, K = cl.n_tokens, len(cl.slots)

    def each(values) -> list:
        return np.repeat(np.asarray(values), T).tolist()

    return LatentPoints(atlas=atlas, layer=layer, projection=projection, n=len(cl.xyz), n_tokens=T,
                        x=cl.xyz[:, 0].tolist(), y=cl.xyz[:, 1].tolist(), z=cl.xyz[:, 2].tolist(),
                        slot=each(cl.slots), kind=each(cl.kinds), depth=each(cl.depths),
                        sample=np.tile(np.arange(T), K).tolist(), doc=np.tile(cl.sample[:, 0], K).tolist(),
                        position=np.tile(cl.sample[:, 1], K).tolist())


def norms(store: AtlasStore, atlas: str) -> LatentNorms:
    """Per capture slot: median and 90th percentile norm (positions >= 1), the position-0 norm
    and their ratio; and the median norm at every position."""
    lat = store.latent(atlas)
    n = n_layers(store, atlas)
    js = store.latent_summary(atlas).get("norms") or {}
    by_pos = store.latent_position_norms(atlas)
    slots = []
    for k, name in enumerate(lat.captures):
        kind, depth = slot_kind(name, n)
        row = js.get(name) or {}
        slots.append(LatentNormSlot(slot=k, capture=name, kind=kind, depth=depth,
                                    **{f: float(row.get(f, np.nan)) for f in ("median", "p90", "pos0", "pos0_ratio")}))
    return LatentNorms(atlas=atlas, slots=slots,
                       by_position=[[None if not np.isfinite(v) else float(v) for v in row] for row in by_pos])


def separation(store: AtlasStore, atlas: str) -> LatentSeparation:
    js = store.latent_summary(atlas)
    layers = []
    for L, row in enumerate(js.get("separation") or []):
        layers.append(LayerSeparation(layer=L, **{
            part: SeparationScores(**{f: float(row[part][f]) for f in SeparationScores.model_fields})
            for part in ("raw", "unit")}))
    return LatentSeparation(atlas=atlas, tokens=js.get("separation_tokens"), layers=layers)


def token(store: AtlasStore, atlas: str, sample: int, slot: int | None = None, window: int = CONTEXT) -> LatentToken:
    """Sample token ``sample`` in its document: ``window`` tokens on each side, and the norm
    of capture ``slot`` there."""
    lat = store.latent(atlas)
    S = np.asarray(store.latent_array(atlas, "sample.npy"))
    if not 0 <= sample < len(S):
        raise UnknownItem(f"the latent capture of atlas {atlas!r} has sample tokens 0..{len(S) - 1}; "
                          f"there is no token {sample}")
    if slot is not None and not 0 <= slot < len(lat.captures):
        raise UnknownItem(f"the latent capture of atlas {atlas!r} has capture slots 0..{len(lat.captures) - 1}; "
                          f"there is no slot {slot}")
    d, p = (int(v) for v in S[sample])
    row = store.latent_docs(atlas).iloc[d]
    toks = [str(t) for t in row["tokens"]]
    lo, hi = max(0, p - window), min(len(toks), p + window + 1)
    norm = None
    if slot is not None:
        v = float(store.latent_array(atlas, "norms.npy")[slot, d, p])
        norm = v if np.isfinite(v) else None
    return LatentToken(atlas=atlas, sample=sample, slot=slot, capture=None if slot is None else lat.captures[slot],
                       norm=norm, doc=d, corpus_doc=int(row["doc"]), subset=str(row["subset"]), position=p,
                       token=toks[p] if p < len(toks) else "", tokens=toks[lo:hi], peak=p - lo, start=lo)
