"""The explorer's view state and its permalink: ``ViewState`` <-> a short query string.

    ?atlas=demo&layer=10&layout=pca&color=lobe:phi:8&f=123

Keys (each the alias of a ``ViewState`` field): ``atlas``, ``layer``, ``layout`` (pca | umap),
``color`` (``coloring``: ``lobe:<affinity>:<k>``, ``freq``, ``subset``, ``geometry:<k>``),
``size`` (``size_by_freq``: ``freq`` to size points by firing frequency), ``f`` (``feature``,
the selected one), ``face`` (crystal row drawn), ``q`` (``min_edge_cos`` of the crystal
overlay; absent = no overlay), ``panel`` (the panel open below the cloud: ``spectra``, the
default and left out, ``lobes`` or ``crystals``), ``cam`` (``eye``, the camera eye ``x,y,z``),
``ctr`` (``center``, the camera centre ``x,y,z``; both in plotly's normalised scene
coordinates, where the scene box spans its aspect ratio around 0).

The Latent view (METHODS 4) has keys of its own, so switching views keeps both: ``view``
(``cloud``, the default and left out, or ``latent``), ``ll`` (``latent_layer``: a block of the
model, or ``all``, the default, for every layer at once), ``lp`` (``latent_projection``: pca |
umap), ``lc`` (``latent_color``: kind | layer | position), ``pt`` (``latent_point``: the
clicked point, ``<capture slot>:<sample token>``).

The Universality view (METHODS 5) has its own too: ``view=universality``, ``cmp``
(``comparison``: a comparison served beside the atlases), ``um`` (``metric`` of the heat map:
svcca, the default, or rsa), ``cell`` (the layer pair whose paired features are listed,
``<layer of A>:<layer of B>``), ``pair`` (the selected pair, named by its B feature: the pairs
of a layer pair hold one row per B feature).

Parsing never fails: ``parse_query`` keeps every well-formed value and reports the others
as readable problems; ``resolve`` then moves a parsed state to the nearest view that the
served atlases can show (first atlas, nearest layer, a computed layout/colouring, a feature
in range) and reports each change. The problems are shown to the user as plain text.
"""
from __future__ import annotations

import re
from typing import Literal, get_args
from urllib.parse import parse_qsl, urlencode

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

from app.data import AFFINITIES, LAYOUTS, AtlasStore, Layout, NoLatent, UnknownAtlas, UnknownItem, valid_name
from analysis.latent import KINDS, slot_of
from analysis.atlas import AtlasError

_MAX_QUERY = 2000
Panel = Literal["spectra", "lobes", "crystals"]
PANELS: tuple[str, ...] = get_args(Panel)
View = Literal["cloud", "latent", "universality"]
VIEWS: tuple[str, ...] = get_args(View)
LatentColor = Literal["kind", "layer", "position"]
LATENT_COLORS: tuple[str, ...] = get_args(LatentColor)
Metric = Literal["svcca", "rsa"]
METRICS: tuple[str, ...] = get_args(Metric)
KEYS = ("atlas", "layer", "layout", "color", "size", "f", "face", "q", "panel", "cam", "ctr",
        "view", "ll", "lp", "lc", "pt", "cmp", "um", "cell", "pair")
ColoringKind = Literal["lobe", "geometry", "freq", "subset"]
COLORING_HINT = "use lobe:<affinity>:<k>, freq, subset or geometry:<k>"
_COLORING = re.compile(r"(lobe(?::(" + "|".join(AFFINITIES) + r")(?::(\d{1,5}))?)?"
                       r"|freq|subset|geometry(?::(\d{1,5}))?)")


def _coloring_parts(text: str) -> dict:
    m = _COLORING.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError(COLORING_HINT)
    kind = text.split(":", 1)[0]
    k = m[3] if kind == "lobe" else m[4]
    return {"kind": kind, "affinity": m[2], "k": None if k is None else int(k)}


class Coloring(BaseModel):
    """What colours the cloud, written ``lobe:phi:8``, ``geometry:4``, ``freq`` or ``subset``.

    A lobe colouring without its affinity or k, or a geometry one without k, asks for the
    layer's default; ``resolve_coloring`` fills them in. In a model or JSON it travels as that
    text, so a ``ViewState`` dump stays a flat dict of plain values.
    """
    model_config = ConfigDict(frozen=True)

    kind: ColoringKind = "lobe"
    affinity: str | None = None  # lobe colourings only
    k: int | None = None

    @classmethod
    def parse(cls, text: str) -> Coloring:
        """The colouring ``text`` names; ValueError (with a hint) when it names none."""
        return cls(**_coloring_parts(text))

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, value):
        return _coloring_parts(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _well_formed(self) -> Coloring:
        # one grammar for both spellings: parts are valid exactly when their text parses
        if not _COLORING.fullmatch(str(self)):
            raise ValueError(f"{str(self)[:60]!r}: {COLORING_HINT}")
        return self

    @model_serializer
    def _as_text(self) -> str:
        return str(self)

    def __str__(self) -> str:
        return ":".join([self.kind] + [str(p) for p in (self.affinity, self.k) if p is not None])

    @property
    def lobes(self) -> tuple[str, int] | None:
        """``(affinity, k)`` of the lobe labels shown (geometry clusters are affinity
        ``geometry``); None for frequency, subset and not yet resolved colourings."""
        if self.kind == "lobe" and self.affinity is not None and self.k is not None:
            return self.affinity, self.k
        if self.kind == "geometry" and self.k is not None:
            return "geometry", self.k
        return None


class ViewState(BaseModel):
    """One view of the explorer. Fields are named for what they hold; the permalink's short
    keys are their aliases, and either spelling is accepted when building one."""
    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True)

    atlas: str | None = None
    layer: int | None = None
    layout: Layout = "pca"
    coloring: Coloring = Field(Coloring(), alias="color")  # bare "lobe": the layer's default lobes
    size_by_freq: bool = Field(False, alias="size")
    feature: int | None = Field(None, alias="f")
    face: int | None = None
    min_edge_cos: float | None = Field(None, alias="q")
    panel: Panel = "spectra"
    eye: tuple[float, float, float] | None = Field(None, alias="cam")
    center: tuple[float, float, float] | None = Field(None, alias="ctr")
    view: View = "cloud"
    latent_layer: int | None = Field(None, alias="ll")          # None: every layer at once
    latent_projection: Layout = Field("pca", alias="lp")
    latent_color: LatentColor = Field("kind", alias="lc")
    latent_point: tuple[int, int] | None = Field(None, alias="pt")  # (capture slot, sample token)
    comparison: str | None = Field(None, alias="cmp")
    metric: Metric = Field("svcca", alias="um")
    cell: tuple[int, int] | None = None          # (layer of A, layer of B)
    pair: int | None = None                      # the B feature of the selected pair

    def to_query(self) -> str:
        """A short, readable query string (with leading ``?``); default values are left out."""
        items: list[tuple[str, str]] = []
        if self.atlas is not None:
            items.append(("atlas", self.atlas))
        if self.layer is not None:
            items.append(("layer", str(self.layer)))
        if self.layer is not None or self.view == "cloud":   # a model-only atlas has no feature cloud
            items.append(("layout", self.layout))
            items.append(("color", str(self.coloring)))
        if self.size_by_freq:
            items.append(("size", "freq"))
        if self.feature is not None:
            items.append(("f", str(self.feature)))
        if self.min_edge_cos is not None:
            items.append(("q", _num(self.min_edge_cos, 3)))  # 3 decimals: candidate qualities crowd near 1
        if self.face is not None:
            items.append(("face", str(self.face)))
        if self.panel != "spectra":
            items.append(("panel", self.panel))
        if self.eye is not None:
            items.append(("cam", ",".join(_num(v) for v in self.eye)))
        if self.center is not None:
            items.append(("ctr", ",".join(_num(v, 3) for v in self.center)))
        if self.view == "universality":
            items.append(("view", self.view))
            if self.comparison is not None:
                items.append(("cmp", self.comparison))
            items.append(("um", self.metric))
            if self.cell is not None:
                items.append(("cell", "%d:%d" % self.cell))
            if self.pair is not None:
                items.append(("pair", str(self.pair)))
        if self.view == "latent":
            items.append(("view", self.view))
            # the latent keys only travel with the latent view: cloud links stay as they were
            items.append(("ll", "all" if self.latent_layer is None else str(self.latent_layer)))
            items.append(("lp", self.latent_projection))
            items.append(("lc", self.latent_color))
            if self.latent_point is not None:
                items.append(("pt", "%d:%d" % self.latent_point))
        return "?" + urlencode(items, safe=":,")

    def with_(self, **changes) -> ViewState:
        """A copy with ``changes`` (field names or aliases), validated like a new state."""
        # model_copy(update=...) would skip validation and keep e.g. a colouring as raw text
        return ViewState.model_validate({**self.model_dump(), **changes})


def _num(v: float, digits: int = 2) -> str:
    s = f"{v:.{digits}f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def _short(v: str) -> str:
    return repr(v if len(v) <= 40 else v[:40] + "...")


# keys whose value is one of a few words, and keys written <number>:<number>: (allowed, hint)
_CHOICES = {"layout": (LAYOUTS, "use pca or umap"), "panel": (PANELS, "use " + ", ".join(PANELS)),
            "view": (VIEWS, "use " + " or ".join(VIEWS)), "lp": (LAYOUTS, "use pca or umap"),
            "lc": (LATENT_COLORS, "use " + ", ".join(LATENT_COLORS)), "um": (METRICS, "use " + " or ".join(METRICS))}
_PAIRS = {"pt": (r"(\d{1,6}):(\d{1,9})", "use <capture slot>:<sample token>, e.g. 3:17"),
          "cell": (r"(\d{1,6}):(\d{1,6})", "use <layer of A>:<layer of B>, e.g. 15:9")}


def parse_query(search: str | None) -> tuple[ViewState, list[str]]:
    """Parse ``?a=b&...`` tolerantly; returns the state and one message per dropped value."""
    problems: list[str] = []
    search = (search or "").lstrip("?")
    if len(search) > _MAX_QUERY:
        return ViewState(), ["the link is too long; opened the default view"]
    raw = dict(parse_qsl(search, keep_blank_values=True))
    s: dict = {}  # keyed by the permalink's keys, the aliases

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
    for key, (choices, hint) in _CHOICES.items():
        if key in raw:
            if raw[key] in choices:
                s[key] = raw[key]
            else:
                bad(key, hint)
    for key, (pattern, hint) in _PAIRS.items():
        if key in raw:
            m = re.fullmatch(pattern, raw[key])
            if m:
                s[key] = (int(m[1]), int(m[2]))
            else:
                bad(key, hint)
    if "color" in raw:
        try:
            s["color"] = Coloring.parse(raw["color"])
        except ValueError as e:
            bad("color", str(e))
    if "size" in raw:
        if raw["size"] in ("freq", "1", "true"):
            s["size"] = True
        elif raw["size"] not in ("", "0", "none", "false"):
            bad("size", "use size=freq")
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
    if "ll" in raw:
        if raw["ll"] == "all":
            s["ll"] = None
        elif re.fullmatch(r"\d{1,6}", raw["ll"]):
            s["ll"] = int(raw["ll"])
        else:
            bad("ll", "use a layer number or all")
    if "cmp" in raw:
        if valid_name(raw["cmp"]):
            s["cmp"] = raw["cmp"]
        else:
            bad("cmp", "not a comparison name")
    if "pair" in raw:
        if re.fullmatch(r"\d{1,9}", raw["pair"]):
            s["pair"] = int(raw["pair"])
        else:
            bad("pair", "use the B feature of a pair, a whole number")
    unknown = sorted(set(raw) - set(KEYS))
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
    if not layers:   # a model-only atlas (latent geometry, no SAE): no feature cloud to show
        st = state.with_(atlas=atlas, layer=None, feature=None, face=None)
        if st.view == "cloud":
            if store.open(atlas).manifest.latent is None:
                return st, notes + [f"atlas {_short(atlas)} has no SAE layers and no latent capture"]
            notes.append(f"atlas {_short(atlas)} has no SAE layers; showing its latent geometry")
            st = st.with_(view="latent")
        if st.view == "universality":
            st, more = resolve_universality(st, store)
            if st.view == "universality":
                return st, notes + more
            notes += more
        st, more = resolve_latent(st, store)
        return st, notes + more
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

    coloring, why = resolve_coloring(st.coloring, store, atlas, layer)
    if why:
        notes.append(why)
    st = st.with_(coloring=coloring)

    n = store.n_features(atlas, layer)
    if st.feature is not None and not 0 <= st.feature < n:
        notes.append(f"feature {st.feature} is not in layer {layer} (0..{n - 1}); nothing selected")
        st = st.with_(feature=None)
    if st.face is not None:
        tab = store.crystals(atlas, layer)
        if tab is None or not 0 <= st.face < len(tab):
            notes.append(f"crystal face {st.face} is not in layer {layer}")
            st = st.with_(face=None)
    if st.view == "latent":
        st, more = resolve_latent(st, store)
        notes += more
    if st.view == "universality":
        st, more = resolve_universality(st, store)
        notes += more
    return st, notes


def resolve_universality(st: ViewState, store: AtlasStore) -> tuple[ViewState, list[str]]:
    """The nearest Universality view the served comparisons can show (the feature cloud when
    none is served), and a message per change."""
    names = store.comparison_names()
    notes: list[str] = []
    tried = [st.comparison] if st.comparison is not None else []
    chosen = None
    for name in tried + [n for n in names if n not in tried]:
        try:
            m = store.comparison(name).manifest
            chosen = name
            break
        except UnknownItem:
            notes.append(f"there is no comparison {_short(name)}")
        except AtlasError as e:
            if name == st.comparison:   # another one that fails is listed by the API, not on every page
                notes.append(f"comparison {_short(name)} cannot be opened: {e}")
    if chosen is None:
        back = "feature cloud" if st.layer is not None else "latent geometry"
        return (st.with_(view="cloud" if st.layer is not None else "latent", comparison=None, cell=None, pair=None),
                notes + [f"no comparison is served here (saegeo compare writes one; serve it beside its atlases); "
                         f"showing the {back}"])
    if st.comparison is not None and chosen != st.comparison:
        notes.append(f"showing comparison {_short(chosen)} instead")
        st = st.with_(cell=None, pair=None)
    st = st.with_(comparison=chosen)
    if st.cell is not None and (st.cell[0] not in m.a.layers or st.cell[1] not in m.b.layers):
        notes.append(f"comparison {_short(chosen)} has no layer pair {st.cell[0]}:{st.cell[1]} (layers of A: "
                     f"{', '.join(map(str, m.a.layers))}; of B: {', '.join(map(str, m.b.layers))}); no cell selected")
        st = st.with_(cell=None, pair=None)
    if st.pair is not None:
        width = m.b.widths.get(str(st.cell[1])) if st.cell is not None else None
        if st.cell is None or width is None or not 0 <= st.pair < width:
            notes.append(f"pair {st.pair} is not a feature of the selected layer pair's B layer; no pair selected")
            st = st.with_(pair=None)
    return st, notes


def latent_slots(n_layers: int, layer: int | None) -> list[int]:
    """Capture slots the latent view of ``layer`` shows (all of them for None)."""
    return list(range(4 * n_layers + 2)) if layer is None else [slot_of(n_layers, layer, k) for k in KINDS]


def resolve_latent(st: ViewState, store: AtlasStore) -> tuple[ViewState, list[str]]:
    """The nearest latent view atlas ``st.atlas`` can show (back to the cloud when it has no
    latent capture), and a message per change."""
    try:
        lat = store.latent(st.atlas)
    except NoLatent:
        return (st.with_(view="cloud", latent_point=None),
                [f"atlas {_short(st.atlas)} has no latent capture (saegeo precompute --latent); showing the "
                 "feature cloud"])
    notes: list[str] = []
    n = store.open(st.atlas).manifest.model.n_layers
    L = st.latent_layer
    if L is not None and not 0 <= L < n:
        near = min(max(L, 0), n - 1)
        notes.append(f"the latent capture has layers 0..{n - 1}; showing layer {near}")
        st = st.with_(latent_layer=near, latent_point=None)
    if st.latent_projection == "umap":
        if st.latent_layer is None:
            notes.append("UMAP is computed per layer; showing the PCA of all layers")
            st = st.with_(latent_projection="pca")
        elif "umap" not in store.latent_projections(st.atlas):
            notes.append("this latent capture has no UMAP; showing PCA")
            st = st.with_(latent_projection="pca")
    if st.latent_color == "layer" and st.latent_layer is not None:
        notes.append(f"every point of layer {st.latent_layer} has the same layer; colouring by capture kind")
        st = st.with_(latent_color="kind")
    if st.latent_point is not None:
        slot, sample = st.latent_point
        n_tokens = lat.umap_tokens if st.latent_projection == "umap" else lat.sample_tokens
        if slot not in latent_slots(n, st.latent_layer) or not 0 <= sample < n_tokens:
            where = "all layers" if st.latent_layer is None else f"layer {st.latent_layer}"
            notes.append(f"point {slot}:{sample} is not in the latent view of {where}; nothing selected")
            st = st.with_(latent_point=None)
    return st, notes


def resolve_coloring(coloring: Coloring, store: AtlasStore, atlas: str, layer: int) -> tuple[Coloring, str | None]:
    """A colouring the layer can show, complete with its affinity and k: ``(coloring, note or None)``."""
    try:
        opts = store.lobe_options(atlas, layer)
        has_subset = store.subset_argmax(atlas, layer) is not None
        has_freq = store.frequency(atlas, layer) is not None
    except (UnknownAtlas, UnknownItem):
        return Coloring(kind="freq"), None
    cooc = {a: ks for a, ks in opts.items() if a != "geometry"}

    def middle(ks: list[int]) -> int:
        return ks[min(len(ks) - 1, len(ks) // 2)]

    def nearest(ks: list[int], k: int) -> int:
        return min(ks, key=lambda x: (abs(x - k), x))

    def default() -> Coloring:
        if cooc:
            aff = "phi" if "phi" in cooc else next(iter(cooc))
            ks = cooc[aff]
            return Coloring(kind="lobe", affinity=aff, k=8 if 8 in ks else middle(ks))
        return Coloring(kind="freq" if has_freq or not has_subset else "subset")

    c = coloring
    if (c.kind == "freq" and has_freq) or (c.kind == "subset" and has_subset):
        return c, None
    if c.kind == "lobe" and cooc:
        if c.affinity is None:
            return default(), None
        if c.affinity in cooc:
            ks = cooc[c.affinity]
            if c.k is None:
                return c.model_copy(update={"k": middle(ks)}), None
            if c.k in ks:
                return c, None
            near = nearest(ks, c.k)
            return (c.model_copy(update={"k": near}),
                    f"{c.affinity} lobes with k={c.k} are not computed; showing k={near}")
    if c.kind == "geometry" and "geometry" in opts:
        ks = opts["geometry"]
        if c.k is None:
            return Coloring(kind="geometry", k=middle(ks)), None
        if c.k in ks:
            return c, None
        near = nearest(ks, c.k)
        return Coloring(kind="geometry", k=near), f"geometry clusters with k={c.k} are not computed; showing k={near}"
    d = default()
    return d, f"colouring {_short(str(c))} is not available for layer {layer}; colouring by {d}"
