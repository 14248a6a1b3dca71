"""Level of detail of a wide layer: which features are points, and the density of the rest.

One rule for the explorer's cloud (app.views.cloud draws ``Detail.points`` as points and
``Detail.density`` as grey cells) and for the JSON API's ``points`` route (which answers the
same selection, or one of a lobe or a box, as ids and cells). A layer of at most
``POINT_BUDGET`` features is whole; a wider one keeps ``POINT_BUDGET`` of them, stratified
by the cells of a ``GRID``³ grid over its scene box, most frequent first.
"""
from __future__ import annotations

import numpy as np

from app.data import AtlasStore

# A layer of at most POINT_BUDGET features is drawn whole, as it always was (the demo's
# layers are 4,096 wide); a wider one draws POINT_BUDGET points plus density. A point costs
# ~24 bytes of typed arrays and its hover tokens ~20-35 more: 6,144 points keep a figure
# near 0.35-0.4 MB with room for long tokens (8,192 with three short tokens each were
# 0.45 MB, a 16,384-point cloud 0.6-0.9 MB), and software WebGL draws them in a fraction of
# the page's own start-up.
POINT_BUDGET = 6_144
GRID = 24            # density cells per axis of the scene box


def scene_box(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Axis ranges ``(lo, hi)`` and aspect ratio of the scene box around the points.

    Fixed here rather than left to plotly's autorange so that the server can place the
    camera: plotly's normalised scene coordinates put the box centre at 0 and scale axis i
    to span ``aspect[i]``. The 1/32 margin is plotly's own autorange padding; the aspect
    ratio is that of ``aspectmode="data"`` (proportional to the ranges, geometric mean 1).
    """
    lo, hi = np.nanmin(xyz, axis=0).astype(float), np.nanmax(xyz, axis=0).astype(float)
    span = np.where(hi > lo, hi - lo, 2.0)
    lo, hi = lo - span / 32, lo + span * 33 / 32
    span = hi - lo
    return np.stack([lo, hi]), span / np.exp(np.log(span).mean())


def normalised(p: np.ndarray, box: np.ndarray, aspect: np.ndarray) -> np.ndarray:
    """Data coordinates -> plotly's normalised scene coordinates (see ``scene_box``)."""
    return (np.asarray(p, float) - box.mean(axis=0)) / (box[1] - box[0]) * aspect


class Detail:
    """What a wide layer draws as points and as density, for one layout (kept per atlas).

    ``points``: feature ids drawn as points (trace 0), id order; ``cell``: the density cell of
    every feature; ``density``: occupied cells that hold features not drawn, as
    ``(centre xyz [C, 3], count [C], most frequent undrawn feature [C])``. Ids are row
    numbers of ``xyz``; ``subset`` maps them to other ids (``Detail.of``).
    """

    def __init__(self, xyz: np.ndarray, freq: np.ndarray | None, budget: int, grid: int = GRID):
        n = len(xyz)
        box, _ = scene_box(xyz)
        ijk = np.floor((xyz - box[0]) / (box[1] - box[0]) * grid)
        ijk = np.clip(np.nan_to_num(ijk, nan=0), 0, grid - 1).astype(np.int64)
        self.cell = (ijk[:, 0] * grid + ijk[:, 1]) * grid + ijk[:, 2]
        self.n = n
        if n <= budget:
            self.points = np.arange(n, dtype=np.int32)
            self.density = (np.zeros((0, 3), np.float32), np.zeros(0, np.int32), np.zeros(0, np.int32))
            return
        # Stratified by cell, most frequent first: a feature's score is its rank among its
        # cell's features by frequency over the cell's size, so every region keeps its share
        # of points (the cloud keeps its shape) and each occupied cell its most frequent one.
        f = np.zeros(n) if freq is None else np.asarray(freq, dtype=np.float64)
        order = np.lexsort((np.arange(n), -f, self.cell))
        cells, start, count = np.unique(self.cell[order], return_index=True, return_counts=True)
        rank = np.arange(n) - np.repeat(start, count)
        score = np.empty(n)
        score[order] = rank / np.repeat(count, count)
        pick = np.lexsort((np.arange(n), -f, score))[:budget]
        self.points = np.sort(pick).astype(np.int32)
        rest = np.ones(n, bool)
        rest[self.points] = False
        self.density = self._density(xyz, f, rest)

    def _density(self, xyz: np.ndarray, f: np.ndarray, rest: np.ndarray):
        ids = np.flatnonzero(rest)
        order = ids[np.lexsort((ids, -f[ids], self.cell[ids]))]
        cells, start, count = np.unique(self.cell[order], return_index=True, return_counts=True)
        centre = np.stack([np.add.reduceat(xyz[order, i].astype(np.float64), start) / count for i in range(3)], 1)
        return centre.astype(np.float32), count.astype(np.int32), order[start].astype(np.int32)

    @classmethod
    def of(cls, xyz: np.ndarray, freq: np.ndarray | None, budget: int, subset: np.ndarray,
           grid: int = GRID) -> "Detail":
        """The detail of the features ``subset`` (sorted ids into ``xyz``) alone: its grid
        spans their own box, so a small region gets cells as fine as the whole layer's.
        ``points``, the density's features and ``cell`` (per feature of ``subset``) as ids."""
        d = cls(xyz[subset], None if freq is None else np.asarray(freq)[subset], budget, grid)
        subset = np.asarray(subset, dtype=np.int32)
        d.points = subset[d.points]
        d.density = (d.density[0], d.density[1], subset[d.density[2]])
        return d

    @property
    def whole(self) -> bool:
        """Every feature is a point (no density)."""
        return len(self.points) == self.n


def detail(store: AtlasStore, atlas: str, layer: int, layout: str, budget: int = POINT_BUDGET) -> Detail | None:
    """The level of detail of a whole layer in ``layout`` (kept per atlas); None when the
    layout was not computed."""
    xyz = store.coords(atlas, layer, layout)
    if xyz is None:
        return None
    fr = store.frequency(atlas, layer)
    return store.memo(atlas, ("cloud-detail", layer, layout, budget, GRID),
                      lambda a: Detail(xyz, None if fr is None else fr[1], budget))
