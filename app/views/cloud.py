"""The feature cloud: one layer's features as a WebGL 3-D scatter, with its overlays.

The figure always has the same seven traces, so partial updates (dash ``Patch``) can address
them by index:

    0  the features drawn as points: every feature of a layer of at most ``POINT_BUDGET``,
       else that many, the most frequent of each region (``drawn``); customdata = feature id
    1  neighbor edges of the selected feature (lines)
    2  the selected feature and its neighbors (large markers)
    3  crystal faces above the quality threshold (translucent Mesh3d)
    4  the crystal face picked from the card (opaque Mesh3d)
    5  density: one grey marker per occupied cell of a coarse 3-D grid, sized by how many
       features of the cell are not points; customdata = the most frequent of them
    6  detail: more features as points around what the user looks at (the camera's centre
       when zoomed in, else the selected feature), up to ``DETAIL_POINTS``

Traces 5 and 6 stay empty for a layer drawn whole. Every numeric array travels as a plotly
typed-array spec ``{dtype, bdata}`` (base64 of the little-endian bytes), never as a list of
Python floats; the only strings per point are the top tokens of the points drawn.
"""
from __future__ import annotations

import base64
import html as _html

import numpy as np
import plotly.graph_objects as go
from dash import Patch

from analysis.atlas import LayerFiles
from app.data import AtlasStore
from app.queries import lod
from app.queries.lod import GRID, POINT_BUDGET, Detail, normalised, scene_box  # noqa: F401 (the cloud's names)
from app.state import ViewState

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
           "#bcbd22", "#7f7f7f", "#393b79", "#e7ba52", "#637939", "#ad494a", "#7b4173", "#3182bd"]
DEAD = "#d0d0d0"
MAX_FACES = 400
N_NEIGHBORS = 10
DETAIL_POINTS = 4_096
ZOOMED_IN = 1.3      # eye-to-centre distance (scene units) below which the view counts as zoomed in
                     # (plotly's default eye is 2.17 away)
DENSITY = "#8c8c8c"


def typed(arr: np.ndarray) -> dict:
    """A plotly typed-array spec: ``{"dtype": "f4", "bdata": base64}`` (plotly.js decodes it)."""
    arr = np.ascontiguousarray(arr)
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    if arr.dtype == np.int64:
        arr = arr.astype(np.int32)
    code = {"f4": "f4", "f8": "f8", "i1": "i1", "u1": "u1", "i2": "i2", "u2": "u2", "i4": "i4", "u4": "u4"}[
        arr.dtype.newbyteorder("<").str[1:]]
    return {"dtype": code, "bdata": base64.b64encode(arr.astype(arr.dtype.newbyteorder("<")).tobytes()).decode()}


def colour_of(label: int) -> str:
    return DEAD if label < 0 else PALETTE[label % len(PALETTE)]


# --------------------------------------------------------------------------- level of detail


def detail(store: AtlasStore, st: ViewState) -> Detail:
    """The layer's points and density cells (app.queries.lod, shared with the API's points)."""
    return lod.detail(store, st.atlas, st.layer, st.layout, POINT_BUDGET)


def drawn(store: AtlasStore, st: ViewState) -> np.ndarray:
    """Feature ids of trace 0 (every feature of a small layer)."""
    return detail(store, st).points


def focus(store: AtlasStore, st: ViewState) -> np.ndarray:
    """Feature ids of trace 6: up to DETAIL_POINTS features not in trace 0 nearest to what the
    user looks at - the camera's centre when zoomed in (within the visible radius), else the
    selected feature; none for a layer drawn whole."""
    d = detail(store, st)
    if len(d.points) == d.n:
        return np.zeros(0, np.int32)
    xyz = store.coords(st.atlas, st.layer, st.layout)
    box, aspect = scene_box(xyz)
    centre = np.asarray(st.center if st.center is not None else (0.0, 0.0, 0.0), float)
    eye = np.asarray(st.eye if st.eye is not None else (1.25, 1.25, 1.25), float)
    dist = float(np.linalg.norm(eye - centre))
    if dist < ZOOMED_IN:
        radius = 0.6 * dist
    elif st.feature is not None and 0 <= st.feature < len(xyz):
        centre, radius = normalised(xyz[st.feature], box, aspect), np.inf
    else:
        return np.zeros(0, np.int32)
    r2 = (((xyz - box.mean(axis=0)) / (box[1] - box[0]) * aspect - centre) ** 2).sum(1)
    r2[d.points] = np.inf
    k = min(DETAIL_POINTS, len(r2) - 1)
    near = np.argpartition(r2, k)[:k]
    near = near[np.isfinite(r2[near]) & (r2[near] <= radius ** 2)]   # never a point of trace 0
    return np.sort(near).astype(np.int32)


def hover_tokens(store: AtlasStore, st: ViewState, ids: np.ndarray) -> list[str]:
    """The three top tokens of each feature of ``ids``, space-separated and escaped (plotly
    hover labels read a few tags; tokens are data, not markup)."""
    got = _tokens(store, st.atlas, st.layer)
    if got is None:
        return [""] * len(ids)
    keys, toks = got
    lo, hi = np.searchsorted(keys, ids, "left"), np.searchsorted(keys, ids, "right")
    return [_html.escape(" ".join(toks[a:b]).replace(chr(10), "⏎")) for a, b in zip(lo.tolist(), hi.tolist())]


def _tokens(store: AtlasStore, atlas: str, layer: int):
    """top_tokens.parquet's ranks 0-2 as (feature [R] sorted, token [R]), ranks in order within
    a feature: the tokens of any few features without a pass over every feature in Python."""
    def compute(a):
        rel = LayerFiles(layer).top_tokens
        if not a.has(rel):
            return None
        t = a.table(rel)
        t = t[t["rank"] < 3]
        f, r = t["feature"].to_numpy(np.int64), t["rank"].to_numpy(np.int64)
        order = np.lexsort((r, f))
        return f[order], t["token"].astype(str).to_numpy(object)[order]

    return store.memo(atlas, ("cloud-tokens", layer), compute)


def clicked_feature(store: AtlasStore, st: ViewState, pt: dict) -> int | None:
    """The feature a click on the cloud picked (plotly's click point), or None.

    Points of traces 0, 5 (a density cell: its most frequent feature) and 6 carry their
    feature id as customdata; a click event without it (the page's own clicks always carry
    it) falls back to the point's index into what those traces hold for this view."""
    curve, idx, cd = pt.get("curveNumber"), pt.get("pointNumber"), pt.get("customdata")
    if curve in (0, 5, 6) and isinstance(cd, (int, float)) and not isinstance(cd, bool):
        return int(cd)
    if not isinstance(idx, int) or idx < 0:
        return None
    ids = {0: lambda: drawn(store, st), 5: lambda: detail(store, st).density[2],
           6: lambda: focus(store, st)}.get(curve)
    if ids is not None:
        ids = ids()
        return int(ids[idx]) if idx < len(ids) else None
    if curve == 2 and st.feature is not None:
        nb, _ = store.neighbors(st.atlas, st.layer, st.feature, N_NEIGHBORS)
        pts = [st.feature, *map(int, nb)]
        return pts[idx] if idx < len(pts) else None
    return None


# --------------------------------------------------------------------------- colouring


def colouring(store: AtlasStore, st: ViewState, ids: np.ndarray | None = None) -> dict:
    """Marker colour settings for the points ``ids`` (default: trace 0's) and the legend
    entries ``[(label, colour, name, n)]`` (counted over every feature of the layer)."""
    ids = drawn(store, st) if ids is None else ids
    kind = st.coloring.kind
    if kind == "freq":
        fr = store.frequency(st.atlas, st.layer)
        logf = np.log10(np.maximum(fr[1], 1e-9)).astype(np.float32)
        logf[fr[0] == 0] = np.nan
        return {"marker": {"color": typed(logf[ids]), "colorscale": "Viridis", "showscale": True,
                           "colorbar": {"title": {"text": "log10 freq"}, "thickness": 12, "len": 0.6},
                           "cmin": float(np.nanmin(logf)) if np.isfinite(logf).any() else 0,
                           "cmax": float(np.nanmax(logf)) if np.isfinite(logf).any() else 1},
                "legend": []}
    if kind == "subset":
        labels = store.subset_argmax(st.atlas, st.layer)
        names = store.open(st.atlas).manifest.corpus.subsets
        legend_names = {i: n for i, n in enumerate(names)}
    else:
        aff, k = st.coloring.lobes
        labels = store.lobes(st.atlas, st.layer, aff, k)
        legend_names = store.lobe_names(st.atlas, st.layer, aff, k)
    return _discrete(labels, legend_names, ids)


def _discrete(labels: np.ndarray, names: dict[int, str], ids: np.ndarray) -> dict:
    # Colours as numbers through a stepped colour scale keep the array binary (int16).
    n = len(PALETTE)
    vals = np.where(labels < 0, n, labels % n).astype(np.int16)
    scale = []
    for i, c in enumerate(PALETTE + [DEAD]):
        scale += [[i / (n + 1), c], [(i + 1) / (n + 1), c]]
    found, counts = np.unique(labels, return_counts=True)
    legend = [(int(i), colour_of(int(i)), names.get(int(i), "") if i >= 0 else "dead / excluded", int(c))
              for i, c in zip(found, counts)]
    return {"marker": {"color": typed(vals[ids]), "colorscale": scale, "cmin": -0.5, "cmax": n + 0.5,
                       "showscale": False}, "legend": legend}


def sizes(store: AtlasStore, st: ViewState, ids: np.ndarray | None = None):
    """Marker sizes of the points ``ids`` (default: trace 0's): one number, or by frequency."""
    if not st.size_by_freq or (fr := store.frequency(st.atlas, st.layer)) is None:
        return 3.0
    ids = drawn(store, st) if ids is None else ids
    logf = np.log10(np.maximum(fr[1], 1e-9))
    lo, hi = np.percentile(logf, [2, 98])
    return typed((1.5 + 7 * np.clip((logf[ids] - lo) / max(hi - lo, 1e-9), 0, 1)).astype(np.float32))


def points_trace(store: AtlasStore, st: ViewState, ids: np.ndarray, xyz: np.ndarray,
                 col: dict | None = None) -> dict:
    """Trace 0's or trace 6's data for the features ``ids``: where, colour, size, hover."""
    col = colouring(store, st, ids) if col is None else col
    return {"x": typed(xyz[ids, 0]), "y": typed(xyz[ids, 1]), "z": typed(xyz[ids, 2]),
            "customdata": typed(ids.astype(np.int32)), "text": hover_tokens(store, st, ids),
            "marker": {**col["marker"], "size": sizes(store, st, ids)}}


def density_trace(store: AtlasStore, st: ViewState) -> dict:
    """Trace 5's data: a marker per occupied cell, its area growing with the features it stands for."""
    centre, count, rep = detail(store, st).density
    # 3 px for a cell of one feature, 12 px for the fullest: never hiding the points it is around
    top = np.log(max(int(count.max(initial=1)), 2))
    size = (3 + 9 * np.log(np.maximum(count, 1)) / top).astype(np.float32)
    return {"x": typed(centre[:, 0]), "y": typed(centre[:, 1]), "z": typed(centre[:, 2]),
            "customdata": typed(rep), "text": [f"{c:,}" for c in count.tolist()], "marker": {"size": typed(size)}}


def lod_note(store: AtlasStore, st: ViewState) -> str:
    """The words on the figure of a wide layer: how many features are points, that the rest is
    density; empty for a layer drawn whole."""
    d = detail(store, st)
    if len(d.points) == d.n:
        return ""
    more = len(focus(store, st))
    return (f"{len(d.points):,} of {d.n:,} features drawn as points (the most frequent of each region)"
            + (f", {more:,} more around the view" if more else "")
            + f";<br>the other {d.n - len(d.points) - more:,} as grey density cells (larger: more features). "
            "Zoom in or click a point or a cell to draw more; search finds every feature.")


# --------------------------------------------------------------------------- overlays


def selection_traces(store: AtlasStore, st: ViewState, xyz: np.ndarray) -> tuple[dict, dict]:
    """(edges trace update, selected-markers trace update) for the selected feature."""
    if st.feature is None:
        empty = typed(np.zeros(0, np.float32))
        return {"x": empty, "y": empty, "z": empty}, {"x": empty, "y": empty, "z": empty, "marker": {"size": 6}}
    nb, _ = store.neighbors(st.atlas, st.layer, st.feature, N_NEIGHBORS)
    seg = np.full((len(nb), 3, 3), np.nan, np.float32)
    seg[:, 0], seg[:, 1] = xyz[st.feature], xyz[nb]
    seg = seg.reshape(-1, 3)
    pts = np.concatenate([[st.feature], nb]).astype(np.int32)
    size = np.full(len(pts), 6, np.float32)
    size[0] = 11
    return ({"x": typed(seg[:, 0]), "y": typed(seg[:, 1]), "z": typed(seg[:, 2])},
            {"x": typed(xyz[pts, 0]), "y": typed(xyz[pts, 1]), "z": typed(xyz[pts, 2]), "marker": {"size": typed(size)}})


def _mesh(faces: np.ndarray, xyz: np.ndarray) -> dict:
    """Quads a, b, d, c (a - b ≈ c - d, so a→b and c→d are parallel edges) as two triangles each."""
    faces = np.asarray(faces, dtype=np.int64).reshape(-1, 4)
    verts = xyz[faces[:, [0, 1, 3, 2]].reshape(-1)]
    base = np.arange(len(faces), dtype=np.int32) * 4
    i = np.concatenate([base, base])
    j = np.concatenate([base + 1, base + 2])
    k = np.concatenate([base + 2, base + 3])
    return {"x": typed(verts[:, 0]), "y": typed(verts[:, 1]), "z": typed(verts[:, 2]),
            "i": typed(i), "j": typed(j), "k": typed(k)}


def crystal_traces(store: AtlasStore, st: ViewState, xyz: np.ndarray) -> tuple[dict, dict]:
    tab = store.crystals(st.atlas, st.layer)
    empty = _mesh(np.zeros((0, 4)), xyz)
    if tab is None:
        return empty, empty
    shown = empty
    if st.min_edge_cos is not None:
        t = tab[tab["edge_cos"] >= st.min_edge_cos] if "edge_cos" in tab else tab
        if "edge_cos" in t:
            t = t.sort_values("edge_cos", ascending=False)
        shown = _mesh(t[["a", "b", "c", "d"]].to_numpy()[:MAX_FACES], xyz)
    face = empty
    if st.face is not None and 0 <= st.face < len(tab):
        face = _mesh(tab.loc[st.face, ["a", "b", "c", "d"]].to_numpy(), xyz)
    return shown, face


# --------------------------------------------------------------------------- camera


def fly_to_face(store: AtlasStore, st: ViewState) -> tuple[tuple, tuple] | None:
    """Camera ``(eye, center)`` that centres crystal face ``st.face`` and looks at it closely.

    The centre is the face's centroid; the eye sits on the face's normal (the side of the
    current eye, so the view turns as little as possible) at 1.5 face diameters, between 0.25
    and 1 box units (the default eye is 2.17 away). Deterministic, so ``face=`` alone restores it.
    """
    tab = store.crystals(st.atlas, st.layer)
    if st.face is None or tab is None or not 0 <= st.face < len(tab):
        return None
    xyz = store.coords(st.atlas, st.layer, st.layout)
    box, aspect = scene_box(xyz)
    quad = normalised(xyz[tab.loc[st.face, ["a", "b", "c", "d"]].to_numpy(dtype=np.int64)], box, aspect)
    center = quad.mean(axis=0)
    before = np.asarray(st.eye if st.eye is not None else (1.25, 1.25, 1.25), float)
    before = before / (np.linalg.norm(before) or 1.0)
    normal = np.cross(quad[1] - quad[0], quad[2] - quad[0])
    if np.linalg.norm(normal) < 1e-9:  # a degenerate face: keep the current viewing direction
        normal = before
    normal = normal / np.linalg.norm(normal)
    if normal @ before < 0:
        normal = -normal
    size = np.linalg.norm(quad - center, axis=1).max() * 2
    eye = center + normal * float(np.clip(1.5 * size, 0.25, 1.0))
    return tuple(round(float(v), 2) for v in eye), tuple(round(float(v), 3) for v in center)


def camera(st: ViewState) -> dict | None:
    if st.eye is None and st.center is None:
        return None
    cam = {"eye": dict(zip("xyz", st.eye if st.eye is not None else (1.25, 1.25, 1.25)))}
    if st.center is not None:
        cam["center"] = dict(zip("xyz", st.center))
    return cam


def _axes(xyz: np.ndarray) -> dict:
    box, aspect = scene_box(xyz)
    return {"ranges": [[float(box[0, i]), float(box[1, i])] for i in range(3)],
            "aspectratio": dict(zip("xyz", map(float, aspect)))}


# --------------------------------------------------------------------------- figure


# What the whole figure depends on: the view less its panel (and the explorer's other views).
FIGURE_FIELDS = ("layer", "layout", "coloring", "size_by_freq", "feature", "min_edge_cos", "face", "eye", "center")


def figure(store: AtlasStore, st: ViewState) -> tuple[go.Figure, list]:
    """The whole figure for a view, and its legend entries; shared (never modify them).

    Kept by the view's fields in the store's bounded cache: plotly validates every property
    of a figure as it is built, which takes ~100 ms for a 4,096-feature cloud (the hover text
    of each point), while the page sends the same few views (a layer as first drawn) again
    and again."""
    key = (st.atlas, "cloud-figure", *(str(getattr(st, f)) for f in FIGURE_FIELDS))
    # a rough weight of the figure as Python objects: hover text and typed arrays per point
    return store.reuse(key, lambda: build_figure(store, st),
                       size=lambda _: 2**16 + 256 * (len(drawn(store, st)) + DETAIL_POINTS))


HOVER = "#%{customdata}  %{text}<extra></extra>"


def build_figure(store: AtlasStore, st: ViewState) -> tuple[go.Figure, list]:
    """The whole figure for a view, and its legend entries, built anew."""
    xyz = store.coords(st.atlas, st.layer, st.layout)
    ids = drawn(store, st)
    col = colouring(store, st, ids)
    edges, sel = selection_traces(store, st, xyz)
    faces, face = crystal_traces(store, st, xyz)
    look = {"mode": "markers", "hovertemplate": HOVER}
    fig = go.Figure([go.Scatter3d(name="features", **look),
                     go.Scatter3d(mode="lines", name="neighbors", hoverinfo="skip",
                                  line={"color": "#222", "width": 2}),
                     go.Scatter3d(mode="markers", name="selected", hoverinfo="skip",
                                  marker={"color": "#111", "opacity": 1, "line": {"color": "#fff", "width": 1}}),
                     go.Mesh3d(name="crystals", color="#e45756", opacity=0.25, hoverinfo="skip", flatshading=True),
                     go.Mesh3d(name="face", color="#b10026", opacity=0.75, hoverinfo="skip", flatshading=True),
                     go.Scatter3d(name="density", mode="markers",
                                  hovertemplate="%{text} features shown as density<br>click: feature "
                                                "#%{customdata}<extra></extra>",
                                  marker={"color": DENSITY, "opacity": 0.2, "line": {"width": 0}}),
                     go.Scatter3d(name="detail", **look)])
    fig.update_traces(points_trace(store, st, ids, xyz, col), selector=0)
    fig.update_traces(edges, selector=1)
    fig.update_traces(sel, selector=2)
    fig.update_traces(faces, selector=3)
    fig.update_traces(face, selector=4)
    fig.update_traces(density_trace(store, st), selector=5)
    fig.update_traces(points_trace(store, st, focus(store, st), xyz), selector=6)
    for i in (0, 6):
        fig.data[i].marker.update(opacity=0.85, line={"width": 0})
    axis = {"showticklabels": False, "title": {"text": ""}, "showspikes": False, "backgroundcolor": "#fafafa"}
    box = _axes(xyz)
    scene = {**{f"{c}axis": {**axis, "range": r} for c, r in zip("xyz", box["ranges"])},
             "aspectmode": "manual", "aspectratio": box["aspectratio"], "uirevision": "cloud"}
    if (cam := camera(st)) is not None:
        scene["camera"] = cam
    # template "none": the default template would add ~7 kB of styling to every figure
    fig.update_layout(scene=scene, margin={"l": 0, "r": 0, "t": 0, "b": 0}, showlegend=False, template="none",
                      uirevision="cloud", paper_bgcolor="white", hovermode="closest",
                      annotations=[note_annotation(lod_note(store, st))])
    return fig, col["legend"]


def note_annotation(text: str) -> dict:
    """The level-of-detail note, top left over the scene (invisible when empty)."""
    return {"text": text, "visible": bool(text), "xref": "paper", "yref": "paper", "x": 0.01, "y": 0.99,
            "xanchor": "left", "yanchor": "top", "showarrow": False, "align": "left", "name": "lod-note",
            "font": {"size": 12, "color": "#333"}, "bgcolor": "rgba(255,255,255,0.8)"}


def patch(store: AtlasStore, old: ViewState, st: ViewState) -> tuple[Patch | None, list | None]:
    """Only what changed between two views of the same layer; ``(None, None)`` if nothing did."""
    p = Patch()
    changed = False
    legend = None
    xyz = store.coords(st.atlas, st.layer, st.layout)
    moved = st.layout != old.layout
    ids = drawn(store, st)
    if moved:   # a wide layer's points differ per layout: trace 0 anew, with its density
        p["data"][0].update(points_trace(store, st, ids, xyz))
        p["data"][5].update(density_trace(store, st))
        box = _axes(xyz)
        for c, r in zip("xyz", box["ranges"]):
            p["layout"]["scene"][f"{c}axis"]["range"] = r
        p["layout"]["scene"]["aspectratio"] = box["aspectratio"]
        changed = True
    col = None
    if not moved and st.coloring != old.coloring:
        col = colouring(store, st, ids)
        p["data"][0]["marker"].update(col["marker"])
        legend, changed = col["legend"], True
    if not moved and st.size_by_freq != old.size_by_freq:
        p["data"][0]["marker"]["size"] = sizes(store, st, ids)
        changed = True
    # trace 6 follows the camera and the selection: sent when its features or their look change
    near = focus(store, st)
    if moved or col is not None or st.size_by_freq != old.size_by_freq or \
            not np.array_equal(near, focus(store, old)):
        p["data"][6].update(points_trace(store, st, near, xyz))
        p["layout"]["annotations"][0] = note_annotation(lod_note(store, st))
        changed = True
    if moved or st.feature != old.feature:
        edges, sel = selection_traces(store, st, xyz)
        p["data"][1].update(edges)
        p["data"][2].update(sel)
        changed = True
    if moved or st.min_edge_cos != old.min_edge_cos or st.face != old.face:
        faces, face = crystal_traces(store, st, xyz)
        p["data"][3].update(faces)
        p["data"][4].update(face)
        changed = True
    # A newly picked face moves the camera (the controller put the flight into the state);
    # any other camera change came from the user's own rotation, which uirevision keeps.
    if st.face is not None and st.face != old.face and (cam := camera(st)) is not None:
        p["layout"]["scene"]["camera"] = cam
        changed = True
    return (p, legend) if changed else (None, None)
