"""The explorer's view state and its permalink: ``ViewState`` <-> a short query string.

    ?atlas=demo&layer=10&layout=pca&color=lobe:phi:8&f=123

Keys: ``atlas``, ``layer``, ``layout`` (pca | umap), ``color`` (``lobe:<affinity>:<k>``,
``freq``, ``subset``, ``geometry:<k>``), ``size`` (``freq`` to size points by firing
frequency), ``f`` (selected feature), ``face`` (crystal row drawn), ``q`` (minimum crystal
edge cosine; absent = no crystal overlay), ``panel`` (the panel open below the cloud:
``spectra``, the default and left out, ``lobes`` or ``crystals``), ``cam`` (camera eye ``x,y,z``),
``ctr`` (camera centre ``x,y,z``; both in plotly's normalised scene coordinates, where the scene
box spans its aspect ratio around 0).

Parsing never fails: ``parse_query`` keeps every well-formed value and reports the others
as readable problems; ``resolve`` then moves a parsed state to the nearest view that the
served atlases can show (first atlas, nearest layer, a computed layout/colouring, a feature
in range) and reports each change. The problems are shown to the user as plain text.
"""
from __future__ import annotations

import re
from typing import Literal
from urllib.parse import parse_qsl, urlencode

from pydantic import BaseModel

from app.data import AFFINITIES, AtlasStore, UnknownAtlas, UnknownItem, valid_name
from analysis.atlas import AtlasError

_MAX_QUERY = 2000
PANELS = ("spectra", "lobes", "crystals")


class ViewState(BaseModel):
    atlas: str | None = None
    layer: int | None = None
    layout: Literal["pca", "umap"] = "pca"
    color: str = "lobe"  # "lobe" alone = the atlas's default affinity and k
    size: bool = False
    f: int | None = None
    face: int | None = None
    q: float | None = None
    panel: Literal["spectra", "lobes", "crystals"] = "spectra"
    cam: tuple[float, float, float] | None = None
    ctr: tuple[float, float, float] | None = None

    def to_query(self) -> str:
        """A short, readable query string (with leading ``?``); default values are left out."""
        items: list[tuple[str, str]] = []
        if self.atlas is not None:
            items.append(("atlas", self.atlas))
        if self.layer is not None:
            items.append(("layer", str(self.layer)))
        items.append(("layout", self.layout))
        items.append(("color", self.color))
        if self.size:
            items.append(("size", "freq"))
        if self.f is not None:
            items.append(("f", str(self.f)))
        if self.q is not None:
            items.append(("q", _num(self.q, 3)))  # 3 decimals: candidate qualities crowd near 1
        if self.face is not None:
            items.append(("face", str(self.face)))
        if self.panel != "spectra":
            items.append(("panel", self.panel))
        if self.cam is not None:
            items.append(("cam", ",".join(_num(v) for v in self.cam)))
        if self.ctr is not None:
            items.append(("ctr", ",".join(_num(v, 3) for v in self.ctr)))
        return "?" + urlencode(items, safe=":,")

    def with_(self, **changes) -> "ViewState":
        return self.model_copy(update=changes)


def _num(v: float, digits: int = 2) -> str:
    s = f"{v:.{digits}f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def _short(v: str) -> str:
    return repr(v if len(v) <= 40 else v[:40] + "...")


_COLOR = re.compile(r"^(lobe(:(" + "|".join(AFFINITIES) + r")(:\d{1,5})?)?|freq|subset|geometry(:\d{1,5})?)$")


def parse_query(search: str | None) -> tuple[ViewState, list[str]]:
    """Parse ``?a=b&...`` tolerantly; returns the state and one message per dropped value."""
    problems: list[str] = []
    search = (search or "").lstrip("?")
    if len(search) > _MAX_QUERY:
        return ViewState(), ["the link is too long; opened the default view"]
    raw = dict(parse_qsl(search, keep_blank_values=True))
    s: dict = {}

    def bad(key, why):
        problems.append(f"ignored {key}={_short(raw[key])}: {why}")

    if "atlas" in raw:
        if valid_name(raw["atlas"]):
            s["atlas"] = raw["atlas"]
        else:
            bad("atlas", "not an atlas name")
    for key in ("layer", "f", "face"):
        if key in raw:
            if re.fullmatch(r"-?\d{1,9}", raw[key]):
                s[key] = int(raw[key])
            else:
                bad(key, "not a whole number")
    if "layout" in raw:
        if raw["layout"] in ("pca", "umap"):
            s["layout"] = raw["layout"]
        else:
            bad("layout", "use pca or umap")
    if "color" in raw:
        if _COLOR.match(raw["color"]):
            s["color"] = raw["color"]
        else:
            bad("color", "use lobe:<affinity>:<k>, freq, subset or geometry:<k>")
    if "size" in raw:
        if raw["size"] in ("freq", "1", "true"):
            s["size"] = True
        elif raw["size"] not in ("", "0", "none", "false"):
            bad("size", "use size=freq")
    if "panel" in raw:
        if raw["panel"] in PANELS:
            s["panel"] = raw["panel"]
        else:
            bad("panel", "use " + ", ".join(PANELS))
    if "q" in raw:
        try:
            q = float(raw["q"])
            if not -1 <= q <= 1:
                raise ValueError
            s["q"] = q
        except ValueError:
            bad("q", "use a cosine between -1 and 1")
    for key in ("cam", "ctr"):
        if key in raw:
            try:
                v = tuple(float(x) for x in raw[key].split(","))
                if len(v) != 3 or not all(abs(x) < 1e3 for x in v):  # also rejects nan and inf
                    raise ValueError
                s[key] = v
            except ValueError:
                bad(key, "use three numbers x,y,z")
    unknown = sorted(set(raw) - {"atlas", "layer", "layout", "color", "size", "f", "face", "q", "panel", "cam",
                                 "ctr"})
    if unknown:
        problems.append("ignored unknown parameter(s): " + ", ".join(_short(k) for k in unknown[:5]))
    return ViewState(**s), problems


def resolve(state: ViewState, store: AtlasStore) -> tuple[ViewState, list[str]]:
    """The nearest view the served atlases can show, and a message per change made."""
    notes: list[str] = []
    names = store.names()
    if not names:
        return ViewState(), ["no atlases are served from this folder"]
    atlas = None
    tried = [state.atlas] if state.atlas is not None else []
    for name in tried + [n for n in names if n not in tried]:
        try:
            store.open(name)
            atlas = name
            break
        except UnknownAtlas:
            notes.append(f"there is no atlas {_short(name)}")
        except AtlasError as e:
            notes.append(f"atlas {_short(name)} cannot be opened: {e}")
    if atlas is None:
        return ViewState(), notes + ["no atlas could be opened"]
    if state.atlas is not None and atlas != state.atlas:
        notes.append(f"showing atlas {_short(atlas)} instead")
    layers = store.open(atlas).layer_ids
    layer = state.layer
    if layer not in layers:
        nearest = min(layers, key=lambda L: (abs(L - layer), L)) if layer is not None else layers[0]
        if layer is not None:
            notes.append(f"layer {layer} is not in atlas {_short(atlas)}; showing layer {nearest}")
        layer = nearest
    st = state.with_(atlas=atlas, layer=layer)

    layouts = store.layouts(atlas, layer) or ["pca"]  # pca falls back to the decoder's PCA
    if st.layout not in layouts:
        notes.append(f"layout {st.layout} is not computed for layer {layer}; showing {layouts[0]}")
        st = st.with_(layout=layouts[0])

    color, why = resolve_color(st.color, store, atlas, layer)
    if why:
        notes.append(why)
    st = st.with_(color=color)

    n = store.n_features(atlas, layer)
    if st.f is not None and not 0 <= st.f < n:
        notes.append(f"feature {st.f} is not in layer {layer} (0..{n - 1}); nothing selected")
        st = st.with_(f=None)
    if st.face is not None:
        tab = store.crystals(atlas, layer)
        if tab is None or not 0 <= st.face < len(tab):
            notes.append(f"crystal face {st.face} is not in layer {layer}")
            st = st.with_(face=None)
    return st, notes


def resolve_color(color: str, store: AtlasStore, atlas: str, layer: int) -> tuple[str, str | None]:
    """A colouring the layer can show: ``(color, note or None)``."""
    try:
        opts = store.lobe_options(atlas, layer)
        has_subset = store.subset_argmax(atlas, layer) is not None
        has_freq = store.frequency(atlas, layer) is not None
    except (UnknownAtlas, UnknownItem):
        return "freq", None
    cooc = {a: ks for a, ks in opts.items() if a != "geometry"}

    def default():
        if cooc:
            aff = "phi" if "phi" in cooc else next(iter(cooc))
            ks = cooc[aff]
            k = 8 if 8 in ks else ks[min(len(ks) - 1, len(ks) // 2)]
            return f"lobe:{aff}:{k}"
        return "freq" if has_freq else ("subset" if has_subset else "freq")

    parts = color.split(":")
    kind = parts[0]
    if kind == "freq" and has_freq:
        return color, None
    if kind == "subset" and has_subset:
        return color, None
    if kind == "lobe" and cooc:
        if len(parts) == 1:
            return default(), None
        aff = parts[1]
        if aff in cooc:
            if len(parts) == 2:
                ks = cooc[aff]
                return f"lobe:{aff}:{ks[min(len(ks) - 1, len(ks) // 2)]}", None
            k = int(parts[2])
            if k in cooc[aff]:
                return color, None
            near = min(cooc[aff], key=lambda x: (abs(x - k), x))
            return f"lobe:{aff}:{near}", f"{aff} lobes with k={k} are not computed; showing k={near}"
    if kind == "geometry" and "geometry" in opts:
        ks = opts["geometry"]
        if len(parts) == 1:
            return f"geometry:{ks[min(len(ks) - 1, len(ks) // 2)]}", None
        k = int(parts[1])
        if k in ks:
            return color, None
        near = min(ks, key=lambda x: (abs(x - k), x))
        return f"geometry:{near}", f"geometry clusters with k={k} are not computed; showing k={near}"
    d = default()
    return d, f"colouring {_short(color)} is not available for layer {layer}; colouring by {d}"
