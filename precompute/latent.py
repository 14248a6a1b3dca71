"""The latent-geometry stage: raw activations of every layer (Ning & Rangaraju, arXiv 2511.21594).

    from precompute.latent import LatentConfig, run_latent
    run_latent("atlases/demo", LatentConfig())          # 64 documents x 512 positions

runs ``n_docs`` sequences of ``seq_len`` positions (BOS first when ``bos``) through the model
once and adds the ``latent/`` files of docs/atlas.md to an existing atlas, in one atomic
``AtlasWriter.update``; ``manifest.latent`` records what was captured and
``manifest.configs["latent"]`` the settings. ``run_precompute`` calls it after the statistics
when ``PrecomputeConfig.latent`` is set (the demo profile does).

What is captured. The published list per block is: the input of the attention norm, the
attention output, the residual after attention, the input of the MLP norm, the MLP output,
the residual after the MLP; plus the embedding output and the final norm's output. Hooks sit
on exactly those modules (``latent_modules``): a pre-hook on the attention norm
(``input_layernorm``), a hook on what the attention sub-layer adds to the residual stream
(Llama: ``self_attn``; Gemma 2/3: ``post_attention_layernorm``, the attention output after
Gemma's post-norm - the raw ``self_attn`` output is not what the residual stream receives), a
pre-hook on the MLP norm (Llama: ``post_attention_layernorm``; Gemma: ``pre_feedforward_layernorm``),
a hook on what the MLP adds (Llama: ``mlp``; Gemma: ``post_feedforward_layernorm``), the
block's output, and the final norm. In these pre-norm blocks the attention norm's input *is*
the residual stream entering the block and the MLP norm's input *is* the residual after
attention, so the six tensors are five (``analysis.latent.KINDS``); and block L's input is
block L-1's output, so a block's ``resid_pre`` is stored once, as the previous block's
``resid_post`` (the stage checks the tensors are identical on every batch and refuses blocks
where they are not, such as parallel-attention blocks).

Size budget (``budget_mb``, 50 MB for the defaults). Every capture of every position of the
demo setting would be 32,832 tokens x 122 captures x 576 floats = 9 GB in float16, so:
norms of every capture at every position (float32: Gemma's residual norms exceed float16's
range); PCA fitted on every captured token at positions >= 1 (streamed moments, float64) and
applied without centring to a deterministic sample of ``sample_tokens`` tokens; cosine UMAP of
its first ``umap_tokens``; unit directions of its first ``vector_tokens`` in float16 (times
the stored norm = the vector). The stage refuses to start when the files would exceed the
budget. Measured on SmolLM2 at the defaults: about 1.2 kB per captured token
(``bench/bench_latent.py``).

Resumable at stage granularity: an interrupted stage leaves the atlas as it was, and
``saegeo precompute --resume`` runs it again without redoing the statistics. At the demo
setting it takes minutes; a mid-stage checkpoint would weigh ~0.7 GB (the moments), more than
the recomputation it saves.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, model_validator
from torch import nn

from analysis import latent as la
from precompute.errors import PrecomputeError

__all__ = ["LatentConfig", "LatentError", "run_latent", "latent_done", "capture_latent", "latent_modules"]

# published settings (METHODS 4): GPT-2 128 x 1,024 without BOS, LLaMA 64 x 2,048 with BOS;
# "published" picks by architecture (learned absolute positions -> GPT-2's)
PUBLISHED = {"published-gpt2": dict(n_docs=128, seq_len=1024, bos=False, budget_mb=400),
             "published-llama": dict(n_docs=64, seq_len=2048, bos=True, budget_mb=400)}
ATTN_NORMS = ("input_layernorm", "ln_1", "attention_norm", "ln_attn")
# Gemma's sandwich blocks first: there post_attention_layernorm is the attention *output* norm
MLP_NORMS = ("pre_feedforward_layernorm", "post_attention_layernorm", "ln_2", "ffn_norm")
FINAL_NORMS = ("model.norm", "model.language_model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm",
               "model.final_layernorm", "model.decoder.final_layer_norm")
POSITION_EMBEDDINGS = ("transformer.wpe", "model.decoder.embed_positions", "gpt_neox.embed_positions")


class LatentError(PrecomputeError):
    """A problem with the latent stage's settings or model; the message is one line."""


class LatentConfig(BaseModel):
    """Every setting of the latent stage; stored resolved in ``manifest.configs["latent"]``."""

    model_config = ConfigDict(extra="forbid")   # a mistyped setting is an error, not ignored

    profile: Literal["published", "published-gpt2", "published-llama"] | None = None
    n_docs: int = 64                     # sequences captured
    seq_len: int = 512                   # positions per sequence, BOS included (published 1,024 / 2,048)
    bos: bool = True                     # BOS at position 0 (published for LLaMA)
    corpus: str | None = None            # None: the atlas's corpus
    # forward precision when the stage loads the model itself; None: the atlas's forward dtype
    dtype: Literal["auto", "float32", "bfloat16"] | None = None
    batch_size: int = 8
    n_components: int = 3                # stored PCA coordinates per point (3-D views)
    sample_tokens: int = 1024            # tokens with stored coordinates (positions >= 1)
    umap_tokens: int = 256               # of those, with cosine UMAP per layer (0: no UMAP)
    umap_n_neighbors: int = 15
    umap_min_dist: float = 0.1
    vector_tokens: int = 128             # of those, with stored float16 directions (0: none)
    separation_tokens: int = 512         # of those, in the attention-vs-MLP separation score
    cv: int = 5                          # folds of the separation accuracy
    budget_mb: float = 50.0              # refuse settings whose latent/ files would exceed this
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> "LatentConfig":
        if self.n_docs < 1 or self.seq_len < 8 or self.batch_size < 1:
            raise ValueError(f"latent needs n_docs >= 1, seq_len >= 8 and batch_size >= 1 "
                             f"(got {self.n_docs}, {self.seq_len}, {self.batch_size})")
        if not self.umap_tokens <= self.sample_tokens or not self.vector_tokens <= self.sample_tokens \
                or not self.separation_tokens <= self.sample_tokens:
            raise ValueError("latent umap_tokens, vector_tokens and separation_tokens must not exceed sample_tokens")
        if self.separation_tokens < self.cv:
            raise ValueError(f"latent separation_tokens ({self.separation_tokens}) must be at least cv ({self.cv})")
        return self

    def resolved(self, lm, manifest=None) -> "LatentConfig":
        """The settings actually run: profile values for fields not given, corpus and dtype
        from the atlas when not given."""
        fill: dict[str, Any] = {}
        if self.profile:
            name = self.profile
            if name == "published":
                name = "published-gpt2" if _position_embedding(lm) is not None else "published-llama"
            fill.update({k: v for k, v in PUBLISHED[name].items() if k not in self.model_fields_set})
            fill["profile"] = name
        if self.corpus is None:
            pre = (manifest.configs.get("precompute") or {}) if manifest is not None else {}
            fill["corpus"] = pre.get("corpus", "default")
        if self.dtype in (None, "auto"):
            fill["dtype"] = str(lm.dtype).removeprefix("torch.")
        return self.model_copy(update=fill)


# ---------------------------------------------------------------------- hooks


@dataclass
class LatentModules:
    """The modules the captures hook, and what each capture kind is in this architecture."""

    attn_norm: list[nn.Module]
    mlp_norm: list[nn.Module]
    final_norm: nn.Module
    tensors: dict[str, str]


def _named(model: nn.Module, names) -> tuple[str, nn.Module] | None:
    mods = dict(model.named_modules())
    return next(((n, mods[n]) for n in names if n in mods), None)


def _position_embedding(lm) -> nn.Module | None:
    found = _named(lm.model, POSITION_EMBEDDINGS)
    return found[1] if found is not None and hasattr(found[1], "weight") else None


def latent_modules(lm) -> LatentModules:
    """Locate the attention norm, MLP norm and final norm of ``lm`` (a ``LoadedModel``).
    Raises ``LatentError`` for blocks that are not pre-norm blocks with these norms."""
    attn_norm, mlp_norm, names = [], [], None
    for i, block in enumerate(lm.blocks):
        children = dict(block.named_children())
        a = next((k for k in ATTN_NORMS if k in children), None)
        m = next((k for k in MLP_NORMS if k in children), None)
        if a is None or m is None or children[m] is lm.attn[i]:
            raise LatentError(f"block {i} of {type(lm.model).__name__} is not a pre-norm block with an attention "
                              f"norm and an MLP norm (children: {sorted(children)}); the latent capture needs one")
        attn_norm.append(children[a])
        mlp_norm.append(children[m])
        names = (a, m)
    final = _named(lm.model, FINAL_NORMS)
    if final is None:
        raise LatentError(f"no final norm found in {type(lm.model).__name__} (looked for {', '.join(FINAL_NORMS)})")
    prefix = lm.hooks["resid_post"].removeprefix("output of ")
    tensors = {
        "resid_pre": f"input of {prefix}.{names[0]} (the attention norm) = the residual stream entering block L; "
                     f"for L = 0 the embedding output (output_hidden_states[0]); for L > 0 stored as block L-1's resid_post",
        "attn_out": f"{lm.hooks['attn_out']} (what attention adds to the residual stream)",
        "resid_mid": f"input of {prefix}.{names[1]} (the MLP norm) = the residual stream after attention",
        "mlp_out": f"{lm.hooks['mlp_out']} (what the MLP adds to the residual stream)",
        "resid_post": f"output of {prefix} = the residual stream after the MLP",
        "final_norm": f"output of {final[0]} (the final norm; output_hidden_states[-1])",
        "attn_norm_in": "resid_pre (the same tensor)",
        "mlp_norm_in": "resid_mid (the same tensor)",
    }
    return LatentModules(attn_norm, mlp_norm, final[1], tensors)


class _Stop(Exception):
    """Raised after the final norm: the unembedding is not needed."""


@torch.no_grad()
def capture_latent(lm, input_ids: torch.Tensor, on_capture: Callable[[str, torch.Tensor], None],
                   modules: LatentModules | None = None) -> None:
    """Run ``input_ids`` [B, T] through ``lm`` once; call ``on_capture(name, tensor [B, T, d])``
    for every capture in forward order: per block ``blocks.L.hook_resid_pre`` (the attention
    norm's input), ``hook_attn_out``, ``hook_resid_mid`` (the MLP norm's input), ``hook_mlp_out``,
    ``hook_resid_post``; then ``ln_final.hook_normalized``. Tensors are the model's own (its
    dtype, its device), valid during the call only. The forward pass stops after the final norm."""
    mods = modules or latent_modules(lm)
    handles = []

    def first(x):
        return x[0] if isinstance(x, (tuple, list)) else x

    def post(name):
        return lambda _m, _a, out: on_capture(name, first(out))

    def pre(name):
        return lambda _m, args, kwargs: on_capture(name, args[0] if args else kwargs["hidden_states"])

    def stop(_m, _a, out):
        on_capture(la.FINAL_NORM, first(out))
        raise _Stop

    try:
        for L in range(lm.n_layers):
            b = f"blocks.{L}.hook_"
            handles += [mods.attn_norm[L].register_forward_pre_hook(pre(b + "resid_pre"), with_kwargs=True),
                        lm.attn[L].register_forward_hook(post(b + "attn_out")),
                        mods.mlp_norm[L].register_forward_pre_hook(pre(b + "resid_mid"), with_kwargs=True),
                        lm.mlp[L].register_forward_hook(post(b + "mlp_out")),
                        lm.blocks[L].register_forward_hook(post(b + "resid_post"))]
        handles.append(mods.final_norm.register_forward_hook(stop))
        try:
            lm.model(input_ids=input_ids.to(lm.device), use_cache=False)
        except _Stop:
            pass
    finally:
        for h in handles:
            h.remove()


# ---------------------------------------------------------------------- documents and sample


def _documents(cfg: LatentConfig, lm) -> tuple[np.ndarray, list[dict]]:
    """[D, T] token ids (-1 = padding) of the first ``n_docs`` documents of at least
    ``seq_len`` tokens, cut to ``seq_len`` (shorter ones, longest first, only when the corpus
    has too few long ones), and a record per document."""
    from precompute.corpus import open_corpus

    n_text = cfg.seq_len - int(cfg.bos)
    full, short = [], []
    for i, doc in enumerate(open_corpus(cfg.corpus)):
        ids = lm.tokenize(doc.text)[:n_text]
        if ids:
            (full if len(ids) == n_text else short).append((i, doc.subset, ids))
        if len(full) >= cfg.n_docs:
            break
    docs = full + sorted(short, key=lambda r: -len(r[2]))[:cfg.n_docs - len(full)]
    if not docs:
        raise LatentError(f"corpus {cfg.corpus!r} has no document with any text for the latent capture")
    tokens = np.full((len(docs), cfg.seq_len), -1, dtype=np.int32)
    for r, (_, _, ids) in enumerate(docs):
        row = ([lm.bos_token_id] if cfg.bos else []) + ids
        tokens[r, :len(row)] = row
    return tokens, [{"doc": i, "subset": s} for i, s, _ in docs]


def _sample(tokens: np.ndarray, n: int, seed: int) -> np.ndarray:
    """[min(n, valid), 2] (document, position) pairs at positions >= 1, drawn uniformly
    without replacement, kept in draw order: every prefix is itself a uniform sample."""
    doc, pos = np.nonzero(tokens >= 0)
    keep = pos >= 1
    doc, pos = doc[keep], pos[keep]
    pick = np.random.default_rng(seed).permutation(len(doc))[:n]
    return np.stack([doc[pick], pos[pick]], axis=1).astype(np.int32)


# ---------------------------------------------------------------------- accumulation


class _Accumulator:
    """Consumes captures batch by batch: norms of every position, moments for the PCA fits
    (positions >= 1), the sample's vectors, per-position sums of the residual stream."""

    def __init__(self, n_layers: int, d: int, tokens: np.ndarray, sample: np.ndarray):
        self.n_layers, self.d = n_layers, d
        self.names = la.slot_names(n_layers)
        self.index = {name: k for k, name in enumerate(self.names)}
        K, (D, T) = len(self.names), tokens.shape
        self.valid = torch.from_numpy(tokens >= 0)
        self.norms = np.full((K, D, T), np.nan, dtype=np.float32)
        self.n = np.zeros(K, dtype=np.int64)
        self.ref = [None] * K                       # per-slot shift: the first batch's mean
        self.sum = np.zeros((K, d))
        self.scatter = np.zeros((K, d, d))
        self.sample = sample
        self.vecs = np.zeros((K, len(sample), d), dtype=np.float32)
        # residual stream: the embedding output and every block's output
        self.resid = [0] + [la.slot_of(n_layers, L, "resid_post") for L in range(n_layers)]
        self.pos_sum = np.zeros((len(self.resid), T, d))
        self.pos_count = self.valid.sum(0).numpy()
        self._last_post = None

    def start(self, d0: int, d1: int) -> None:
        self.d0, self.d1 = d0, d1
        self.mask = self.valid[d0:d1]
        fit = self.mask.clone()
        fit[:, 0] = False                           # position 0 is its own outlier: not in the fits
        self.fit = fit
        rows = np.flatnonzero((self.sample[:, 0] >= d0) & (self.sample[:, 0] < d1))
        self.rows = rows
        self.rdoc = torch.from_numpy(self.sample[rows, 0] - d0).long()
        self.rpos = torch.from_numpy(self.sample[rows, 1]).long()

    def __call__(self, name: str, h: torch.Tensor) -> None:
        if name.endswith("hook_resid_pre") and name != la.EMBED:
            # block L's attention-norm input must be block L-1's output: stored once
            if self._last_post is None or not torch.equal(h, self._last_post):
                raise LatentError(f"{name}: the attention norm's input differs from the previous block's output; "
                                  f"the latent capture supports sequential pre-norm blocks only")
            return
        k = self.index[name]
        if name.endswith("hook_resid_post"):
            self._last_post = h
        x = h.detach().float().cpu()
        B, T = x.shape[:2]
        nrm = x.norm(dim=-1)
        self.norms[k, self.d0:self.d1, :T] = torch.where(self.mask[:, :T], nrm, float("nan")).numpy()
        rows = x[self.fit[:, :T]].double()
        if self.ref[k] is None:       # shift by a reference mean: no cancellation in the scatter
            self.ref[k] = rows.mean(0)
        xs = (rows - self.ref[k]).float()
        self.sum[k] += xs.sum(0).double().numpy()
        self.scatter[k] += (xs.T @ xs).double().numpy()
        self.n[k] += len(rows)
        self.vecs[k, self.rows] = x[self.rdoc, self.rpos].numpy()
        if k in self.resid:
            r = self.resid.index(k)
            self.pos_sum[r, :T] += (x * self.mask[:, :T, None]).sum(0).double().numpy()

    def moments(self, k: int) -> tuple[int, np.ndarray, np.ndarray]:
        n, s = int(self.n[k]), self.sum[k]
        return n, self.ref[k].numpy() + s / n, self.scatter[k] - np.outer(s, s) / n


# ---------------------------------------------------------------------- the stage


def _estimate_bytes(cfg: LatentConfig, n_layers: int, d: int, S: int) -> dict[str, int]:
    K, D, T, c = 4 * n_layers + 2, cfg.n_docs, cfg.seq_len, cfg.n_components
    return {"norms.npy": K * D * T * 4, "tokens.npy": D * T * 4, "vectors.npy": K * cfg.vector_tokens * d * 2,
            "pca_layer.npy": n_layers * 5 * S * c * 4, "pca_global.npy": K * S * c * 4,
            "umap_layer.npy": n_layers * 5 * cfg.umap_tokens * 12, "position_pca.npy": (n_layers + 1) * T * c * 4,
            "components": (n_layers + 1) * c * d * 4, "docs.parquet": D * T * 6}


def model_atlas(path, lm, overwrite: bool = False) -> Path:
    """An atlas holding only the description of ``lm`` (no SAE layers), for a latent capture
    of a model without SAEs (``bench/bench_latent.py``; Gemma before its SAEs ship)."""
    from analysis.atlas import AtlasWriter, CorpusInfo, Manifest, ModelInfo

    manifest = Manifest(title=f"{lm.name} - latent geometry only",
                        model=ModelInfo(name=lm.name, source=lm.source, d_model=lm.d_model, n_layers=lm.n_layers,
                                        tokenizer=type(lm.tokenizer).__name__, vocab_size=len(lm.tokenizer),
                                        dtype=str(lm.dtype).removeprefix("torch."), hooks=lm.hook_tensors()),
                        corpus=CorpusInfo(name="none"), layers=[])
    with AtlasWriter(path, manifest, overwrite=overwrite):
        pass
    return Path(path)


def latent_done(atlas_path, config: LatentConfig) -> bool:
    """True when the atlas holds a latent capture made with the settings ``config`` asks for."""
    from analysis.atlas import open_atlas

    lat = open_atlas(atlas_path, verify="size").manifest.latent
    return lat is not None and lat.requested == config.model_dump(mode="json")


def run_latent(atlas_path, config: LatentConfig | None = None, lm=None, progress: bool = False) -> dict:
    """Capture, analyse and write the latent geometry of the atlas's model into the atlas.

    ``lm``: the loaded model (default: loaded from the manifest's model name and the dtype).
    Returns the summary stored as ``latent/latent.json``. Raises ``LatentError`` (one line)
    for a model without pre-norm blocks, an atlas of another model, or settings over budget.
    """
    from analysis.atlas import AtlasWriter, LatentInfo, open_atlas
    from precompute.models import load_model

    t0 = time.time()
    config = config or LatentConfig()
    atlas = open_atlas(atlas_path, verify="size")
    m = atlas.manifest
    if lm is None:
        pre = m.configs.get("precompute") or {}
        lm = load_model(pre.get("model", m.model.name), pre.get("device", "auto"),
                        config.dtype or m.model.dtype or "auto")
    if (lm.d_model, lm.n_layers) != (m.model.d_model, m.model.n_layers):
        raise LatentError(f"the atlas is of a {m.model.n_layers} x {m.model.d_model} model, {lm.name} is "
                          f"{lm.n_layers} x {lm.d_model}")
    cfg = config.resolved(lm, m)
    if cfg.dtype != str(lm.dtype).removeprefix("torch.") and cfg.dtype != "auto":
        raise LatentError(f"latent dtype {cfg.dtype} asked for, but the model given runs in {lm.dtype}; "
                          f"leave dtype unset to use the model as given")
    mods = latent_modules(lm)
    n_layers, d = lm.n_layers, lm.d_model

    tokens, docs = _documents(cfg, lm)
    cfg = cfg.model_copy(update={"n_docs": len(tokens)})
    sample = _sample(tokens, cfg.sample_tokens, cfg.seed)
    S = len(sample)
    est = _estimate_bytes(cfg, n_layers, d, S)
    budget = int(cfg.budget_mb * 2**20)
    if sum(est.values()) > budget:
        big = max(est, key=est.get)
        raise LatentError(f"the latent files would take about {sum(est.values()) / 2**20:.0f} MB, over the "
                          f"{cfg.budget_mb:g} MB budget (largest: {big}, {est[big] / 2**20:.0f} MB); lower "
                          f"n_docs / seq_len / vector_tokens or raise budget_mb")

    acc = _Accumulator(n_layers, d, tokens, sample)
    n_tok = int((tokens >= 0).sum())
    _log(progress, f"latent capture: {len(tokens)} documents x {cfg.seq_len} positions ({n_tok} tokens), "
                   f"{len(acc.names)} captures, {S} sampled tokens")
    for d0 in range(0, len(tokens), cfg.batch_size):
        d1 = min(d0 + cfg.batch_size, len(tokens))
        ids = torch.from_numpy(np.where(tokens[d0:d1] >= 0, tokens[d0:d1], lm.bos_token_id).astype(np.int64))
        acc.start(d0, d1)
        capture_latent(lm, ids, acc, mods)   # right padding: causal attention keeps valid positions exact
        _log(progress, f"latent capture: {d1}/{len(tokens)} documents")
    t_capture = time.time() - t0

    from threadpoolctl import threadpool_limits

    # small matrices: extra BLAS/OpenMP threads only spin against torch's pool (on two busy
    # cores the separation fits went from 0.1 s to 50 s per layer without this limit)
    with threadpool_limits(limits=1):
        files, summary = _analyse(cfg, acc, lm, n_layers, progress)
    files["tokens.npy"] = tokens
    files["sample.npy"] = sample
    files["norms.npy"] = acc.norms
    strings = [lm.token_strings(row[row >= 0]) for row in tokens]
    files["docs.parquet"] = _docs_table(docs, strings)
    summary.update(captures=acc.names, tensors=mods.tensors, n_tokens=n_tok, seconds_capture=round(t_capture, 1),
                   seconds_total=round(time.time() - t0, 1))

    with AtlasWriter.update(atlas_path) as w:
        for rel in [r for r in w.manifest.files if r.startswith("latent/")]:
            w.remove(rel)
        for name, value in files.items():
            w.put(f"latent/{name}", value)
        w.put_json("latent/latent.json", summary)
        # the summary records the size of latent/ including itself (to within a few bytes)
        size = sum((w.tmp / "latent" / name).stat().st_size for name in [*files, "latent.json"]) + 64
        summary.update(bytes=size, bytes_per_token=size / n_tok)
        w.put_json("latent/latent.json", summary)
        w.manifest.latent = LatentInfo(
            captures=acc.names, tensors=mods.tensors, n_docs=len(tokens), n_positions=cfg.seq_len, bos=cfg.bos,
            n_tokens=n_tok, sample_tokens=S, umap_tokens=min(cfg.umap_tokens, S), vector_tokens=min(cfg.vector_tokens, S),
            n_components=cfg.n_components, budget_bytes=budget, bytes=size, requested=config.model_dump(mode="json"))
        w.manifest.configs["latent"] = cfg.model_dump(mode="json")
    _log(progress, f"latent stage done in {time.time() - t0:.0f} s ({size / 2**20:.1f} MB, "
                   f"{size / n_tok:.0f} bytes per captured token)")
    return summary


def _docs_table(docs: list[dict], strings: list[list[str]]):
    import pandas as pd

    return pd.DataFrame({"doc": np.array([r["doc"] for r in docs], dtype=np.int64),
                         "subset": [r["subset"] for r in docs], "tokens": strings})


def _analyse(cfg: LatentConfig, acc: _Accumulator, lm, n_layers: int, progress: bool) -> tuple[dict, dict]:
    """Fits, projections, UMAP, separation, norms and positional structure from the accumulator."""
    c = cfg.n_components
    S = len(acc.sample)
    K = len(acc.names)
    moments = [acc.moments(k) for k in range(K)]
    per_layer = [[la.slot_of(n_layers, L, kind) for kind in la.KINDS] for L in range(n_layers)]

    # per layer: one centred fit on that block's five captures pooled, applied uncentred
    pca_layer = np.zeros((n_layers, 5, S, c), dtype=np.float32)
    comp_layer = np.zeros((n_layers, c, lm.d_model), dtype=np.float32)
    evr_layer = []
    for L, slots in enumerate(per_layer):
        fit = la.pca_from_moments(*la.pool_moments([moments[k] for k in slots]), n_components=c)
        comp_layer[L] = fit["components"]
        evr_layer.append(fit["explained_variance_ratio"].tolist())
        for j, k in enumerate(slots):
            pca_layer[L, j] = acc.vecs[k] @ fit["components"].T
    # all layers at once: one fit on every capture but the final norm's
    gfit = la.pca_from_moments(*la.pool_moments(moments[:-1]), n_components=c)
    pca_global = np.einsum("ksd,cd->ksc", acc.vecs, gfit["components"]).astype(np.float32)

    files: dict[str, Any] = {"pca_layer.npy": pca_layer, "components_layer.npy": comp_layer,
                             "pca_global.npy": pca_global,
                             "components_global.npy": gfit["components"].astype(np.float32)}
    U = min(cfg.umap_tokens, S)
    if U:
        umap_layer = np.zeros((n_layers, 5, U, 3), dtype=np.float32)
        for L, slots in enumerate(per_layer):
            X = np.concatenate([acc.vecs[k, :U] for k in slots])
            umap_layer[L] = la.cosine_umap(X, 3, cfg.umap_n_neighbors, cfg.umap_min_dist, cfg.seed).reshape(5, U, 3)
            _log(progress, f"latent UMAP: layer {L}")
        files["umap_layer.npy"] = umap_layer
    V = min(cfg.vector_tokens, S)
    if V:
        v = acc.vecs[:, :V]
        n = np.linalg.norm(v, axis=-1, keepdims=True)
        files["vectors.npy"] = (v / np.where(n == 0, 1.0, n)).astype(np.float16)

    n_sep = min(cfg.separation_tokens, S)
    separation = []
    for L in range(n_layers):
        a = acc.vecs[la.slot_of(n_layers, L, "attn_out"), :n_sep]
        b = acc.vecs[la.slot_of(n_layers, L, "mlp_out"), :n_sep]
        separation.append(la.separation(a, b, cv=cfg.cv, random_state=cfg.seed))
        _log(progress, f"latent separation: layer {L}: accuracy {separation[-1]['raw']['accuracy']:.3f}")

    ns = la.norm_summary(acc.norms)
    norms = {name: {"median": float(ns["median"][k]), "p90": float(ns["p90"][k]), "pos0": float(ns["pos0"][k]),
                    "pos0_ratio": float(ns["ratio"][k])} for k, name in enumerate(acc.names)}

    # positional structure of the residual stream: per-position means over documents
    with np.errstate(invalid="ignore", divide="ignore"):
        means = acc.pos_sum / acc.pos_count[None, :, None]
    have = acc.pos_count > 0
    position_pca = np.zeros((len(acc.resid), cfg.seq_len, c), dtype=np.float32)
    positional = []
    for r, k in enumerate(acc.resid):
        P = means[r, 1:][have[1:]]
        fit = la.fit_pca(P, c)
        position_pca[r][have] = (means[r][have] @ fit["components"].T).astype(np.float32)
        ok = len(P) >= 8
        positional.append({"capture": acc.names[k],
                           "helix": la.helix_score(P) if ok else None,
                           "tail": la.early_tail(P) if ok else None})
    files["position_pca.npy"] = position_pca
    learned = None
    pe = _position_embedding(lm)
    if pe is not None:      # learned absolute positions (GPT-2's wpe): the published helix
        W = pe.weight.detach().float().cpu().numpy()[:cfg.seq_len]
        learned = {"module": next(n for n, mod in lm.model.named_modules() if mod is pe), "helix": la.helix_score(W)}

    summary = {
        "method": "Ning & Rangaraju, arXiv 2511.21594 (METHODS 4)",
        "fit_positions": "PCA fitted with centring on every captured token at positions >= 1, applied "
                         "uncentred (X @ components.T); position 0 in the norms only",
        "kinds": list(la.KINDS),
        "pca_layer_explained_variance_ratio": evr_layer,
        "pca_global_explained_variance_ratio": gfit["explained_variance_ratio"].tolist(),
        "separation_tokens": n_sep, "separation": separation,
        "norms": norms, "positional": positional, "learned_position_embedding": learned,
    }
    return files, summary


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(f"[saegeo latent {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
