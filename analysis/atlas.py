"""The atlas store: the contract between precompute, analysis and the app.

An atlas is a directory holding ``manifest.json`` and array files beside it (see
docs/atlas.md for every file). This module writes atlases atomically, opens them with
memory-mapped arrays, and validates them.

    with AtlasWriter(path, manifest) as w:      # new atlas
        w.put_array(LayerFiles(3).decoder, W_dec)
    atlas = open_atlas(path)                    # raises AtlasError naming the bad file
    W = atlas.array(LayerFiles(3).decoder)      # np.memmap

``LayerFiles(L)`` names the files of layer ``L`` ("layers/3/decoder.npy"); every stage and the
app go through it, so the folder layout of a layer is spelled once.

Writes go into a hidden temporary sibling directory that is renamed into place only
after every file and the manifest (with a sha256 per file) are on disk, so a crash never
leaves something that opens as a complete atlas.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp
from pydantic import BaseModel, Field, ValidationError

from analysis.artefacts import Atom, Brain, Galaxy

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


class AtlasError(Exception):
    """A problem with an atlas on disk; the message is one line naming the file."""


# --------------------------------------------------------------------------- manifest


class ModelInfo(BaseModel):
    name: str
    source: str = ""
    d_model: int
    n_layers: int
    tokenizer: str = ""
    vocab_size: int | None = None
    dtype: str = ""                    # precision of the forward pass that produced the atlas
    hooks: dict[str, str] = Field(default_factory=dict)  # hook kind -> the exact tensor captured


class SAEInfo(BaseModel):
    source: str  # "sae-lens:<release>/<sae_id>", a local path, "trained", or "synthetic"
    width: int
    d_in: int
    architecture: str = ""
    hook: str = ""
    neuronpedia: str | None = None  # "<model>/<source>" when Neuronpedia hosts this SAE
    training: dict[str, Any] | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)


class CorpusInfo(BaseModel):
    name: str
    subsets: list[str] = Field(default_factory=list)
    n_documents: int = 0
    n_tokens: int = 0
    block_size: int = 256
    doc_tokens: int | None = None         # most tokens kept per document after BOS
    document_length: str | None = None    # the rule, e.g. "1024 tokens per document including BOS"
    threshold: float | None = None


class LayerInfo(BaseModel):
    layer: int
    hook: str = ""
    sae: SAEInfo
    n_tokens: int = 0
    n_blocks: int = 0
    threshold: float | None = None
    threshold_rule: str | None = None    # why this threshold (precompute.pipeline.threshold_rule)
    word_pair_hook: str | None = None    # where word_h_in/out were read (published: resid_pre = hidden_states[L])
    # cooc.npz holds each feature's cooc_topk top partners only (a wide layer, precompute
    # cooc_wide_from); None: the full co-occurrence
    cooc_topk: int | None = None
    computed: list[str] = Field(default_factory=list)


class LatentInfo(BaseModel):
    """The latent-geometry capture (precompute.latent; docs/atlas.md, "Latent geometry")."""

    captures: list[str]            # capture slots: row order of norms.npy, pca_global.npy, vectors.npy
    tensors: dict[str, str] = Field(default_factory=dict)  # capture kind -> exact tensor in this architecture
    n_docs: int
    n_positions: int               # positions per document, BOS (when bos) included
    bos: bool = True
    n_tokens: int = 0              # captured positions (padding excluded)
    sample_tokens: int             # tokens whose coordinates are stored (positions >= 1)
    umap_tokens: int = 0           # leading sample tokens with UMAP coordinates
    vector_tokens: int = 0         # leading sample tokens with stored vectors
    n_components: int = 3
    budget_bytes: int = 0
    bytes: int = 0                 # latent/ on disk
    requested: dict[str, Any] = Field(default_factory=dict)  # the LatentConfig as asked (profile unresolved)


class FileInfo(BaseModel):
    kind: Literal["npy", "npz", "parquet", "json", "other"]
    sha256: str
    bytes: int
    shape: list[int] | None = None
    dtype: str | None = None


class Manifest(BaseModel):
    schema_version: int = SCHEMA_VERSION
    title: str = ""
    synthetic: bool = False
    created: str = Field(default_factory=lambda: _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
    model: ModelInfo
    corpus: CorpusInfo
    layers: list[LayerInfo]
    configs: dict[str, Any] = Field(default_factory=dict)
    latent: LatentInfo | None = None
    software: dict[str, str] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)
    files: dict[str, FileInfo] = Field(default_factory=dict)

    def layer(self, layer: int) -> LayerInfo:
        for info in self.layers:
            if info.layer == layer:
                return info
        raise KeyError(f"layer {layer} is not in this atlas (layers: {[i.layer for i in self.layers]})")


def _named(name: str) -> property:
    return property(lambda self: self.file(name), doc=f"``layers/<L>/{name}``")


@dataclass(frozen=True)
class LayerFiles:
    """The names of one layer's files inside an atlas, as docs/atlas.md lists them ("Layer
    files"): ``LayerFiles(3).decoder == "layers/3/decoder.npy"``."""

    layer: int

    @property
    def folder(self) -> str:
        return f"layers/{self.layer}/"

    def file(self, name: str) -> str:
        """Any file of the layer by its name in docs/atlas.md, e.g. ``"coords_pca.npy"``."""
        return self.folder + name

    @staticmethod
    def layer_of(rel: str) -> int | None:
        """The layer a file of the atlas belongs to; None for files outside ``layers/``."""
        parts = Path(rel).parts
        if len(parts) > 1 and parts[0] == "layers" and parts[1].lstrip("-").isdigit():
            return int(parts[1])
        return None

    @property
    def sae_dir(self) -> str:
        """The folder of an SAE trained here, in sae-lens format."""
        return f"saes/{self.layer}"

    # raw statistics (precompute)
    decoder = _named("decoder.npy")
    fire_count = _named("fire_count.npy")
    cooc = _named("cooc.npz")
    subset_fire = _named("subset_fire.npy")
    blocks = _named("blocks.npz")
    block_subset = _named("block_subset.npy")
    act_hist = _named("act_hist.npy")
    act_hist_edges = _named("act_hist_edges.npy")
    contexts = _named("contexts.parquet")
    top_tokens = _named("top_tokens.parquet")
    word_h_in = _named("word_h_in.npy")
    word_h_out = _named("word_h_out.npy")
    # derived (analysis.stage)
    coords_pca = _named("coords_pca.npy")
    coords_umap = _named("coords_umap.npy")
    neighbors = _named("neighbors.npy")
    neighbors_cos = _named("neighbors_cos.npy")
    brain = _named("brain.json")
    lobe_subsets = _named("lobe_subsets.parquet")
    lobe_tokens = _named("lobe_tokens.parquet")
    spectrum = _named("spectrum.npy")
    galaxy = _named("galaxy.json")
    crystals = _named("crystals.parquet")
    atom = _named("atom.json")

    def coords(self, layout: str) -> str:
        return self.file(f"coords_{layout}.npy")

    def lobes(self, affinity: str) -> str:
        return self.file(f"lobes_{affinity}.npy")


def software_versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in ("saegeo", "numpy", "scipy", "scikit-learn", "torch", "transformers", "sae-lens"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


# --------------------------------------------------------------------------- writing


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_rel(rel: str) -> str:
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts or rel == MANIFEST or not p.parts:
        raise ValueError(f"bad atlas file name {rel!r}: use a relative path inside the atlas")
    return p.as_posix()


class AtlasWriter:
    """Write a new atlas, or update an existing one, atomically.

    ``AtlasWriter(path, manifest)`` creates a new atlas (``overwrite=True`` replaces an
    existing one). ``AtlasWriter.update(path)`` starts from an existing atlas: its files
    are hard-linked into the temporary directory (copy-on-write: ``put_*`` replaces a
    file, never edits it in place), and ``writer.manifest`` can be changed freely.

    On a clean exit of the ``with`` block the manifest with checksums is written and the
    temporary directory replaces ``path``; on an exception it is removed and ``path`` is
    untouched.
    """

    def __init__(self, path: str | os.PathLike, manifest: Manifest, overwrite: bool = False):
        self.path = Path(path).resolve()
        self.manifest = manifest
        self.overwrite = overwrite
        self._base: Path | None = None
        self.tmp: Path | None = None
        self._written: dict[str, FileInfo] = {}

    @classmethod
    def update(cls, path: str | os.PathLike) -> "AtlasWriter":
        atlas = open_atlas(path, verify="size")
        writer = cls(atlas.path, atlas.manifest.model_copy(deep=True), overwrite=True)
        writer._base = atlas.path
        return writer

    def __enter__(self) -> "AtlasWriter":
        if self.path.exists() and not self.overwrite:
            raise AtlasError(f"{self.path}: already exists (pass overwrite=True or choose another path)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.tmp-", dir=self.path.parent))
        if self._base is not None:
            for rel in self.manifest.files:
                src, dst = self._base / rel, self.tmp / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(src, dst)
                except OSError:
                    shutil.copy2(src, dst)
            for extra in self._base.iterdir():  # folders not tracked file by file (saes/)
                if extra.is_dir() and not (self.tmp / extra.name).exists():
                    shutil.copytree(extra, self.tmp / extra.name, copy_function=_link_or_copy)
        return self

    def _target(self, rel: str) -> Path:
        assert self.tmp is not None, "use AtlasWriter inside a with block"
        rel = _check_rel(rel)
        dst = self.tmp / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.exists():  # may be a hard link into the old atlas: never write through it
            dst.unlink()
        return dst

    def put_array(self, rel: str, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr)
        if arr.dtype == object:
            raise TypeError(f"{rel}: object arrays are not allowed in an atlas")
        np.save(self._target(rel), arr, allow_pickle=False)
        self._written[rel] = FileInfo(kind="npy", sha256="", bytes=0, shape=list(arr.shape), dtype=arr.dtype.str)

    def put_sparse(self, rel: str, mat: sp.spmatrix | sp.sparray) -> None:
        mat = sp.csr_matrix(mat)
        sp.save_npz(self._target(rel), mat, compressed=False)
        self._written[rel] = FileInfo(kind="npz", sha256="", bytes=0, shape=list(mat.shape), dtype=mat.dtype.str)

    def put_table(self, rel: str, table: pd.DataFrame | pa.Table) -> None:
        if isinstance(table, pd.DataFrame):
            table = pa.Table.from_pandas(table, preserve_index=False)
        pq.write_table(table, self._target(rel))
        self._written[rel] = FileInfo(kind="parquet", sha256="", bytes=0, shape=[table.num_rows, table.num_columns])

    def put_json(self, rel: str, obj: Any) -> None:
        if isinstance(obj, BaseModel):
            # through json.dumps, not model_dump_json: NaN and infinite z-scores stay NaN and
            # Infinity, not null; fields never set stay absent, as in the files before the models
            obj = obj.model_dump(exclude_unset=True)
        self._target(rel).write_text(json.dumps(obj, indent=1, default=_json_default))
        self._written[rel] = FileInfo(kind="json", sha256="", bytes=0)

    def put(self, rel: str, value: Any) -> None:
        """Store ``value`` in the format its file name says (.npy, .npz, .parquet, .json)."""
        suffix = Path(rel).suffix
        put = {".npy": self.put_array, ".npz": self.put_sparse, ".parquet": self.put_table,
               ".json": self.put_json}.get(suffix)
        if put is None:
            raise ValueError(f"{rel}: unknown atlas file type {suffix!r} (use .npy, .npz, .parquet or .json)")
        put(rel, value)

    def put_dir(self, rel: str, src: str | os.PathLike) -> None:
        """Copy a whole folder (for example a saved sae-lens SAE) into the atlas."""
        dst = self._target(rel)
        shutil.copytree(src, dst)
        for f in sorted(p for p in dst.rglob("*") if p.is_file()):
            self._written[f.relative_to(self.tmp).as_posix()] = FileInfo(kind="other", sha256="", bytes=0)

    def remove(self, rel: str) -> None:
        rel = _check_rel(rel)
        self.manifest.files.pop(rel, None)
        self._written.pop(rel, None)
        (self.tmp / rel).unlink(missing_ok=True)

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.tmp is not None
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        try:
            for rel, info in self._written.items():
                f = self.tmp / rel
                info.sha256, info.bytes = _sha256(f), f.stat().st_size
                self.manifest.files[rel] = info
            self.manifest.software = {**software_versions(), **self.manifest.software}
            _fsync_tree(self.tmp)
            (self.tmp / MANIFEST).write_text(self.manifest.model_dump_json(indent=1))
            _swap_into_place(self.tmp, self.path)
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot store {type(o).__name__} in atlas JSON")


def _fsync_tree(root: Path) -> None:
    for f in root.rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _swap_into_place(tmp: Path, path: Path) -> None:
    # A directory cannot be replaced by rename when the target exists and is not empty,
    # so the old atlas is moved aside first; the manifest is written last into tmp, so at
    # every instant `path` is either the old complete atlas, absent, or the new one.
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.rename(path, old)
    os.rename(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- reading


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    with open(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _fortran, dtype = read(f)
        return shape, dtype, f.tell()


# The geometry stage's JSON results by file name: validated on opening and on reading.
ARTEFACTS: dict[str, type[BaseModel]] = {"brain.json": Brain, "galaxy.json": Galaxy, "atom.json": Atom}


def read_artefact(f: Path, model: type[BaseModel]) -> Any:
    """The JSON file ``f`` validated as ``model``; an AtlasError naming the file and the first
    bad field when it is not."""
    try:
        raw = json.loads(f.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AtlasError(f"{f}: not valid JSON ({e}); re-run the geometry stage that wrote it") from None
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "(the whole file)"
        raise AtlasError(f"{f}: invalid field {where!r}: {err['msg']} (not what the geometry stage writes; "
                         f"re-run it)") from None


def _problems(path: Path, verify: str) -> tuple[list[str], Manifest | None]:
    """Every problem with the atlas at ``path``, one line each."""
    mpath = path / MANIFEST
    if not path.is_dir():
        hint = ""
        stale = sorted(path.parent.glob(f".{path.name}.old-*")) if path.parent.is_dir() else []
        if stale:
            hint = f" (an interrupted update left {stale[0]}; rename it to {path.name} to recover)"
        return [f"{path}: no such atlas directory{hint}"], None
    if not mpath.is_file():
        return [f"{mpath}: missing - this is not a complete atlas (an interrupted write, or the wrong folder)"], None
    try:
        raw = json.loads(mpath.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return [f"{mpath}: not valid JSON ({e}); the manifest is corrupted, re-run the stage that wrote it"], None
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if version != SCHEMA_VERSION:
        return [f"{mpath}: unknown schema version {version!r} (this saegeo reads version {SCHEMA_VERSION}); "
                f"rebuild the atlas with this version of saegeo or upgrade saegeo"], None
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        return [f"{mpath}: invalid manifest field {where!r}: {err['msg']}"], None

    problems = []
    for rel, info in manifest.files.items():
        f = path / rel
        if not f.is_file():
            problems.append(f"{f}: missing (listed in the manifest)")
            continue
        size = f.stat().st_size
        if size != info.bytes:
            problems.append(f"{f}: size {size} bytes, manifest says {info.bytes} (truncated or replaced)")
            continue
        if info.kind == "npy":
            try:
                shape, dtype, offset = _npy_header(f)
            except Exception as e:  # noqa: BLE001 - any header failure is the same problem
                problems.append(f"{f}: not a readable .npy file ({e})")
                continue
            if list(shape) != info.shape or dtype.str != info.dtype:
                problems.append(f"{f}: array is {dtype.str}{list(shape)}, manifest says {info.dtype}{info.shape}")
                continue
            if offset + int(np.prod(shape)) * dtype.itemsize != size:
                problems.append(f"{f}: array data is truncated")
                continue
        if verify == "checksum" and _sha256(f) != info.sha256:
            problems.append(f"{f}: checksum mismatch (the file changed after the atlas was written)")
            continue
        if info.kind == "json" and f.name in ARTEFACTS and LayerFiles.layer_of(rel) is not None:
            try:
                read_artefact(f, ARTEFACTS[f.name])
            except AtlasError as e:
                problems.append(str(e))
    problems += _latent_problems(path, manifest)
    known = {i.layer for i in manifest.layers}
    for rel in manifest.files:
        layer = LayerFiles.layer_of(rel)
        if layer is not None and layer not in known:
            problems.append(f"{path / rel}: belongs to layer {layer}, which the manifest does not list")
    return problems, manifest


def latent_shapes(manifest: Manifest) -> dict[str, list[int] | None]:
    """The files of the latent section and their array shapes (None: not an array), as
    docs/atlas.md lists them; empty when the atlas has no latent capture."""
    lat = manifest.latent
    if lat is None:
        return {}
    K, D, T, S = len(lat.captures), lat.n_docs, lat.n_positions, lat.sample_tokens
    n, d, c = manifest.model.n_layers, manifest.model.d_model, lat.n_components
    out: dict[str, list[int] | None] = {
        "latent/latent.json": None, "latent/docs.parquet": None,
        "latent/tokens.npy": [D, T], "latent/norms.npy": [K, D, T], "latent/sample.npy": [S, 2],
        "latent/pca_layer.npy": [n, 5, S, c], "latent/components_layer.npy": [n, c, d],
        "latent/pca_global.npy": [K, S, c], "latent/components_global.npy": [c, d],
        "latent/position_pca.npy": [n + 1, T, c]}
    if lat.umap_tokens:
        out["latent/umap_layer.npy"] = [n, 5, lat.umap_tokens, 3]
    if lat.vector_tokens:
        out["latent/vectors.npy"] = [K, lat.vector_tokens, d]
    return out


def _latent_problems(path: Path, manifest: Manifest) -> list[str]:
    lat = manifest.latent
    if lat is None:
        return []
    n = manifest.model.n_layers
    if len(lat.captures) != 4 * n + 2:
        return [f"{path / MANIFEST}: latent.captures lists {len(lat.captures)} captures, a {n}-layer model has "
                f"{4 * n + 2} (embedding, 4 per block, final norm)"]
    problems = []
    for rel, shape in latent_shapes(manifest).items():
        info = manifest.files.get(rel)
        if info is None:
            problems.append(f"{path / rel}: missing from the manifest's files, but its latent section needs it")
        elif shape is not None and info.shape != shape:
            problems.append(f"{path / rel}: shape {info.shape}, the latent section implies {shape}")
    return problems


def validate(path: str | os.PathLike, verify: str = "checksum") -> list[str]:
    """Check an atlas; return a list of one-line problems (empty when it is sound)."""
    return _problems(Path(path), verify)[0]


class Atlas:
    """An opened, validated atlas. Arrays are memory-mapped; nothing is loaded eagerly."""

    def __init__(self, path: Path, manifest: Manifest):
        self.path = path
        self.manifest = manifest
        self._cache: dict[Any, Any] = {}

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def layer_ids(self) -> list[int]:
        return [info.layer for info in self.manifest.layers]

    def has(self, rel: str) -> bool:
        return rel in self.manifest.files

    def _file(self, rel: str) -> Path:
        if rel not in self.manifest.files:
            raise AtlasError(f"{self.path / rel}: not in this atlas")
        return self.path / rel

    def array(self, rel: str) -> np.ndarray:
        if rel not in self._cache:
            self._cache[rel] = np.load(self._file(rel), mmap_mode="r", allow_pickle=False)
        return self._cache[rel]

    def sparse(self, rel: str) -> sp.csr_matrix:
        if rel not in self._cache:
            self._cache[rel] = sp.csr_matrix(sp.load_npz(self._file(rel)))
        return self._cache[rel]

    def table(self, rel: str) -> pd.DataFrame:
        if rel not in self._cache:
            self._cache[rel] = pq.read_table(self._file(rel)).to_pandas()
        return self._cache[rel]

    def json(self, rel: str) -> Any:
        if rel not in self._cache:
            self._cache[rel] = json.loads(self._file(rel).read_text())
        return self._cache[rel]

    def _artefact(self, rel: str, model: type[BaseModel]) -> Any:
        if rel not in self.manifest.files:
            return None
        key = ("artefact", rel)
        if key not in self._cache:
            self._cache[key] = read_artefact(self.path / rel, model)
        return self._cache[key]

    def brain(self, layer: int) -> Brain | None:
        """The layer's ``brain.json``; None when its lobes were not computed."""
        return self._artefact(LayerFiles(layer).brain, Brain)

    def galaxy(self, layer: int) -> Galaxy | None:
        """The layer's ``galaxy.json``; None when the geometry stage has not run on it."""
        return self._artefact(LayerFiles(layer).galaxy, Galaxy)

    def atom(self, layer: int) -> Atom | None:
        """The layer's ``atom.json``; None when neither crystals nor word pairs were analysed."""
        return self._artefact(LayerFiles(layer).atom, Atom)

    def __repr__(self) -> str:
        return f"Atlas({str(self.path)!r}, layers={self.layer_ids})"


def open_atlas(path: str | os.PathLike, verify: Literal["checksum", "size"] = "checksum") -> Atlas:
    """Open and validate an atlas.

    ``verify="checksum"`` hashes every file (the default; thorough); ``"size"`` checks
    presence, sizes, array shapes and dtypes only (fast, for very large atlases).
    Raises ``AtlasError`` whose message is the first problem found, one line.
    """
    path = Path(path).resolve()
    problems, manifest = _problems(path, verify)
    if problems:
        more = f" (and {len(problems) - 1} more problem(s); run `saegeo validate {path}`)" if len(problems) > 1 else ""
        raise AtlasError(problems[0] + more)
    assert manifest is not None
    return Atlas(path, manifest)


def list_atlases(root: str | os.PathLike) -> list[Path]:
    """Atlas directories directly inside ``root`` (or ``root`` itself if it is one)."""
    root = Path(root)
    if (root / MANIFEST).is_file():
        return [root]
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).is_file())
