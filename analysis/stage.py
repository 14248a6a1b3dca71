"""The geometry stage: derived files of docs/atlas.md from an atlas's raw statistics.

    from analysis.stage import run_geometry, GeometryConfig
    run_geometry("my-atlas", GeometryConfig())          # published settings

``compute_layer`` does one layer on arrays in memory (the synthetic generator and tests call
it); ``run_geometry`` reads every layer of an atlas, computes, aligns layouts across layers
(analysis.layout) and writes each layer through its own atomic ``AtlasWriter.update``.
Parts whose inputs a layer lacks are skipped and listed in ``LayerInfo.computed`` as
``"skipped:<part> (<reason>)"``; parts done are listed by name.
"""
from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from analysis import atom, brain, galaxy, layout
from analysis.artefacts import Atom, Brain, Galaxy
from analysis.atlas import AtlasWriter, LayerFiles, open_atlas

PARTS = ("layout", "neighbors", "galaxy", "brain", "crystals", "atom")


class GeometryConfig(BaseModel):
    """Every parameter of the geometry stage; defaults = published settings (METHODS 1-3)."""

    model_config = ConfigDict(extra="forbid")   # a mistyped setting is an error, not ignored

    layers: list[int] | None = None                      # None = every layer
    # brain (METHODS 1)
    affinities: list[str] = Field(default_factory=lambda: list(brain.AFFINITIES))
    ks: list[int] = Field(default_factory=lambda: list(brain.KS))
    random_state: int = 42
    n_init: int = 10
    # k-means restarts from k = large_k_from on (None: n_init at every k, as the published code;
    # the "published" profile sets it). At large k many near-equal optima exist and ten
    # restarts pick among them no better than one (bench/bench_clustering.py): on 8,192 planted
    # features, all eleven k, the sweep agreed with per-k SpectralClustering as closely as per-k
    # agrees with itself under another seed (median difference 0.000, smallest -0.011) and took
    # 51 s against per-k's 1,313 s (25.7x), against 183 s (7.2x) with ten restarts at every k.
    n_init_large_k: int | None = 1
    large_k_from: int = 128
    per_k: bool = False                                  # True: published per-k recomputation
    n_permutations: int = 100
    permutation_seed: int = 0
    regression_ks: list[int] = Field(default_factory=lambda: [2])  # published figure: k = 2
    n_random: int = 100                                  # random-direction draws
    train_fraction: float = 0.8
    regression_max_iter: int = 1000
    max_brain_features: int = 20000   # dense n x n affinities: 1.6 GB each (float32) at 20k
    # From this many live features on, each affinity is built as float32 (values computed in
    # float64, stored rounded) and embedded by Lanczos iteration in place (brain.embed
    # solver="lanczos"), one affinity at a time. sklearn's path factorises a dense float64
    # copy instead: at 16,384 features that took 173 s and 11 GB per affinity against about
    # 1 GB here. Below it the stage computes exactly as before (float64, sklearn's ARPACK).
    low_memory_from: int = 8192
    n_lobe_tokens: int = 10
    # layout
    neighbors_k: int = 16
    umap: bool = True
    umap_n_neighbors: int = 15
    umap_min_dist: float = 0.1
    umap_seed: int = 42
    # galaxy (METHODS 3)
    fit_ranks: tuple[int, int] = galaxy.RANKS
    isotropic_seed: int = 0
    entropy_samples: int = 5000
    entropy_components: int = 100
    entropy_k: int = 1
    entropy_bootstrap: int = 30
    entropy_seed: int = 0
    entropy_estimator: str = "textbook"                  # or "published"
    entropy_gaussian_null: bool = True                   # same estimator on a Gaussian of the same n, d
    # atom (METHODS 2)
    crystals: bool = True
    # The decoder-cloud search is this project's extension (no published setting). On the
    # SmolLM2 demo decoders almost no edge pair reaches cos 0.9, while cos >= 0.3 among 20
    # neighbours gives ~50x more faces than covariance-matched random clouds: keep the
    # candidates and let the explorer's threshold slider do the filtering.
    crystal_options: dict[str, Any] = Field(default_factory=lambda: {"min_cos": 0.3, "n_neighbors": 20})
    # The search tests every pair of edges: (F m)^2 d work and, at cos >= 0.3 in a
    # low-dimensional cloud, millions of chance faces. At 16,384 features (d = 128) with 20
    # neighbours one search would take ~9 min and each of the baseline draws as long, against
    # 130 s with 10 neighbours (5.5 M faces, of which the 10 planted ones are the faces above
    # cos 0.9). Above this width the neighbours per feature shrink as F grows,
    # n_neighbors * crystal_full_width / F (at least crystal_min_neighbors), which keeps the
    # number of edges that of a crystal_full_width cloud; the count used is in atom.json
    # (crystal_search.n_neighbors). None = always the configured n_neighbors.
    crystal_full_width: int | None = 4096
    crystal_min_neighbors: int = 5
    # random draws: their spread gives each count a z-score (one draw costs about as much as
    # the search itself)
    crystal_baseline_repeats: int = 3
    crystal_baseline_match: str = "covariance"        # or "norms"
    crystal_thresholds: list[float] = Field(default_factory=lambda: list(atom.CRYSTAL_THRESHOLDS))
    lda_shrinkage: str | None = None                   # None = published plain LDA; "auto" = Ledoit-Wolf
    # wide SAEs (issue 12; analysis/wide.py). Layers with more features than wide_from take
    # the wide path, in which no F x F array exists: lobes from sparse kNN affinities on the
    # stored co-occurrence pairs, UMAP fitted on a sample, approximate (IVF) neighbours,
    # the regression test on a sample of features, crystals among the most frequent features
    # (wide_crystal_features). At and below it the published dense path runs unchanged.
    wide_from: int = 16384
    wide_knn: int = 15                 # neighbours per feature of each kNN affinity graph
    wide_n_init: int = 1               # k-means restarts per k on the sparse embeddings
    wide_umap_sample: int = 10000      # features UMAP is fitted on
    wide_umap_extend: str = "interpolate"   # or "transform" (umap's own); bench_wide_memory compares
    # decoder-cosine neighbours of a wide layer (cards, geometry kNN graph): "nndescent" (NN-descent
    # with wide_neighbor_candidates per feature; bench/bench_wide_neighbors.py measured recall 0.97
    # at 65,536 x 128 and 0.89 at 262,144 x 128) or "ivf" (inverted file, sqrt(F) cells,
    # wide_neighbor_probe probed; recall 0.34 and 0.24 there with 8 probed)
    wide_neighbor_method: Literal["nndescent", "ivf"] = "nndescent"
    wide_neighbor_candidates: int = 48
    wide_neighbor_probe: int = 8
    wide_regression_sample: int = 20000     # features of the logistic-regression test
    wide_sample_seed: int = 0
    # crystals of a wide layer: the search runs among this many of its most frequently firing
    # features (the explorer draws the most frequent ones as points), with the neighbours and
    # baseline of a layer of that width
    wide_crystal_features: int = 4096


# --------------------------------------------------------------------------- one layer

def _notify(progress, step: str) -> None:
    if progress is not None:
        progress(step)


def compute_brain(W, C, T, config: GeometryConfig, blocks=None, block_subset=None,
                  subsets: list[str] | None = None, top_tokens: pd.DataFrame | None = None,
                  progress=None) -> dict:
    """Lobes of every affinity, brain.json (a ``Brain``), lobe_subsets and lobe_tokens tables."""
    live = ~brain.dead_features(C)
    idx = np.flatnonzero(live)
    files: dict[str, Any] = {}
    labels: dict[str, np.ndarray] = {}
    ks = brain.sweep_ks(idx.size, config.ks)
    large = idx.size >= config.low_memory_from
    dtype, solver = (np.float32, "lanczos") if large else (np.float64, "sklearn")
    for name in [*config.affinities, "geometry"]:
        _notify(progress, f"brain: {name} affinity and clustering ({idx.size} live features, k <= {max(ks, default=0)})")
        if name != "geometry":
            A = brain.cooccurrence_affinity(C, T, name, live, dtype)
        elif large:
            A = brain.geometry_affinity(np.asarray(W)[idx], dtype)
        else:   # the same values; kept as before so small layers stay bit for bit
            A = brain.geometry_affinity(W)[np.ix_(idx, idx)]
        lab = np.full((len(ks), live.size), -1, dtype=np.int16)
        if ks:
            lab[:, idx] = brain.spectral_sweep(A, ks, config.random_state, config.n_init, config.per_k,
                                               solver=solver, n_init_large_k=config.n_init_large_k,
                                               large_k_from=config.large_k_from)
        del A
        labels[name] = lab
        files[f"lobes_{name}.npy"] = lab
    _notify(progress, "brain: AMI and regression tests")
    files.update(_brain_tests(labels, ks, live, idx, W, config, T))
    files.update(_lobe_tables(labels, ks, blocks, block_subset, subsets, top_tokens, config, progress))
    return files


def _brain_tests(labels: dict[str, np.ndarray], ks: list[int], live: np.ndarray, idx: np.ndarray, W,
                 config: GeometryConfig, T: int, reg_idx: np.ndarray | None = None) -> dict:
    """brain.json: per affinity and k, the AMI of its lobes with the geometry lobes over the
    live features ``idx``, and (at ``regression_ks``) the regression test from the decoder rows
    of the features ``reg_idx`` (default: all of ``idx``) to their lobes."""
    reg_idx = idx if reg_idx is None else reg_idx
    Wl = np.asarray(W, dtype=np.float64)[reg_idx]
    results = {}
    for name in config.affinities:
        rows = []
        for row, k in enumerate(ks):
            ami = brain.ami_test(labels["geometry"][row, idx], labels[name][row, idx],
                                 config.n_permutations, config.permutation_seed)
            reg = None
            if k in config.regression_ks:
                reg = brain.regression_test(Wl, labels[name][row, reg_idx], config.n_random,
                                            config.train_fraction, config.permutation_seed,
                                            config.regression_max_iter)
            rows.append({"k": k, "ami": ami, "regression": reg})
        results[name] = rows
    return {"brain.json": Brain(
        ks=ks, affinities=list(config.affinities), lobe_affinities=[*config.affinities, "geometry"],
        n_features=int(live.size), n_live=int(idx.size), dead=np.flatnonzero(~live).tolist(), n_blocks=int(T),
        results=results)}


def compute_brain_wide(W, C, T, config: GeometryConfig, neighbors: tuple[np.ndarray, np.ndarray],
                       blocks=None, block_subset=None, subsets: list[str] | None = None,
                       top_tokens: pd.DataFrame | None = None, progress=None) -> tuple[dict, list[str]]:
    """compute_brain's files for a layer wider than ``config.wide_from`` (analysis/wide.py).

    ``C`` is a sparse co-occurrence (full or top partners); each co-occurrence affinity is
    evaluated on its stored pairs and reduced to a ``wide_knn``-nearest-neighbour graph, the
    geometry affinity is the angular similarity on the decoder-cosine ``neighbors`` (indices,
    cosines [F, m]); each graph gets one sparse spectral embedding and k-means per k. The
    AMI test runs on every live feature; the regression test on ``wide_regression_sample``
    of them (in feature order, so its first-80 % split is the published rule on the sample).
    Returns ``(files, notes)`` - notes for ``LayerInfo.computed``.
    """
    from analysis import wide

    live = ~brain.dead_features(C)
    idx = np.flatnonzero(live)
    ks = brain.sweep_ks(idx.size, config.ks)
    files: dict[str, Any] = {}
    labels: dict[str, np.ndarray] = {}
    pos = np.full(live.size, -1, np.int64)
    pos[idx] = np.arange(idx.size)
    for name in [*config.affinities, "geometry"]:
        _notify(progress, f"brain (wide): {name} kNN affinity and clustering ({idx.size} live features, "
                          f"k <= {max(ks, default=0)})")
        if name != "geometry":
            G = wide.knn_graph(wide.pair_affinity(C, T, name, live), config.wide_knn)
        else:
            nb, nc = neighbors
            nb, nc = nb[idx, :config.wide_knn], nc[idx, :config.wide_knn]
            # renumbered among live features; dead or missing neighbours (-1) dropped
            nb = np.where(nb >= 0, pos[np.maximum(nb, 0)], -1)
            G = wide.geometry_knn(W, nb, nc)
        lab = np.full((len(ks), live.size), -1, dtype=np.int16)
        if ks:
            lab[:, idx] = wide.sparse_spectral_sweep(G, ks, config.random_state, config.wide_n_init)
        del G
        labels[name] = lab
        files[f"lobes_{name}.npy"] = lab
    _notify(progress, "brain (wide): AMI and regression tests")
    rng = np.random.default_rng(config.wide_sample_seed)
    reg_rows = np.sort(rng.choice(idx.size, size=min(config.wide_regression_sample, idx.size), replace=False))
    files.update(_brain_tests(labels, ks, live, idx, W, config, T, reg_idx=idx[reg_rows]))
    files.update(_lobe_tables(labels, ks, blocks, block_subset, subsets, top_tokens, config, progress))
    notes = [f"wide:brain (sparse {config.wide_knn}-NN affinities on {int(sp_nnz(C))} stored co-occurrence "
             f"entries; k-means n_init {config.wide_n_init}; regression on {reg_rows.size} sampled features)"]
    return files, notes


def sp_nnz(C) -> int:
    return int(C.nnz) if hasattr(C, "nnz") else int(np.count_nonzero(C))


def _lobe_tables(labels, ks, blocks, block_subset, subsets, top_tokens, config, progress) -> dict:
    """lobe_subsets.parquet and lobe_tokens.parquet from every affinity's labels."""
    files: dict[str, Any] = {}
    if blocks is not None and block_subset is not None:
        _notify(progress, "brain: lobe subsets")
        names = list(subsets) if subsets else [str(s) for s in range(int(np.max(block_subset)) + 1)]
        rows = []
        for name, lab in labels.items():
            for row, k in enumerate(ks):
                tally = brain.lobe_subset_tally(blocks, block_subset, lab[row], len(names))
                for lobe, s in zip(*np.nonzero(tally)):
                    rows.append((name, k, int(lobe), names[s], int(tally[lobe, s])))
        files["lobe_subsets.parquet"] = pd.DataFrame(
            rows, columns=["affinity", "k", "lobe", "subset", "blocks"]).astype(
            {"k": np.int32, "lobe": np.int32, "blocks": np.int64})
    if top_tokens is not None:
        parts = []
        for name, lab in labels.items():
            for row, k in enumerate(ks):
                t = brain.lobe_top_tokens(top_tokens, lab[row], config.n_lobe_tokens)
                t.insert(0, "k", np.int32(k))
                t.insert(0, "affinity", name)
                parts.append(t)
        files["lobe_tokens.parquet"] = pd.concat(parts, ignore_index=True)
    return files


def compute_galaxy(W, config: GeometryConfig) -> dict:
    """spectrum.npy and galaxy.json (a ``Galaxy``)."""
    spec = galaxy.spectrum(W)
    fit = galaxy.power_law_fit(spec, config.fit_ranks)
    iso = galaxy.isotropic_baseline(W.shape[0], W.shape[1], config.isotropic_seed, config.fit_ranks)
    ent = galaxy.clustering_entropy(W, config.entropy_samples, config.entropy_components,
                                    config.entropy_k, config.entropy_bootstrap, config.entropy_seed,
                                    config.entropy_estimator, config.entropy_gaussian_null)
    return {"spectrum.npy": spec,
            "galaxy.json": Galaxy(power_law=fit, isotropic=iso, entropy=ent, estimator=config.entropy_estimator)}


def _most_frequent(fire_count, C, n: int, m: int) -> np.ndarray:
    """Ids of the ``m`` most frequent of ``n`` features, ascending: by ``fire_count``, else by
    the block counts on the diagonal of ``C``, else the first ``m``; ties to the lower id."""
    if fire_count is None and C is not None:
        fire_count = C.diagonal()
    if fire_count is None:
        return np.arange(min(m, n))
    order = np.argsort(-np.asarray(fire_count, dtype=np.float64), kind="stable")
    return np.sort(order[:m])


def _crystal_options(config: GeometryConfig, n_features: int) -> dict[str, Any]:
    """The crystal search's options for a layer of this width (see crystal_full_width)."""
    options = dict(config.crystal_options)
    full = config.crystal_full_width
    m = options.get("n_neighbors", 10)  # crystal_search's own default
    if full is not None and n_features > full:
        options["n_neighbors"] = max(min(config.crystal_min_neighbors, m), round(m * full / n_features))
    return options


def compute_layer(W: np.ndarray, config: GeometryConfig | None = None, *, C=None, T: int | None = None,
                  blocks=None, block_subset=None, subsets: list[str] | None = None,
                  top_tokens: pd.DataFrame | None = None, word: dict | None = None, fire_count=None,
                  previous: tuple[np.ndarray, dict] | None = None, progress=None) -> tuple[dict, list[str]]:
    """All derived files of one layer from arrays in memory.

    Parameters
    ----------
    W : decoder rows [F, d]. Everything else is optional; parts lacking their inputs are
        skipped: brain needs ``C`` (co-occurrence [F, F]) and ``T`` (blocks); lobe subsets
        also ``blocks`` [B, F] and ``block_subset`` [B]; lobe tokens ``top_tokens``; atom.json
        ``word`` = dict(h_in, h_out, tasks, input_tokens, output_tokens); a wide layer's
        crystals ``fire_count`` [F] (else the block counts of ``C``, else feature order).
    previous : (decoder, files) of the preceding layer, to align its layouts to.
    progress : optional ``progress(step)`` called with a short description as each step
        starts (a 16k-feature layer takes minutes).

    Returns ``(files, computed)``: file name (as in docs/atlas.md) -> array / table / model
    of analysis.artefacts (the JSON files), and the list for ``LayerInfo.computed``.
    """
    config = config or GeometryConfig()
    W = np.asarray(W, dtype=np.float32)
    files: dict[str, Any] = {}
    computed: list[str] = []

    wide_layer = W.shape[0] > config.wide_from
    _notify(progress, "layout: PCA" + (" and UMAP" if config.umap else ""))
    layouts = {"coords_pca.npy": (layout.pca_coords(W), False)}
    if config.umap and wide_layer:
        from analysis import wide

        layouts["coords_umap.npy"] = (wide.umap_sampled(W, config.wide_umap_sample, config.wide_umap_extend,
                                                        config.umap_n_neighbors, config.umap_min_dist,
                                                        config.umap_seed), True)
        computed.append(f"wide:umap (fitted on {min(config.wide_umap_sample, W.shape[0])} sampled features, "
                        f"extended by {config.wide_umap_extend})")
    elif config.umap:
        layouts["coords_umap.npy"] = (layout.umap_coords(W, config.umap_n_neighbors, config.umap_min_dist,
                                                         config.umap_seed), True)
    else:
        computed.append("skipped:umap (disabled in config)")
    for name, (Y, rotate) in layouts.items():
        prev = (previous[0], previous[1][name]) if previous is not None and name in previous[1] else None
        files[name] = layout.align_one(W, Y, prev, rotate)
    computed.append("layout")

    # one neighbour table serves the card (neighbors_k) and the crystal search's edges
    _notify(progress, "neighbours")
    crystal_options = _crystal_options(config, W.shape[0])
    n_crystal = crystal_options.get("n_neighbors", 0) if config.crystals else 0
    if wide_layer:
        from analysis import wide

        K = max(config.neighbors_k, config.wide_knn)
        if config.wide_neighbor_method == "ivf":
            nb, nc = wide.ivf_neighbors(W, K, n_probe=config.wide_neighbor_probe, random_state=config.wide_sample_seed)
            how = f"IVF probing {config.wide_neighbor_probe} of {int(np.sqrt(W.shape[0]))} cells"
        else:
            nb, nc = wide.nndescent_neighbors(W, K, config.wide_neighbor_candidates, config.wide_sample_seed)
            how = f"NN-descent, {config.wide_neighbor_candidates} candidates per feature"
        recall = wide.neighbor_recall(W, nb[:, :config.neighbors_k], 200, config.wide_sample_seed)
        computed.append(f"wide:neighbors (approximate, {how}; recall {recall:.3f} on 200 features)")
    else:
        nb, nc = layout.neighbors(W, max(config.neighbors_k, n_crystal))
    files["neighbors.npy"], files["neighbors_cos.npy"] = nb[:, :config.neighbors_k], nc[:, :config.neighbors_k]
    computed.append("neighbors")

    _notify(progress, "galaxy: spectrum and entropy")
    files.update(compute_galaxy(W, config))
    computed.append("galaxy")

    if C is None or T is None:
        computed.append("skipped:brain (no cooc.npz)")
    elif wide_layer:
        brain_files, notes = compute_brain_wide(W, C, T, config, (nb, nc), blocks, block_subset, subsets,
                                                top_tokens, progress)
        files.update(brain_files)
        computed += ["brain", *notes]
    elif W.shape[0] > config.max_brain_features:
        computed.append(f"skipped:brain ({W.shape[0]} features > max_brain_features)")
    else:
        files.update(compute_brain(W, C, T, config, blocks, block_subset, subsets, top_tokens, progress))
        computed.append("brain")

    atom_json: dict[str, Any] = {}
    if not config.crystals:
        computed.append("skipped:crystals (disabled in config)")
    else:
        # The edge-pair search and its baseline draws grow as (F m)^2 (hours at 262k), so a
        # wide layer's search runs among its most frequent features, as a layer of that width
        sub, Wc, nbc = None, W, nb
        if wide_layer:
            sub = _most_frequent(fire_count, C, W.shape[0], config.wide_crystal_features)
            Wc, nbc = W[sub], None
            crystal_options = _crystal_options(config, sub.size)
            computed.append(f"wide:crystals (among the {sub.size} most frequently firing features)")
        _notify(progress, "crystals: search")
        crystals = atom.crystal_search(Wc, neighbors=nbc, **crystal_options)
        if sub is not None:
            for col in "abcd":
                crystals[col] = sub[crystals[col].to_numpy()]
        files["crystals.parquet"] = crystals
        atom_json["crystal_search"] = {**crystal_options, "n_faces": len(crystals),
                                       "n_edge_pairs": int(crystals.attrs.get("n_edge_pairs", 0)),
                                       "n_features": int(Wc.shape[0])}
        _notify(progress, f"crystals: {config.crystal_baseline_repeats} random baseline draws")
        atom_json["crystal_baseline"] = atom.crystal_baseline(
            Wc, n_repeats=config.crystal_baseline_repeats, match=config.crystal_baseline_match,
            thresholds=config.crystal_thresholds, **crystal_options)
        atom_json["crystal_counts"] = atom.crystal_significance(
            atom.crystal_counts(crystals, config.crystal_thresholds), atom_json["crystal_baseline"])
        computed.append("crystals")

    if word is None:
        computed.append("skipped:atom (no word pairs)")
    else:
        atom_json.update(atom.atom_report(word["h_in"], word["h_out"], word["tasks"], word["input_tokens"],
                                          word["output_tokens"], shrinkage=config.lda_shrinkage))
        computed.append("atom")
    if atom_json:
        files["atom.json"] = Atom.model_validate(atom_json)
    return files, computed


# --------------------------------------------------------------------------- atlas

def _layer_inputs(atlas, L: int) -> dict:
    f = LayerFiles(L)
    out: dict[str, Any] = {}
    if atlas.has(f.cooc):
        out["C"] = atlas.sparse(f.cooc)
        out["T"] = int(atlas.manifest.layer(L).n_blocks)
    if atlas.has(f.blocks) and atlas.has(f.block_subset):
        out["blocks"] = atlas.sparse(f.blocks)
        out["block_subset"] = np.asarray(atlas.array(f.block_subset))
        out["subsets"] = list(atlas.manifest.corpus.subsets)
    if atlas.has(f.top_tokens):
        out["top_tokens"] = atlas.table(f.top_tokens)
    if atlas.has(f.fire_count):
        out["fire_count"] = np.asarray(atlas.array(f.fire_count))
    if atlas.has("wordpairs/pairs.parquet") and atlas.has(f.word_h_in) and atlas.has(f.word_h_out):
        pairs = atlas.table("wordpairs/pairs.parquet")
        out["word"] = {"h_in": np.asarray(atlas.array(f.word_h_in)),
                       "h_out": np.asarray(atlas.array(f.word_h_out)),
                       "tasks": pairs["task"].to_numpy(),
                       "input_tokens": pairs["input_last_token"].tolist(),
                       "output_tokens": pairs["output_last_token"].tolist()}
    return out


def _printer(layer: int):
    import time

    start = time.perf_counter()

    def show(step: str) -> None:
        print(f"geometry: layer {layer} +{time.perf_counter() - start:6.1f}s {step}", flush=True)
    return show


def run_geometry(atlas_path, config: GeometryConfig | None = None, progress: bool = False,
                 on_layer=None) -> None:
    """Compute every derived file for every layer with a ``decoder.npy`` and write them.

    Layers are processed in ascending order so each layout is aligned to the previous
    layer's. Each layer is written as soon as it is done (one atomic ``AtlasWriter.update``
    per layer), so an explorer serving the atlas shows the layers' lobes one by one, and an
    interrupted run resumes at the first layer not yet done with the same config. The config
    is stored in ``manifest.configs["geometry"]``. ``on_layer(layer, i, n)`` is called before
    each layer is computed (progress reporting).
    """
    config = config or GeometryConfig()
    wanted = config.model_dump(mode="json")
    atlas = open_atlas(atlas_path)
    layers = sorted(L for L in atlas.layer_ids if atlas.has(LayerFiles(L).decoder)
                    and (config.layers is None or L in config.layers))
    for L in layers:
        topk, F = atlas.manifest.layer(L).cooc_topk, atlas.array(LayerFiles(L).decoder).shape[0]
        if topk is not None and F <= config.wide_from:
            raise ValueError(f"layer {L}: cooc.npz holds each feature's top {topk} co-occurrence partners only, "
                             f"which the dense path (up to wide_from = {config.wide_from} features) cannot use; "
                             f"set wide_from below {F}")
    if atlas.manifest.configs.get("geometry") != wanted:
        # other settings: nothing done so far counts, and a run interrupted from here on
        # must not take layers done with the old settings for done with the new ones
        with AtlasWriter.update(atlas_path) as w:
            for info in w.manifest.layers:
                info.computed = [c for c in info.computed if c != "geometry"]
            w.manifest.configs["geometry"] = wanted
        atlas = open_atlas(atlas_path, verify="size")
    previous = None
    for i, L in enumerate(layers):
        f = LayerFiles(L)
        W = np.asarray(atlas.array(f.decoder))
        if "geometry" in atlas.manifest.layer(L).computed:
            previous = (W, {name: np.asarray(atlas.array(f.file(name)))
                            for name in ("coords_pca.npy", "coords_umap.npy") if atlas.has(f.file(name))})
            continue
        if progress:
            print(f"geometry: layer {L}", flush=True)
        if on_layer is not None:
            on_layer(L, i, len(layers))
        files, computed = compute_layer(W, config, previous=previous, progress=_printer(L) if progress else None,
                                        **_layer_inputs(atlas, L))
        with AtlasWriter.update(atlas_path) as w:
            for name, value in files.items():
                w.put(f.file(name), value)
            info = w.manifest.layer(L)
            info.computed = [c for c in info.computed
                             if c not in PARTS and c != "umap" and not c.startswith("skipped:")
                             and c != "geometry"]
            info.computed += ["geometry", *computed]
        atlas = open_atlas(atlas_path, verify="size")
        previous = (W, {k: v for k, v in files.items() if k.startswith("coords_")})
