"""The feature cloud: one layer's features as a WebGL 3-D scatter, with its overlays.

The figure always has the same five traces, so partial updates (dash ``Patch``) can address
them by index:

    0  every feature, in id order (point index = feature id; colour, size, hover text)
    1  neighbor edges of the selected feature (lines)
    2  the selected feature and its neighbors (large markers)
    3  crystal faces above the quality threshold (translucent Mesh3d)
    4  the crystal face picked from the card (opaque Mesh3d)

Every numeric array travels as a plotly typed-array spec ``{dtype, bdata}`` (base64 of the
little-endian bytes), never as a list of Python floats.
"""
from __future__ import annotations

import base64
import html as _html

import numpy as np
import plotly.graph_objects as go
from dash import Patch

from app.data import AtlasStore
from app.state import ViewState

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
           "#bcbd22", "#7f7f7f", "#393b79", "#e7ba52", "#637939", "#ad494a", "#7b4173", "#3182bd"]
DEAD = "#d0d0d0"
MAX_FACES = 400
N_NEIGHBORS = 10


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


# --------------------------------------------------------------------------- colouring


def colouring(store: AtlasStore, st: ViewState) -> dict:
    """Marker colour settings for trace 0 and the legend entries ``[(label, colour, name, n)]``."""
    kind = st.coloring.kind
    if kind == "freq":
        fr = store.frequency(st.atlas, st.layer)
        logf = np.log10(np.maximum(fr[1], 1e-9)).astype(np.float32)
        logf[fr[0] == 0] = np.nan
        return {"marker": {"color": typed(logf), "colorscale": "Viridis", "showscale": True,
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
    return _discrete(labels, legend_names)


def _discrete(labels: np.ndarray, names: dict[int, str]) -> dict:
    # Colours as numbers through a stepped colour scale keep the array binary (int16).
    n = len(PALETTE)
    vals = np.where(labels < 0, n, labels % n).astype(np.int16)
    scale = []
    for i, c in enumerate(PALETTE + [DEAD]):
        scale += [[i / (n + 1), c], [(i + 1) / (n + 1), c]]
    ids, counts = np.unique(labels, return_counts=True)
    legend = [(int(i), colour_of(int(i)), names.get(int(i), "") if i >= 0 else "dead / excluded", int(c))
              for i, c in zip(ids, counts)]
    return {"marker": {"color": typed(vals), "colorscale": scale, "cmin": -0.5, "cmax": n + 0.5,
                       "showscale": False}, "legend": legend}


def sizes(store: AtlasStore, st: ViewState, n: int):
    if not st.size_by_freq or (fr := store.frequency(st.atlas, st.layer)) is None:
        return 3.0
    logf = np.log10(np.maximum(fr[1], 1e-9))
    lo, hi = np.percentile(logf, [2, 98])
    return typed((1.5 + 7 * np.clip((logf - lo) / max(hi - lo, 1e-9), 0, 1)).astype(np.float32))


def hover_text(store: AtlasStore, st: ViewState, n: int) -> list[str]:
    toks = store.top_tokens(st.atlas, st.layer) or [""] * n
    # Tokens are data, not markup: plotly hover labels interpret a few tags, so escape them.
    return store.memo(st.atlas, ("hover", st.layer), lambda a: [
        f"#{i}  {_html.escape(t.replace(chr(10), '⏎'))}" for i, t in enumerate(toks)])


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
    xyz = store.coords(st.atlas, st.layer, st.layout)
    n = 0 if xyz is None else len(xyz)
    # a rough weight of the figure as Python objects: hover text and typed arrays per point
    return store.reuse(key, lambda: build_figure(store, st), size=lambda _: 2**16 + 256 * n)


def build_figure(store: AtlasStore, st: ViewState) -> tuple[go.Figure, list]:
    """The whole figure for a view, and its legend entries, built anew."""
    xyz = store.coords(st.atlas, st.layer, st.layout)
    n = len(xyz)
    col = colouring(store, st)
    edges, sel = selection_traces(store, st, xyz)
    faces, face = crystal_traces(store, st, xyz)
    points = go.Scatter3d(
        x=xyz[:, 0], y=xyz[:, 1], z=xyz[:, 2], mode="markers", name="features", text=hover_text(store, st, n),
        hovertemplate="%{text}<extra></extra>",
        marker={**col["marker"], "size": sizes(store, st, n), "opacity": 0.85, "line": {"width": 0}})
    fig = go.Figure([points,
                     go.Scatter3d(mode="lines", name="neighbors", hoverinfo="skip",
                                  line={"color": "#222", "width": 2}),
                     go.Scatter3d(mode="markers", name="selected", hoverinfo="skip",
                                  marker={"color": "#111", "opacity": 1, "line": {"color": "#fff", "width": 1}}),
                     go.Mesh3d(name="crystals", color="#e45756", opacity=0.25, hoverinfo="skip", flatshading=True),
                     go.Mesh3d(name="face", color="#b10026", opacity=0.75, hoverinfo="skip", flatshading=True)])
    fig.update_traces(edges, selector=1)
    fig.update_traces(sel, selector=2)
    fig.update_traces(faces, selector=3)
    fig.update_traces(face, selector=4)
    axis = {"showticklabels": False, "title": {"text": ""}, "showspikes": False, "backgroundcolor": "#fafafa"}
    box = _axes(xyz)
    scene = {**{f"{c}axis": {**axis, "range": r} for c, r in zip("xyz", box["ranges"])},
             "aspectmode": "manual", "aspectratio": box["aspectratio"], "uirevision": "cloud"}
    if (cam := camera(st)) is not None:
        scene["camera"] = cam
    # template "none": the default template would add ~7 kB of styling to every figure
    fig.update_layout(scene=scene, margin={"l": 0, "r": 0, "t": 0, "b": 0}, showlegend=False, template="none",
                      uirevision="cloud", paper_bgcolor="white", hovermode="closest")
    return fig, col["legend"]


def patch(store: AtlasStore, old: ViewState, st: ViewState) -> tuple[Patch | None, list | None]:
    """Only what changed between two views of the same layer; ``(None, None)`` if nothing did."""
    p = Patch()
    changed = False
    legend = None
    xyz = store.coords(st.atlas, st.layer, st.layout)
    moved = st.layout != old.layout
    if moved:
        p["data"][0]["x"], p["data"][0]["y"], p["data"][0]["z"] = (typed(xyz[:, i]) for i in range(3))
        box = _axes(xyz)
        for c, r in zip("xyz", box["ranges"]):
            p["layout"]["scene"][f"{c}axis"]["range"] = r
        p["layout"]["scene"]["aspectratio"] = box["aspectratio"]
        changed = True
    if st.coloring != old.coloring:
        col = colouring(store, st)
        p["data"][0]["marker"].update(col["marker"])
        legend, changed = col["legend"], True
    if st.size_by_freq != old.size_by_freq:
        p["data"][0]["marker"]["size"] = sizes(store, st, len(xyz))
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
