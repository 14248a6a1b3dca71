"""Read-only, cached access to a directory of atlases, shared by the JSON API and the explorer.

``AtlasStore(root)`` serves the atlases that ``analysis.atlas.list_atlases(root)`` finds and
nothing else: a name is looked up among those directories (never joined onto a path), so a
request can never reach a file outside ``root``. Every layer-level answer is a plain
function of the opened atlas (numpy arrays, small dicts), cached per atlas; the cache is
dropped when the atlas's manifest changes on disk (an atlas is replaced by renaming a new
directory into place, see analysis/atlas.py).

Under load (bench/bench_load.py) the store does the work of a request once per atlas, not
once per request: the folder listing and the manifest's stamp are looked at again at most
every ``recheck`` seconds (not on each of the ~30 lookups a feature card makes); the
co-occurrence matrix (an uncompressed ``.npz``, 10^7 entries at 4,096 features) is
memory-mapped in place instead of read into every process's memory; derived per-layer
indexes (rows of a feature in a table, crystal faces of a feature) are built once; and
``cached`` keeps finished answers (JSON bytes) by their immutable inputs in a bounded LRU
(``max_cache_bytes``), so resident memory stays flat however long the server runs; ``reuse``
does the same for the objects the Dash views build (plotly figures), in a second LRU of the
same bound, by their estimated size.

Comparisons (``saegeo compare``, docs/atlas.md) found in ``root`` are listed apart
(``comparison_names``, ``comparison``), never as atlases.

Derived files may be missing (an atlas with raw statistics only): every accessor returns
``None`` or computes a cheap stand-in (neighbors from the decoder), never raises for that.

The store raises three errors, which the HTTP layer maps to status codes in one place
(app/api/errors.py): ``UnknownAtlas`` and ``UnknownItem`` (404), ``BadParameter`` (422) and
``analysis.atlas.AtlasError`` for an atlas that fails validation (503).
"""
from __future__ import annotations

import json
import re
import threading
import time
import warnings
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from analysis.atlas import Atlas, AtlasError, LayerFiles, list_atlases, open_atlas
from analysis.latent import norms_by_position
from analysis.universality import Comparison, is_comparison, open_comparison

Affinity = Literal["phi", "simple_matching", "jaccard", "dice", "overlap", "geometry"]
Layout = Literal["pca", "umap"]
AFFINITIES: tuple[str, ...] = get_args(Affinity)
LAYOUTS: tuple[str, ...] = get_args(Layout)
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")


class UnknownAtlas(KeyError):
    """No atlas of that name is served (the message is readable: ``str(e.args[0])``)."""


class UnknownItem(KeyError):
    """A layer, feature or file that the atlas does not hold."""


class BadParameter(ValueError):
    """A malformed value in a request (an id range, a lobe, a colouring); the message says why."""


class NoLatent(UnknownItem):
    """The atlas holds no latent capture (404: the result is not there)."""


class UnknownComparison(UnknownItem):
    """No comparison of that name is served (404)."""


def valid_name(name: str) -> bool:
    """An atlas name is a single plain path component: no separators, not dots only."""
    return bool(_NAME.match(name)) and set(name) != {"."}


@dataclass
class _Entry:
    atlas: Atlas
    stamp: int
    memo: dict[Any, Any] = field(default_factory=dict)


class LRUBytes:
    """A thread-safe LRU of byte strings bounded by their total size (and entry count); it
    also keeps other objects when ``put`` is told their (estimated) size."""

    def __init__(self, max_bytes: int = 64 * 2**20, max_items: int = 20_000):
        self.max_bytes, self.max_items = max_bytes, max_items
        self._d: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._d)

    def get(self, key: Any) -> bytes | None:
        with self._lock:
            v = self._d.get(key)
            if v is None:
                self.misses += 1
                return None
            self._d.move_to_end(key)
            self.hits += 1
            return v[0]

    def put(self, key: Any, value: Any, size: int | None = None) -> None:
        size = len(value) if size is None else size
        if size > self.max_bytes // 4:
            return   # one huge answer (an export of everything) would flush the rest
        with self._lock:
            old = self._d.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            self._d[key] = (value, size)
            self.bytes += size
            while self._d and (self.bytes > self.max_bytes or len(self._d) > self.max_items):
                _, (_, n) = self._d.popitem(last=False)
                self.bytes -= n


class MappedCSR:
    """A CSR matrix of an uncompressed ``.npz`` whose three arrays are memory-mapped where
    they lie in the file: nothing is read until a row is, and every process serving the atlas
    shares the same pages of the page cache."""

    def __init__(self, path: Path):
        self.path = path
        with zipfile.ZipFile(path) as z:
            infos = {i.filename: i for i in z.infolist()}
            if any(infos[f].compress_type != zipfile.ZIP_STORED for f in ("data.npy", "indices.npy", "indptr.npy")):
                raise ValueError("compressed")
            self.shape = tuple(int(x) for x in np.load(z.open("shape.npy")))
            fmt = np.load(z.open("format.npy")).item()
        if (fmt.decode() if isinstance(fmt, bytes) else str(fmt)) != "csr":
            raise ValueError(fmt)
        self.data, self.indices, self.indptr = (self._member(infos[f + ".npy"]) for f in ("data", "indices", "indptr"))
        if len(self.indptr) != self.shape[0] + 1 or len(self.data) != len(self.indices):
            raise ValueError("inconsistent")

    def _member(self, info: zipfile.ZipInfo) -> np.ndarray:
        with open(self.path, "rb") as fh:
            fh.seek(info.header_offset)
            local = fh.read(30)
            start = info.header_offset + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little")
            fh.seek(start)
            version = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(fh)
            offset = fh.tell()
        if fortran or len(shape) != 1:
            raise ValueError("unexpected layout")
        return np.memmap(self.path, dtype=dtype, mode="r", offset=offset, shape=shape)

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = int(self.indptr[i]), int(self.indptr[i + 1])
        return np.asarray(self.indices[lo:hi]), np.asarray(self.data[lo:hi])

    def diagonal(self) -> np.ndarray:
        out = np.zeros(min(self.shape), dtype=np.float64)
        for i in range(len(out)):
            cols, vals = self.row(i)
            hit = cols == i
            if hit.any():
                out[i] = vals[hit][0]
        return out


class _Rows:
    """A scipy CSR matrix seen through MappedCSR's two methods."""

    def __init__(self, m):
        self.m, self.shape = m, m.shape

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        r = self.m.getrow(i)
        return r.indices, r.data

    def diagonal(self) -> np.ndarray:
        return np.asarray(self.m.diagonal(), dtype=np.float64)


class AtlasStore:
    """The atlases directly inside ``root`` (or ``root`` itself when it is an atlas).

    ``recheck``: seconds between looks at the folder and the manifests (a replaced atlas is
    served at most that much later); ``max_cache_bytes``: the bound of the answers' cache."""

    def __init__(self, root: str | Path, verify: str = "checksum", recheck: float = 1.0,
                 max_cache_bytes: int = 64 * 2**20):
        self.root = Path(root).resolve()
        self.verify = verify
        self.recheck = recheck
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.RLock()
        self._paths: tuple[float, dict[str, Path], dict[str, Path]] | None = None
        self._stamps: dict[str, tuple[float, int]] = {}
        self.answers = LRUBytes(max_cache_bytes)
        self.objects = LRUBytes(max_cache_bytes)

    # ------------------------------------------------------------------ atlases

    def paths(self) -> dict[str, Path]:
        now = time.monotonic()
        got = self._paths
        if got is None or now - got[0] > self.recheck:
            found = [p for p in list_atlases(self.root) if valid_name(p.name)]
            # a comparison folder (saegeo compare) has a manifest too, but it is no atlas
            comparisons = {p.name: p for p in found if is_comparison(p)}
            got = (now, {p.name: p for p in found if p.name not in comparisons}, comparisons)
            self._paths = got
        return got[1]

    # ------------------------------------------------------------------ comparisons

    def comparison_names(self) -> list[str]:
        """The comparisons (``saegeo compare``) served beside the atlases."""
        self.paths()
        return sorted(self._paths[2])

    def comparison(self, name: str) -> Comparison:
        """The opened comparison; raises UnknownComparison or AtlasError (one readable line).
        Kept while its manifest is unchanged; its tables are read once (``comparison_memo``)."""
        return self._comparison_entry(name).atlas

    def comparison_memo(self, name: str, key: Any, compute) -> Any:
        """Cache ``compute(comparison)`` per comparison under ``key``."""
        entry = self._comparison_entry(name)
        if key not in entry.memo:
            value = compute(entry.atlas)
            with self._lock:
                entry.memo[key] = value
        return entry.memo[key]

    def _comparison_entry(self, name: str) -> _Entry:
        names = self.comparison_names()
        if not isinstance(name, str) or name not in names:
            raise UnknownComparison(f"no comparison named {str(name)[:60]!r} "
                                    f"(available: {', '.join(names) or 'none'})")
        path = self._paths[2][name]
        try:
            stamp = (path / "manifest.json").stat().st_mtime_ns
        except OSError as e:
            raise AtlasError(f"{path}: cannot read the manifest ({e.strerror})") from None
        key = ("comparison", name)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.stamp != stamp:
                entry = _Entry(open_comparison(path, verify=self.verify), stamp)
                self._entries[key] = entry
            return entry

    def stamp(self, name: str) -> int:
        """The manifest's modification time of atlas ``name`` (changes when it is replaced)."""
        return self._entry(name).stamp

    def peek(self, key: tuple) -> bytes | None:
        """The cached answer for ``key`` when it is there and its atlas was looked at within
        ``recheck`` seconds; touches no file (safe on an event loop). Otherwise None: ask
        ``cached`` (from a worker thread)."""
        seen = self._stamps.get(key[0]) if isinstance(key[0], str) else None
        if seen is None or time.monotonic() - seen[0] > self.recheck:
            return None
        return self.answers.get((key, seen[1]))

    def cached(self, key: tuple, compute) -> bytes:
        """``compute()`` (bytes) for an answer that is a function of ``key`` and of the atlas
        ``key[0]`` as it is now; kept in the bounded LRU ``answers``."""
        full = (key, self.stamp(key[0]))
        body = self.answers.get(full)
        if body is None:
            body = compute()
            self.answers.put(full, body)
        return body

    def reuse(self, key: tuple, compute, size=lambda value: 2**16):
        """``compute()`` for a value that is a function of ``key`` and of the atlas ``key[0]``
        as it is now, kept itself (not as bytes) in the bounded LRU ``objects`` with the
        estimated ``size(value)``: the Dash views' figures, whose building (plotly's validation
        of every property) costs far more than their serialisation. The value is shared by
        every caller: never modify it."""
        full = (key, self.stamp(key[0]))
        got = self.objects.get(full)
        if got is None:
            value = compute()
            got = (value,)   # a tuple, so that None (no such figure) is kept too
            self.objects.put(full, got, size(value))
        return got[0]

    def names(self) -> list[str]:
        return sorted(self.paths())

    def building(self) -> list[dict]:
        """Atlases a precompute is writing right now: the ``progress.json`` it keeps in its
        ``<name>.partial/`` work folder (name, model, stage, done, total), newest first."""
        out = []
        if not self.root.is_dir():
            return out
        for f in self.root.glob("*.partial/progress.json"):
            try:
                p = json.loads(f.read_text())
            except (OSError, ValueError):
                continue   # being replaced this very moment: next poll
            name = f.parent.name.removesuffix(".partial")
            if valid_name(name) and isinstance(p, dict):
                out.append({"name": name, **{k: p.get(k) for k in ("model", "stage", "done", "total", "updated")}})
        return sorted(out, key=lambda p: -(p["updated"] or 0))

    def open(self, name: str) -> Atlas:
        """The opened atlas; raises UnknownAtlas or AtlasError (one readable line)."""
        return self._entry(name).atlas

    def _entry(self, name: str) -> _Entry:
        if not isinstance(name, str) or not valid_name(name):
            raise UnknownAtlas(f"{str(name)[:60]!r} is not a valid atlas name")
        paths = self.paths()
        if name not in paths:
            raise UnknownAtlas(f"no atlas named {name!r} (available: {', '.join(sorted(paths)) or 'none'})")
        path = paths[name]
        now = time.monotonic()
        seen = self._stamps.get(name)
        if seen is not None and now - seen[0] <= self.recheck and name in self._entries:
            return self._entries[name]
        try:
            stamp = (path / "manifest.json").stat().st_mtime_ns
        except OSError as e:
            self._stamps.pop(name, None)
            raise AtlasError(f"{path}: cannot read the manifest ({e.strerror})") from None
        with self._lock:
            entry = self._entries.get(name)
            if entry is None or entry.stamp != stamp:
                entry = _Entry(open_atlas(path, verify=self.verify), stamp)
                self._entries[name] = entry
            self._stamps[name] = (now, stamp)
            return entry

    def memo(self, name: str, key: Any, compute) -> Any:
        """Cache ``compute(atlas)`` per atlas under ``key``."""
        entry = self._entry(name)
        if key not in entry.memo:
            value = compute(entry.atlas)
            with self._lock:
                entry.memo[key] = value
        return entry.memo[key]

    # ------------------------------------------------------------------ layers

    def layer(self, name: str, layer: int) -> Atlas:
        atlas = self.open(name)
        if layer not in atlas.layer_ids:
            raise UnknownItem(f"atlas {name!r} has no layer {layer} (layers: {', '.join(map(str, atlas.layer_ids))})")
        return atlas

    def n_features(self, name: str, layer: int) -> int:
        atlas = self.layer(name, layer)
        rel = LayerFiles(layer).decoder
        if atlas.has(rel):
            return int(atlas.manifest.files[rel].shape[0])
        return int(atlas.manifest.layer(layer).sae.width)

    def check_feature(self, name: str, layer: int, feature: int) -> None:
        n = self.n_features(name, layer)
        if not 0 <= feature < n:
            raise UnknownItem(f"layer {layer} of atlas {name!r} has features 0..{n - 1}; there is no feature {feature}")

    def layouts(self, name: str, layer: int) -> list[str]:
        atlas = self.layer(name, layer)
        return [lay for lay in LAYOUTS if atlas.has(LayerFiles(layer).coords(lay))]

    def coords(self, name: str, layer: int, layout: str) -> np.ndarray | None:
        """float32 [F, 3]; PCA of the decoder when no layout file was computed (pca only)."""
        atlas = self.layer(name, layer)
        f = LayerFiles(layer)
        if atlas.has(f.coords(layout)):
            return np.asarray(atlas.array(f.coords(layout)), dtype=np.float32)
        if layout == "pca" and atlas.has(f.decoder):
            from analysis.layout import pca_coords  # scikit-learn comes with it: not at start-up

            return self.memo(name, ("pca-fallback", layer), lambda a: pca_coords(a.array(f.decoder)).astype(np.float32))
        return None

    def frequency(self, name: str, layer: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(fire_count int64 [F], frequency float64 [F] = fraction of tokens fired)."""
        atlas = self.layer(name, layer)
        rel = LayerFiles(layer).fire_count
        if not atlas.has(rel):
            return None

        def compute(a: Atlas):
            counts = np.asarray(a.array(rel), dtype=np.int64)
            n_tok = a.manifest.layer(layer).n_tokens or a.manifest.corpus.n_tokens
            freq = counts / n_tok if n_tok else counts / max(int(counts.max()), 1)
            return counts, freq

        return self.memo(name, ("freq", layer), compute)

    def lobe_options(self, name: str, layer: int) -> dict[str, list[int]]:
        """{affinity: [k, ...]} for the lobe label files present."""
        atlas = self.layer(name, layer)
        out = {}
        for aff in AFFINITIES:
            if atlas.has(LayerFiles(layer).lobes(aff)):
                out[aff] = self._ks(name, layer, aff)
        return out

    def _ks(self, name: str, layer: int, affinity: str) -> list[int]:
        def compute(a: Atlas):
            labels = a.array(LayerFiles(layer).lobes(affinity))
            brain = a.brain(layer)
            ks = brain.ks if brain is not None else None
            if not ks or len(ks) != labels.shape[0]:  # no brain.json: count clusters per row
                ks = [int(len(np.unique(row[row >= 0]))) for row in labels]
            return [int(k) for k in ks]

        return self.memo(name, ("ks", layer, affinity), compute)

    def lobes(self, name: str, layer: int, affinity: str, k: int) -> np.ndarray | None:
        """int16 [F] labels (-1 = dead/excluded), or None when not computed."""
        opts = self.lobe_options(name, layer)
        if affinity not in opts or k not in opts[affinity]:
            return None
        atlas = self.open(name)
        return np.asarray(atlas.array(LayerFiles(layer).lobes(affinity))[opts[affinity].index(k)])

    def lobe_names(self, name: str, layer: int, affinity: str, k: int, n_tokens: int = 3) -> dict[int, str]:
        """{lobe: "tok1 | tok2 | tok3"} from lobe_tokens.parquet, or from member features' top tokens."""
        def compute(a: Atlas):
            rel = LayerFiles(layer).lobe_tokens
            out: dict[int, list[str]] = {}
            if a.has(rel):
                t = a.table(rel)
                t = t[(t["affinity"] == affinity) & (t["k"] == k)].sort_values(["lobe", "rank"])
                for lobe, grp in t.groupby("lobe"):
                    out[int(lobe)] = list(grp["token"].head(n_tokens))
            else:
                labels = self.lobes(name, layer, affinity, k)
                tt = self.table(name, layer, "top_tokens.parquet")
                if labels is not None and tt is not None:
                    t = tt.assign(lobe=labels[tt["feature"].to_numpy()])
                    t = t[t["lobe"] >= 0].groupby(["lobe", "token"])["count"].sum().reset_index()
                    for lobe, grp in t.groupby("lobe"):
                        out[int(lobe)] = list(grp.sort_values("count", ascending=False)["token"].head(n_tokens))
            return {lobe: " | ".join(readable_token(t) for t in toks) for lobe, toks in out.items()}

        return self.memo(name, ("lobe-names", layer, affinity, k, n_tokens), compute)

    def subset_argmax(self, name: str, layer: int) -> np.ndarray | None:
        """int16 [F]: corpus subset where each feature fires most (-1: never fires)."""
        atlas = self.layer(name, layer)
        rel = LayerFiles(layer).subset_fire
        if not atlas.has(rel):
            return None

        def compute(a: Atlas):
            sf = np.asarray(a.array(rel))
            out = sf.argmax(1).astype(np.int16)
            out[sf.sum(1) == 0] = -1
            return out

        return self.memo(name, ("subset", layer), compute)

    def table(self, name: str, layer: int, file: str):
        atlas = self.layer(name, layer)
        rel = LayerFiles(layer).file(file)
        return atlas.table(rel) if atlas.has(rel) else None

    def rows_of(self, name: str, layer: int, file: str, feature: int, column: str = "feature"):
        """Rows of a per-feature table for one feature, sorted by rank (index built once)."""
        def compute(a: Atlas):
            t = self.table(name, layer, file)
            if t is None:
                return None
            order = np.argsort(t[column].to_numpy(), kind="stable")
            t = t.iloc[order].reset_index(drop=True)
            return t, t[column].to_numpy()

        got = self.memo(name, ("rows", layer, file, column), compute)
        if got is None:
            return None
        t, keys = got
        lo, hi = np.searchsorted(keys, feature, "left"), np.searchsorted(keys, feature, "right")
        rows = t.iloc[lo:hi]
        return rows.sort_values("rank") if "rank" in rows else rows

    def top_tokens(self, name: str, layer: int, n: int = 3) -> list[str] | None:
        """One short string of top tokens per feature (hover text)."""
        def compute(a: Atlas):
            t = self.table(name, layer, "top_tokens.parquet")
            if t is None:
                return None
            F = self.n_features(name, layer)
            out = [""] * F
            t = t[t["rank"] < n].sort_values(["feature", "rank"])
            for f, grp in t.groupby("feature", sort=False):
                if 0 <= f < F:
                    out[int(f)] = " ".join(grp["token"].astype(str))
            return out

        return self.memo(name, ("top-tokens", layer, n), compute)

    def neighbors(self, name: str, layer: int, feature: int, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Top-k decoder-cosine neighbors (self excluded) and their cosines."""
        atlas = self.layer(name, layer)
        f = LayerFiles(layer)
        if atlas.has(f.neighbors) and atlas.has(f.neighbors_cos):
            return (np.asarray(atlas.array(f.neighbors)[feature, :k]),
                    np.asarray(atlas.array(f.neighbors_cos)[feature, :k]))
        W = self.memo(name, ("unit-decoder", layer), lambda a: _unit_rows(a.array(f.decoder)))
        cos = W @ W[feature]
        cos[feature] = -np.inf
        idx = np.argpartition(-cos, min(k, len(cos) - 1))[:k]
        idx = idx[np.argsort(-cos[idx])]
        return idx.astype(np.int32), cos[idx].astype(np.float32)

    def cooc_partners(self, name: str, layer: int, feature: int, k: int = 8) -> list[dict] | None:
        """Features sharing the most blocks with ``feature``, with the phi coefficient."""
        atlas = self.layer(name, layer)
        rel = LayerFiles(layer).cooc
        if not atlas.has(rel):
            return None
        C = self.memo(name, ("cooc", layer), lambda a: csr_rows(a, rel))
        diag = self.memo(name, ("cooc-diag", layer), lambda a: C.diagonal())
        T = float(atlas.manifest.layer(layer).n_blocks or 0)
        cols, vals = C.row(feature)
        vals = vals.astype(np.float64)
        keep = cols != feature
        cols, vals = cols[keep], vals[keep]
        if T > 0:
            from analysis.brain import phi_coefficient  # scikit-learn comes with it: not at start-up

            phi = phi_coefficient(vals, diag[feature], diag[cols], T)
            order = np.argsort(-phi)[:k]
        else:
            phi = np.full(len(cols), np.nan)
            order = np.argsort(-vals)[:k]
        return [{"feature": int(cols[i]), "blocks": int(vals[i]),
                 "phi": None if np.isnan(phi[i]) else round(float(phi[i]), 4)} for i in order]

    def crystals(self, name: str, layer: int):
        t = self.table(name, layer, "crystals.parquet")
        if t is None:
            return None
        return self.memo(name, ("crystals", layer), lambda a: t.reset_index(drop=True))

    def crystals_of(self, name: str, layer: int, feature: int):
        """The rows of the crystals table with ``feature`` at a corner, in file order (indexed once)."""
        tab = self.crystals(name, layer)
        if tab is None:
            return None

        def compute(a: Atlas):
            corners = np.stack([tab[c].to_numpy(np.int64) for c in "abcd"], 1) if len(tab) else np.zeros((0, 4), int)
            by: dict[int, list[int]] = {}
            for i, row in enumerate(corners):
                for f in set(row.tolist()):
                    by.setdefault(f, []).append(i)
            return by

        rows = self.memo(name, ("crystals-of", layer), compute).get(feature, [])
        return tab.iloc[rows]


    # ------------------------------------------------------------------ latent geometry

    def latent(self, name: str):
        """The atlas's ``LatentInfo`` (manifest.latent); NoLatent when it has no latent capture."""
        lat = self.open(name).manifest.latent
        if lat is None:
            raise NoLatent(f"atlas {name!r} has no latent capture (run saegeo precompute --latent on it)")
        return lat

    def latent_array(self, name: str, file: str) -> np.ndarray | None:
        """``latent/<file>`` memory-mapped (None when this capture did not write it, e.g. no UMAP)."""
        self.latent(name)
        atlas = self.open(name)
        rel = f"latent/{file}"
        return atlas.array(rel) if atlas.has(rel) else None

    def latent_projections(self, name: str) -> list[str]:
        """Per-layer projections stored: pca always, umap when the capture ran UMAP."""
        lat = self.latent(name)
        return ["pca", "umap"] if lat.umap_tokens > 0 and self.open(name).has("latent/umap_layer.npy") else ["pca"]

    def latent_summary(self, name: str) -> dict:
        """``latent/latent.json``: separation per block, norms per slot, positional structure."""
        self.latent(name)
        return self.open(name).json("latent/latent.json")

    def latent_docs(self, name: str):
        """``latent/docs.parquet``: doc, subset, tokens (decoded) per captured document."""
        self.latent(name)
        return self.open(name).table("latent/docs.parquet")

    def latent_position_norms(self, name: str) -> np.ndarray:
        """float64 [K, T]: median over documents of each capture slot's norm at each position."""
        self.latent(name)

        def compute(a: Atlas):
            with warnings.catch_warnings():  # a position no document reaches is NaN, as it should be
                warnings.simplefilter("ignore", RuntimeWarning)
                return norms_by_position(a.array("latent/norms.npy"))

        return self.memo(name, ("latent-position-norms",), compute)


def readable_token(t) -> str:
    """A token as a short visible label: whitespace markers and newlines shown, ends trimmed."""
    t = str(t).replace("Ġ", " ").replace("▁", " ").replace("\n", "⏎").replace("\t", "⇥")
    return t.strip() or "␣"


def csr_rows(atlas: Atlas, rel: str):
    """A co-occurrence matrix by rows: memory-mapped in place when stored uncompressed."""
    try:
        return MappedCSR(atlas.path / rel)
    except (ValueError, KeyError, OSError, zipfile.BadZipFile):
        return _Rows(atlas.sparse(rel))


def _unit_rows(W: np.ndarray) -> np.ndarray:
    W = np.asarray(W, dtype=np.float32)
    return W / np.maximum(np.linalg.norm(W, axis=1, keepdims=True), 1e-12)

