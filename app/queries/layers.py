"""Layer-level answers: the point cloud, its lobes, its crystal faces and the atom summary."""
from __future__ import annotations

import numpy as np

from analysis.artefacts import Atom, BrainRow
from app.data import AtlasStore, UnknownItem
from app.models import AtomSummary, Crystal, LobeLabels, LobeRow, Lobes, Points


def lobe_labels(store: AtlasStore, atlas: str, layer: int, affinity: str, k: int) -> np.ndarray:
    """The lobe of every feature at (affinity, k); UnknownItem naming the k computed if none."""
    labels = store.lobes(atlas, layer, affinity, k)
    if labels is None:
        ks = store.lobe_options(atlas, layer).get(affinity)
        raise UnknownItem(f"no {affinity} lobes with k={k} in layer {layer} (computed: {ks or 'none'})")
    return labels


def points(store: AtlasStore, atlas: str, layer: int, layout: str = "pca", affinity: str = "phi",
           k: int | None = None) -> Points:
    """Coordinates, firing counts and (with k, or the smallest k computed) lobe labels."""
    xyz = store.coords(atlas, layer, layout)
    if xyz is None:
        raise UnknownItem(f"layout {layout!r} was not computed for layer {layer} of atlas {atlas!r}")
    fr = store.frequency(atlas, layer)
    ks = store.lobe_options(atlas, layer).get(affinity)
    if k is not None:
        lobe_labels(store, atlas, layer, affinity, k)
    lobes = None
    if ks:
        kk = k if k is not None else ks[0]
        lobes = LobeLabels(affinity=affinity, k=kk, labels=store.lobes(atlas, layer, affinity, kk).tolist(),
                           names=store.lobe_names(atlas, layer, affinity, kk))
    return Points(atlas=atlas, layer=layer, layout=layout, n=len(xyz),
                  x=xyz[:, 0].tolist(), y=xyz[:, 1].tolist(), z=xyz[:, 2].tolist(),
                  fire_count=fr[0].tolist() if fr else None, frequency=fr[1].tolist() if fr else None, lobes=lobes)


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
