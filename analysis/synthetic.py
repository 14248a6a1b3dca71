"""Atlases with planted, known structure - for tests, benchmarks and trying the app.

Each layer of a synthetic atlas has
* **lobes**: features fall into ``n_lobes`` groups; directions of a group cluster around a
  common centre, and a group's features fire together in the blocks of "its" corpus
  subset, so geometry follows function by construction;
* **crystals**: ``n_parallelograms`` exact-up-to-noise parallelograms ``a - b = c - d``
  and ``n_trapezoids`` faces with parallel edges of length ratio ``trapezoid_ratio``;
* **a power-law spectrum**: the decoder's covariance eigenvalues are exactly
  ``λ_r ∝ r^-alpha``, alpha chosen per layer.

The planted truth is stored beside the arrays (``planted_lobes.npy``,
``planted_crystals.parquet``, ``planted.json``) so tests can score what the analyses find.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from analysis import wide as wide_mod
from analysis.atlas import AtlasWriter, CorpusInfo, LayerFiles, LayerInfo, Manifest, ModelInfo, SAEInfo

SUBSETS = ["code", "math", "prose", "chat", "legal", "science", "news", "web"]
_VOCAB = {
    "code": ["def", "return", "import", "self", "None", "lambda", "class", "yield", "try", "except"],
    "math": ["sum", "integral", "theta", "matrix", "prime", "sqrt", "lemma", "proof", "vector", "epsilon"],
    "prose": ["the", "river", "morning", "quiet", "house", "walked", "garden", "letter", "window", "shadow"],
    "chat": ["lol", "thanks", "hey", "yeah", "okay", "haha", "please", "sure", "cool", "sorry"],
    "legal": ["hereby", "licence", "warranty", "liability", "clause", "party", "terms", "shall", "notice", "rights"],
    "science": ["cell", "protein", "energy", "sample", "species", "neuron", "enzyme", "orbit", "carbon", "gene"],
    "news": ["minister", "election", "market", "reported", "police", "city", "official", "budget", "crisis", "vote"],
    "web": ["click", "login", "cookie", "page", "email", "download", "share", "menu", "home", "search"],
}


# Wider than this, a synthetic layer's presences and co-occurrence are drawn and kept sparse
# (make_layer); the geometry stage's own threshold is GeometryConfig.wide_from.
WIDE_FROM = 16384


def power_law_directions(rng: np.random.Generator, base: np.ndarray, alpha: float) -> np.ndarray:
    """Re-colour ``base`` [F, d] so its covariance eigenvalues are exactly ``r^-alpha``.

    Keeps the left singular vectors (hence any cluster structure), replaces the singular
    values. Returns float64 [F, d] with mean zero.
    """
    X = base - base.mean(0)
    U, _, Vt = np.linalg.svd(X, full_matrices=False)
    r = np.arange(1, Vt.shape[0] + 1)
    lam = r.astype(float) ** -alpha
    # cov = X^T X / (F - 1) has eigenvalues s^2 / (F - 1)
    s = np.sqrt(lam * (X.shape[0] - 1))
    return (U * s) @ Vt


def power_law_directions_gram(base: np.ndarray, alpha: float) -> np.ndarray:
    """``power_law_directions`` through the [d, d] Gram matrix instead of an SVD of [F, d].

    With ``X = U Σ Vᵀ``, ``U = X V Σ⁻¹``, so the re-coloured ``U S Vᵀ = X (V Σ⁻¹ S Vᵀ)``: one
    [F, d] x [d, d] product. Equal up to rounding (the SVD of 262k x 64 took ~20 s on two
    busy cores; this well under one); used for wide layers, whose values are new anyway.
    """
    X = base - base.mean(0)
    sig2, V = np.linalg.eigh(X.T @ X)
    sig2, V = sig2[::-1], V[:, ::-1]                  # descending, as the SVD's
    r = np.arange(1, V.shape[1] + 1)
    s = np.sqrt(r.astype(float) ** -alpha * (X.shape[0] - 1))
    return X @ ((V * (s / np.sqrt(np.maximum(sig2, 1e-300)))) @ V.T)


def _plant_crystals(rng, W, n_par, n_trap, ratio, noise):
    """Overwrite rows of W so that planted faces exist; returns the faces table."""
    F, d = W.shape
    used = rng.permutation(F)
    faces, pos = [], 0
    scale = np.median(np.linalg.norm(W, axis=1))
    for kind, n in (("parallelogram", n_par), ("trapezoid", n_trap)):
        for _ in range(n):
            a, b, c, d_ = used[pos:pos + 4]
            pos += 4
            # edge e of typical size, applied to b and to c
            e = rng.normal(size=d)
            e *= 0.25 * scale / np.linalg.norm(e)
            r = 1.0 if kind == "parallelogram" else ratio
            W[a] = W[b] + e + noise * scale * rng.normal(size=d) / np.sqrt(d)
            W[c] = W[d_] + r * e + noise * scale * rng.normal(size=d) / np.sqrt(d)
            faces.append((int(a), int(b), int(c), int(d_), kind, r))
    return pd.DataFrame(faces, columns=["a", "b", "c", "d", "kind", "planted_ratio"]).astype(
        {"a": "int32", "b": "int32", "c": "int32", "d": "int32"})


def make_layer(rng: np.random.Generator, n_features: int, d_model: int, n_lobes: int, alpha: float,
               n_blocks: int, block_size: int, n_parallelograms: int, n_trapezoids: int,
               trapezoid_ratio: float = 1.6, separation: float = 3.0, p_in: float = 0.35,
               p_out: float = 0.003, crystal_noise: float = 0.01, subsets: list[str] | None = None,
               wide_presences: tuple[float, float] = (12.0, 0.3), cooc_topk: int = 32) -> dict:
    """Arrays and tables of one synthetic layer (names as in docs/atlas.md).

    Up to ``WIDE_FROM`` features the block presences are drawn densely (each block, each
    feature: present with probability ``p_in`` or ``p_out`` times its rate) and ``cooc.npz``
    is the full ``Bᵀ B``. Wider layers are drawn sparsely: each feature is present in
    Poisson(``wide_presences[0]`` x rate) random blocks of its lobe's topic and
    Poisson(``wide_presences[1]`` x rate) random blocks of any topic, and ``cooc.npz`` keeps
    each feature's ``cooc_topk`` top partners (analysis.wide.top_partners), so no array of
    size F x F or T x F is ever dense.
    """
    subsets = subsets or SUBSETS[:n_lobes]
    F, d = n_features, d_model
    lobes = np.sort(rng.integers(0, n_lobes, size=F))
    lobes = rng.permutation(lobes).astype(np.int16)
    centres = rng.normal(size=(n_lobes, d)) * separation
    base = centres[lobes] + rng.normal(size=(F, d))
    # Faces are planted before re-colouring: the re-colouring is a linear map, which keeps
    # parallelograms parallelograms and trapezoids' edge ratios, and leaves the spectrum exact.
    faces = _plant_crystals(rng, base, n_parallelograms, n_trapezoids, trapezoid_ratio, crystal_noise)
    if F > WIDE_FROM:
        W = power_law_directions_gram(base, alpha).astype(np.float32)
    else:
        W = power_law_directions(rng, base, alpha).astype(np.float32)

    # Co-occurrence: every block belongs to one subset (= one lobe's topic); features of
    # that lobe are present with probability p_in * rate, all others with p_out * rate.
    rate = np.clip(rng.lognormal(0.0, 0.5, size=F), 0.2, 3.0)
    dead = rng.choice(F, size=max(1, F // 200), replace=False)
    rate[dead] = 0.0
    block_subset = rng.integers(0, len(subsets), size=n_blocks).astype(np.int16)
    topic = block_subset % n_lobes
    wide = F > WIDE_FROM
    if wide:
        present = _sparse_presence(rng, lobes, rate, topic, n_lobes, wide_presences)
        B = present.astype(np.int64)
        C = wide_mod.top_partners(present, cooc_topk)
    else:
        p = np.where(lobes[None, :] == topic[:, None], p_in, p_out) * rate[None, :]
        present = rng.random((n_blocks, F)) < np.clip(p, 0, 1)
        B = sp.csr_matrix(present, dtype=np.int64)
        # counts never exceed n_blocks: int32 halves the largest array of a wide layer (at 16k
        # features nearly every pair co-occurs somewhere, 195 M entries)
        C = (B.T @ B).tocsr().astype(np.int32)
    tokens_per_presence = 1 + rng.poisson(3.0, size=F)
    block_count = np.asarray(B.sum(0)).ravel()
    fire_count = (block_count * tokens_per_presence).astype(np.int64)
    S = len(subsets)
    subset_fire = np.zeros((F, S), np.int64)
    for s in range(S):
        subset_fire[:, s] = np.asarray(B[block_subset == s].sum(0)).ravel() * tokens_per_presence

    edges = np.geomspace(0.1, 100.0, 33).astype(np.float32)
    scale = rng.lognormal(0.5, 0.4, size=F)
    centres_h = np.log10(np.clip(scale, 0.11, 99))
    mids = np.log10(np.sqrt(edges[:-1] * edges[1:]))
    w = np.exp(-0.5 * ((mids[None, :] - centres_h[:, None]) / 0.25) ** 2)
    act_hist = np.floor(w / w.sum(1, keepdims=True) * fire_count[:, None]).astype(np.int64)

    lobe_vocab = [_VOCAB[subsets[i % S]] for i in range(n_lobes)]
    if wide:
        contexts, top_tokens = _wide_tables(rng, lobes, lobe_vocab, scale, fire_count, subsets)
    else:
        contexts, top_tokens = _tables(rng, lobes, lobe_vocab, scale, fire_count, subsets)
    return {
        "decoder.npy": W, "fire_count.npy": fire_count, "cooc.npz": C, "subset_fire.npy": subset_fire,
        "blocks.npz": sp.csr_matrix(present), "block_subset.npy": block_subset,
        "act_hist.npy": act_hist, "act_hist_edges.npy": edges,
        "contexts.parquet": contexts, "top_tokens.parquet": top_tokens,
        "planted_lobes.npy": lobes, "planted_crystals.parquet": faces,
        "planted.json": {"alpha": alpha, "n_lobes": n_lobes, "dead": sorted(int(i) for i in dead),
                         "trapezoid_ratio": trapezoid_ratio},
        "_n_tokens": int(n_blocks * block_size), "_n_blocks": int(n_blocks), "_subsets": subsets,
        "_cooc_topk": cooc_topk if wide else None,
    }


def _sparse_presence(rng, lobes, rate, topic, n_lobes, presences) -> sp.csr_matrix:
    """Bool CSR [T, F] block presences of a wide layer (see make_layer)."""
    F, T = lobes.size, topic.size
    by_topic = np.argsort(topic, kind="stable")
    start = np.searchsorted(topic[by_topic], np.arange(n_lobes))
    size = np.bincount(topic, minlength=n_lobes)
    n_in = rng.poisson(presences[0] * rate)
    n_in[size[lobes] == 0] = 0
    n_out = rng.poisson(presences[1] * rate)
    f_in = np.repeat(np.arange(F), n_in)
    lob = lobes[f_in]
    b_in = by_topic[start[lob] + (rng.random(f_in.size) * size[lob]).astype(np.int64)]
    f_out = np.repeat(np.arange(F), n_out)
    b_out = rng.integers(0, T, size=f_out.size)
    rows, cols = np.concatenate([b_in, b_out]), np.concatenate([f_in, f_out])
    P = sp.csr_matrix((np.ones(rows.size, np.int8), (rows, cols)), shape=(T, F))
    P.sum_duplicates()                  # a block drawn twice for a feature is one presence
    P.data[:] = 1
    return P.astype(bool)


def _wide_tables(rng, lobes, lobe_vocab, scale, fire_count, subsets):
    """contexts and top_tokens tables as ``_tables``, drawn vectorised (same layout)."""
    F, S = lobes.size, len(subsets)
    vocab = np.array(lobe_vocab, dtype=object)                 # [n_lobes, 10]
    V = vocab.shape[1]
    f = np.repeat(np.arange(F), 3)
    rank = np.tile(np.arange(3), F)
    words = rng.integers(0, V, size=(f.size, 9))
    words[:, 4] = f % V
    toks = vocab[lobes[f][:, None], words].tolist()
    names = np.array(subsets, dtype=object)
    contexts = pd.DataFrame({"feature": f, "rank": rank, "value": scale[f] * (3 - rank), "doc": f * 3 + rank,
                             "subset": names[lobes[f] % S], "tokens": toks, "peak": 4}).astype(
        {"feature": "int32", "rank": "int16", "value": "float32", "doc": "int64", "peak": "int16"})
    offs = np.array([0, 1, 2])
    tok = vocab[lobes[f], (f + offs[rank]) % V]
    top_tokens = pd.DataFrame({"feature": f, "rank": rank, "token": tok,
                               "count": np.maximum(fire_count[f] >> rank, 0)}).astype(
        {"feature": "int32", "rank": "int16", "count": "int64"})
    return contexts, top_tokens


def _tables(rng, lobes, lobe_vocab, scale, fire_count, subsets):
    """contexts and top_tokens tables of a layer: three contexts and three tokens per feature."""
    F, S = lobes.size, len(subsets)
    ctx_rows, tok_rows = [], []
    for f in range(F):
        vocab = lobe_vocab[lobes[f]]
        own = vocab[f % len(vocab)]
        for rank in range(3):
            toks = [vocab[j] for j in rng.integers(0, len(vocab), 9)]
            toks[4] = own
            ctx_rows.append((f, rank, float(scale[f] * (3 - rank)), int(f * 3 + rank), subsets[lobes[f] % S], toks, 4))
        for rank, tok in enumerate([own] + [vocab[(f + j) % len(vocab)] for j in (1, 2)]):
            tok_rows.append((f, rank, tok, int(max(fire_count[f] >> rank, 0))))
    contexts = pd.DataFrame(ctx_rows, columns=["feature", "rank", "value", "doc", "subset", "tokens", "peak"]).astype(
        {"feature": "int32", "rank": "int16", "value": "float32", "doc": "int64", "peak": "int16"})
    top_tokens = pd.DataFrame(tok_rows, columns=["feature", "rank", "token", "count"]).astype(
        {"feature": "int32", "rank": "int16", "count": "int64"})
    return contexts, top_tokens


# Planted lobes number a handful: k beyond 64 only splits noise, and the full published
# sweep (k up to 1024) would take minutes for an atlas meant to be tried at once.
SYNTHETIC_GEOMETRY = {"ks": [2, 3, 4, 8, 16, 32, 64], "n_random": 20}
# Wider layers (the wide path of analysis/wide.py) keep the atlas quick to build: phi (the
# published best) and geometry lobes only, the planted k and a few others, fewer draws, and
# no UMAP (on two busy cores even a 5,000-feature UMAP fit took 1-2 minutes, most of the
# whole atlas; pass geometry_config={..., "umap": True} for the sampled UMAP). The settings used are in the manifest (configs["geometry"]).
SYNTHETIC_GEOMETRY_WIDE = {"ks": [2, 4, 8, 16], "affinities": ["phi"], "n_random": 5, "n_permutations": 10,
                           "wide_umap_sample": 5000, "wide_neighbor_probe": 4, "wide_regression_sample": 5000,
                           "entropy_bootstrap": 5, "umap": False}


def make_synthetic_atlas(path: str | Path, n_features: int = 1200, d_model: int = 64,
                         layers: tuple[int, ...] = (0, 1, 2), alphas: tuple[float, ...] | None = None,
                         n_lobes: int = 4, n_blocks: int | None = None, block_size: int = 256,
                         n_parallelograms: int = 6, n_trapezoids: int = 4, seed: int = 0,
                         geometry: bool = True, geometry_config: dict | None = None,
                         overwrite: bool = False) -> Path:
    """Write a synthetic atlas to ``path`` and return it.

    ``alphas`` gives the planted power-law exponent per layer (default: rising then
    falling between 0.25 and 0.5, like the published middle-layer peak). With
    ``geometry=True`` the geometry stage (analysis.stage) adds every derived file.
    """
    rng = np.random.default_rng(seed)
    if n_blocks is None:
        # wide layers: one block per feature keeps ~12 features present per block (as drawn
        # by make_layer), so the co-occurring pairs - the work of top_partners - stay ~150
        # per feature
        n_blocks = 2000 if n_features <= WIDE_FROM else n_features
    if alphas is None:
        peak = (len(layers) - 1) / 2
        alphas = tuple(0.5 - 0.25 * abs(i - peak) / max(peak, 1) for i in range(len(layers)))
    if len(alphas) != len(layers):
        raise ValueError("alphas needs one value per layer")
    made = [make_layer(rng, n_features, d_model, n_lobes, a, n_blocks, block_size, n_parallelograms,
                       n_trapezoids) for a in alphas]
    subsets = made[0]["_subsets"]
    manifest = Manifest(
        title="synthetic atlas (planted structure)",
        synthetic=True,
        model=ModelInfo(name="synthetic", source="analysis.synthetic", d_model=d_model, n_layers=max(layers) + 1),
        corpus=CorpusInfo(name="synthetic", subsets=subsets, n_documents=n_blocks, n_tokens=n_blocks * block_size,
                          block_size=block_size, threshold=1.0),
        layers=[LayerInfo(layer=L, hook=f"blocks.{L}.hook_resid_post",
                          sae=SAEInfo(source="synthetic", width=n_features, d_in=d_model, architecture="synthetic"),
                          n_tokens=m["_n_tokens"], n_blocks=m["_n_blocks"], threshold=1.0, computed=["stats"],
                          cooc_topk=m["_cooc_topk"])
                for L, m in zip(layers, made)],
        configs={"synthetic": {"n_features": n_features, "d_model": d_model, "layers": list(layers),
                               "alphas": list(alphas), "n_lobes": n_lobes, "n_blocks": n_blocks,
                               "n_parallelograms": n_parallelograms, "n_trapezoids": n_trapezoids, "seed": seed}},
        notes=["Synthetic atlas: directions, counts and contexts are generated with planted structure, "
               "not measured on a model."],
    )
    with AtlasWriter(path, manifest, overwrite=overwrite) as w:
        for L, m in zip(layers, made):
            for name, value in m.items():
                if not name.startswith("_"):
                    w.put(LayerFiles(L).file(name), value)
    if geometry:
        from analysis import stage

        default = SYNTHETIC_GEOMETRY if n_features <= WIDE_FROM else SYNTHETIC_GEOMETRY_WIDE
        stage.run_geometry(path, stage.GeometryConfig(**(geometry_config or default)))
    return Path(path)
