"""Layer-level answers: the point cloud, its lobes, its crystal faces and the atom summary."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from analysis.artefacts import Atom, BrainRow
from app.data import AtlasStore, BadParameter, UnknownItem
from app.models import AtomSummary, Crystal, Density, LobeLabels, LobeRow, Lobes, Points
from app.queries import lod


def lobe_labels(store: AtlasStore, atlas: str, layer: int, affinity: str, k: int) -> np.ndarray:
    """The lobe of every feature at (affinity, k); UnknownItem naming the k computed if none."""
    labels = store.lobes(atlas, layer, affinity, k)
    if labels is None:
        ks = store.lobe_options(atlas, layer).get(affinity)
        raise UnknownItem(f"no {affinity} lobes with k={k} in layer {layer} (computed: {ks or 'none'})")
    return labels


AXES = "xyz"


def points(store: AtlasStore, atlas: str, layer: int, layout: str = "pca", affinity: str = "phi",
           k: int | None = None, max_points: int = lod.POINT_BUDGET, lobe: int | None = None,
           box: Sequence[tuple[float | None, float | None]] | None = None) -> Points:
    """Coordinates, firing counts and (with k, or the smallest k computed) lobe labels of a
    layer's features at a level of detail (app.queries.lod, the explorer's cloud's rule).

    The selection is the layer, or its features of lobe ``lobe`` (at affinity, k) and/or
    those within ``box`` (per axis x, y, z an inclusive ``(lo, hi)`` range of the layout's
    coordinates, None = unbounded). A selection of at most ``max_points`` features is answered
    whole; a larger one as ``max_points`` points, the most frequent of each cell of a grid
    over the selection's own box (so a box zoomed in gets finer cells), and the rest as density
    cells. ``UnknownItem`` for an unknown layout, k or lobe, or a box holding no feature;
    ``BadParameter`` for a box with a range the wrong way round or not finite.
    """
    xyz = store.coords(atlas, layer, layout)
    if xyz is None:
        raise UnknownItem(f"layout {layout!r} was not computed for layer {layer} of atlas {atlas!r}")
    fr = store.frequency(atlas, layer)
    ks = store.lobe_options(atlas, layer).get(affinity)
    if k is not None:
        lobe_labels(store, atlas, layer, affinity, k)
    kk = k if k is not None else (ks[0] if ks else None)
    labels = store.lobes(atlas, layer, affinity, kk) if kk is not None else None
    keep = None
    if lobe is not None:
        if labels is None:
            raise UnknownItem(f"no {affinity} lobes were computed for layer {layer}, so there is no lobe {lobe}")
        found = np.unique(labels)
        if lobe not in found:
            live = found[found >= 0]
            raise UnknownItem(f"no lobe {lobe} among the {affinity} lobes with k={kk} of layer {layer} "
                              f"(lobes {int(live.min()) if live.size else '-'} to {int(live.max()) if live.size else '-'}"
                              f"{', and -1 for dead or excluded features' if (found < 0).any() else ''})")
        keep = labels == lobe
    if box is not None and any(r is not None for rng in box for r in rng):
        inside = in_box(xyz, box)
        if not (inside if keep is None else inside & keep).any():
            lo, hi = np.nanmin(xyz, axis=0), np.nanmax(xyz, axis=0)
            span = ", ".join(f"{a} {lo[i]:.4g} to {hi[i]:.4g}" for i, a in enumerate(AXES))
            raise UnknownItem(f"no feature of layer {layer}{f' in lobe {lobe}' if lobe is not None else ''} "
                              f"lies in the box {describe_box(box)} ({layout} coordinates span {span})")
        keep = inside if keep is None else keep & inside
    freq = None if fr is None else fr[1]
    if keep is None:
        d = lod.detail(store, atlas, layer, layout, max_points) if max_points == lod.POINT_BUDGET else \
            lod.Detail(xyz, freq, max_points)
    else:
        d = lod.Detail.of(xyz, freq, max_points, np.flatnonzero(keep))
    ids = d.points
    lobes = None
    if labels is not None:
        lobes = LobeLabels(affinity=affinity, k=kk, labels=labels[ids].tolist(),
                           names=store.lobe_names(atlas, layer, affinity, kk))
    density = None
    if not d.whole:
        centre, count, rep = d.density
        density = Density(grid=lod.GRID, x=float32s(centre[:, 0]), y=float32s(centre[:, 1]),
                          z=float32s(centre[:, 2]), count=count.tolist(), feature=rep.tolist())
    return Points(atlas=atlas, layer=layer, layout=layout, n=len(xyz), n_selected=d.n, complete=d.whole,
                  ids=ids.tolist(), x=float32s(xyz[ids, 0]), y=float32s(xyz[ids, 1]), z=float32s(xyz[ids, 2]),
                  fire_count=fr[0][ids].tolist() if fr else None, frequency=fr[1][ids].tolist() if fr else None,
                  lobes=lobes, density=density)


def float32s(a: np.ndarray) -> list[float]:
    """float32 values as Python floats that print in float32's shortest form (``0.1234567``,
    not ``0.12345670163631439``): read back as float32 they are the same numbers, in about
    half the JSON."""
    return [float(v) for v in np.asarray(a, dtype=np.float32).astype(str)]


def check_box(box: Sequence[tuple[float | None, float | None]]) -> None:
    """BadParameter unless every bound given is finite and each range runs low to high."""
    for a, (lo, hi) in zip(AXES, box):
        for name, v in ((f"{a}_min", lo), (f"{a}_max", hi)):
            if v is not None and not np.isfinite(v):
                raise BadParameter(f"{name} must be a finite number, got {v}")
        if lo is not None and hi is not None and lo > hi:
            raise BadParameter(f"empty box: {a}_min {lo:g} is above {a}_max {hi:g}")


def in_box(xyz: np.ndarray, box: Sequence[tuple[float | None, float | None]]) -> np.ndarray:
    """Boolean [F]: the features whose coordinates lie in ``box`` (bounds inclusive)."""
    check_box(box)
    inside = np.ones(len(xyz), dtype=bool)
    for i, (lo, hi) in enumerate(box):
        if lo is not None:
            inside &= xyz[:, i] >= lo
        if hi is not None:
            inside &= xyz[:, i] <= hi
    return inside


def describe_box(box: Sequence[tuple[float | None, float | None]]) -> str:
    return ", ".join(f"{a} {'-inf' if lo is None else f'{lo:g}'} to {'inf' if hi is None else f'{hi:g}'}"
                     for a, (lo, hi) in zip(AXES, box) if lo is not None or hi is not None)


def lobes(store: AtlasStore, atlas: str, layer: int, affinity: str, k: int) -> Lobes:
    """Size, name and corpus-subset tally of every lobe at (affinity, k), with its statistics."""
    lab = lobe_labels(store, atlas, layer, affinity, k)
    names = store.lobe_names(atlas, layer, affinity, k)
    subsets: dict[int, dict[str, int]] = {}
    ls = store.table(atlas, layer, "lobe_subsets.parquet")
    if ls is not None:
        t = ls[(ls["affinity"] == affinity) & (ls["k"] == k)]
        for lobe, s, b in zip(t["lobe"], t["subset"], t["blocks"]):
            subsets.setdefault(int(lobe), {})[str(s)] = int(b)
    ids, sizes = np.unique(lab[lab >= 0], return_counts=True)
    return Lobes(atlas=atlas, layer=layer, affinity=affinity, k=k, stats=lobe_stats(store, atlas, layer, affinity, k),
                 lobes=[LobeRow(lobe=int(i), size=int(s), name=names.get(int(i), ""), subsets=subsets.get(int(i), {}))
                        for i, s in zip(ids, sizes)])


def lobe_stats(store: AtlasStore, atlas: str, layer: int, affinity: str, k: int) -> BrainRow | None:
    """The brain.json record for (affinity, k): AMI against geometry, regression accuracy, z-scores."""
    brain = store.layer(atlas, layer).brain(layer)
    return brain.row(affinity, k) if brain is not None else None


def records(tab):
    """(index, row as a dict) for each row of a table: pandas' ``iterrows`` builds a Series per
    row, which was a tenth of the server's CPU when cards were clicked."""
    return zip(tab.index, tab.to_dict("records"))


def crystal(index, row) -> Crystal:
    """Row ``index`` of crystals.parquet (a dict or a pandas row) as a Crystal; NaN quality numbers become None."""
    def num(col):
        return float(row[col]) if col in row and row[col] == row[col] else None

    return Crystal(index=int(index), a=int(row["a"]), b=int(row["b"]), c=int(row["c"]), d=int(row["d"]),
                   kind=str(row["kind"]), edge_cos=num("edge_cos"), length_ratio=num("length_ratio"),
                   closing_error=num("closing_error"))


def crystals(store: AtlasStore, atlas: str, layer: int, min_cos: float = 0.0, limit: int = 500) -> list[Crystal]:
    """Crystal faces with an edge cosine of at least ``min_cos``, in file order."""
    tab = store.crystals(atlas, layer)
    if tab is None:
        raise UnknownItem(f"crystals were not computed for layer {layer} of atlas {atlas!r}")
    if "edge_cos" in tab:
        tab = tab[tab["edge_cos"] >= min_cos]
    return [crystal(i, r) for i, r in records(tab.head(limit))]


def best_faces(tab, n: int = 15):
    """The ``n`` best faces of a crystals table: highest edge cosine, then smallest closing error."""
    by = [c for c in ("edge_cos", "closing_error") if c in tab]
    if by:
        tab = tab.sort_values(by, ascending=[c != "edge_cos" for c in by], kind="stable")
    return tab.head(n)


def atom_summary(store: AtlasStore, atlas: str, layer: int, n_best: int = 15) -> AtomSummary:
    """Face counts against their random baseline, the best faces, LDA silhouettes, the distractor."""
    atom = store.layer(atlas, layer).atom(layer) or Atom()
    tab = store.crystals(atlas, layer)
    out = AtomSummary(atlas=atlas, layer=layer, baseline=atom.crystal_baseline, lda=atom.lda,
                      distractor=atom.distractor, n_pairs=atom.n_pairs)
    if tab is not None:
        out.n_faces = len(tab)
        if "kind" in tab:
            kinds = tab["kind"].astype(str)
            out.n_parallelogram = int((kinds == "parallelogram").sum())
            out.n_trapezoid = int((kinds == "trapezoid").sum())
        out.best = [crystal(i, r) for i, r in records(best_faces(tab, n_best))]
    return out
