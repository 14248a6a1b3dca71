"""Every published number of an atlas in one place: ``saegeo report ATLAS``.

``build_report(atlas)`` collects from the derived files (analysis.stage): AMI and z per
affinity and k, regression accuracy and z, the power-law alpha per layer with its 95 %
interval, the clustering entropy per layer, the LDA silhouette per dimension, and the
lobe-to-corpus-subset tables; and, when the atlas holds a latent capture (METHODS 4), per
layer the attention-versus-MLP separation with its shuffle baselines, the norms of every
capture kind, the position-0 ratio and the positional structure. ``format_report`` prints
them as tables in the style of the published figures; ``write_figures`` draws them with
matplotlib.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from analysis.atlas import LayerFiles

LOBE_TABLE_KS = (2, 3)  # published: two and three phi lobes


def _open(atlas):
    if isinstance(atlas, (str, Path)):
        from analysis.atlas import open_atlas
        return open_atlas(atlas)
    return atlas


def build_report(atlas) -> dict:
    """All numbers of an atlas (path or opened Atlas) as a JSON-ready dict keyed by layer."""
    atlas = _open(atlas)
    out: dict[str, Any] = {"atlas": str(atlas.path), "subsets": list(atlas.manifest.corpus.subsets),
                           "geometry_config": atlas.manifest.configs.get("geometry"), "layers": {}}
    for L in atlas.layer_ids:
        f = LayerFiles(L)
        entry: dict[str, Any] = {"computed": list(atlas.manifest.layer(L).computed)}
        g = atlas.galaxy(L)
        if g is not None:
            pl, ent = g.power_law, g.entropy
            entry["galaxy"] = {"alpha": pl.alpha, "ci95": pl.ci95, "intercept": pl.intercept,
                               "ranks": pl.ranks, "isotropic_slope": g.isotropic.slope,
                               "entropy": ent.entropy, "entropy_std": ent.entropy_std,
                               "negentropy": ent.negentropy, "negentropy_std": ent.negentropy_std,
                               "negentropy_ci95": ent.negentropy_ci95,
                               "null_negentropy": ent.null_negentropy,
                               "estimator": g.estimator or ent.estimator}
        bj = atlas.brain(L)
        if bj is not None:
            rows = {}
            for name, res in bj.results.items():
                rows[name] = [{"k": r.k, "ami": r.ami.ami, "ami_z": r.ami.z,
                               "perm_mean": r.ami.perm_mean, "perm_std": r.ami.perm_std,
                               **({"accuracy": r.regression.accuracy,
                                   "random_accuracy": r.regression.random_mean,
                                   "regression_z": r.regression.z} if r.regression else {})}
                              for r in res]
            entry["brain"] = {"ks": bj.ks, "n_live": bj.n_live, "n_dead": len(bj.dead), "results": rows}
        if atlas.has(f.lobe_subsets):
            t = atlas.table(f.lobe_subsets)
            tables = {}
            for (name, k), g in t[t["k"].isin(LOBE_TABLE_KS)].groupby(["affinity", "k"]):
                piv = g.pivot_table(index="subset", columns="lobe", values="blocks", aggfunc="sum", fill_value=0)
                tables.setdefault(name, {})[str(int(k))] = {
                    str(s): {str(int(lobe)): int(v) for lobe, v in row.items()} for s, row in piv.iterrows()}
            entry["lobe_subsets"] = tables
        aj = atlas.atom(L)
        if aj is not None and aj.lda is not None:
            lda = aj.lda
            entry["atom"] = {"dims": lda.dims, "silhouette": lda.silhouette,
                             "raw_silhouette": lda.raw_silhouette, "best_dim": lda.best_dim,
                             "distractor_r": aj.distractor.pearson_r if aj.distractor else None}
        if aj is not None and aj.crystal_search is not None:
            cs, cb, counts = aj.crystal_search, aj.crystal_baseline, aj.crystal_counts
            kinds = atlas.table(f.crystals)["kind"].value_counts()
            entry["crystals"] = {"n_faces": cs.n_faces, "parallelograms": int(kinds.get("parallelogram", 0)),
                                 "trapezoids": int(kinds.get("trapezoid", 0)), "min_cos": cs.min_cos,
                                 "baseline_faces": cb.faces_mean if cb else None,
                                 "baseline_match": cb.match if cb else None,
                                 "by_threshold": counts.model_dump(exclude_unset=True) if counts else None}
        out["layers"][str(L)] = entry
    if atlas.manifest.latent is not None:
        out["latent"] = latent_report(atlas)
    return out


def latent_report(atlas) -> dict:
    """The latent section (``latent/latent.json``) arranged per layer: separation raw and
    unit-normalised with shuffle baselines, median norm per capture kind (positions >= 1),
    position-0 ratio per kind, helix score and early tail of the residual stream."""
    from analysis.latent import KINDS, slot_of

    atlas = _open(atlas)
    lat, js = atlas.manifest.latent, atlas.json("latent/latent.json")
    n = atlas.manifest.model.n_layers
    names = lat.captures
    pos = {p["capture"]: p for p in js["positional"]}

    def norms(k):
        return js["norms"][names[k]]

    layers = []
    for L in range(n):
        slots = {kind: slot_of(n, L, kind) for kind in KINDS}
        post = pos.get(names[slots["resid_post"]], {})
        layers.append({
            "layer": L, "separation": js["separation"][L],
            "median_norm": {kind: norms(k)["median"] for kind, k in slots.items()},
            "pos0_ratio": {kind: norms(k)["pos0_ratio"] for kind, k in slots.items()},
            "pos0_norm": {kind: norms(k)["pos0"] for kind, k in slots.items()},
            "helix": (post.get("helix") or {}).get("score"), "tail": post.get("tail"),
            "pca_explained_variance_ratio": js["pca_layer_explained_variance_ratio"][L]})
    return {"n_docs": lat.n_docs, "n_positions": lat.n_positions, "bos": lat.bos, "n_tokens": lat.n_tokens,
            "separation_tokens": js["separation_tokens"], "bytes": lat.bytes, "bytes_per_token": lat.bytes / lat.n_tokens,
            "embed": norms(slot_of(n, 0, "embed")), "final_norm": norms(slot_of(n, 0, "final_norm")),
            "embed_helix": (pos.get(names[0], {}).get("helix") or {}).get("score"),
            "learned_position_embedding": js.get("learned_position_embedding"),
            "tensors": lat.tensors, "layers": layers}


def _f(x, fmt="{:.3f}") -> str:
    return "-" if x is None else fmt.format(x)


def format_report(report: dict) -> str:
    """Published-style plain-text tables of ``build_report``'s dict."""
    lines = [f"atlas {report['atlas']}", ""]
    layers = report["layers"]
    gal = {L: e["galaxy"] for L, e in layers.items() if "galaxy" in e}
    if gal:
        lines += ["Galaxy: power law log10 λ_r = a - α log10 r and clustering entropy",
                  f"{'layer':>5} {'alpha':>7} {'±95%':>7} {'ranks':>9} {'iso slope':>9} "
                  f"{'entropy':>10} {'negentropy':>11} {'±std':>7} {'±t·SE':>7} {'gauss null':>10} estimator"]
        for L, g in gal.items():
            lines.append(f"{L:>5} {_f(g['alpha']):>7} {_f(g['ci95']):>7} {str(g['ranks'][0]) + '-' + str(g['ranks'][1]):>9} "
                         f"{_f(g['isotropic_slope']):>9} {_f(g['entropy'], '{:.2f}'):>10} "
                         f"{_f(g['negentropy'], '{:.2f}'):>11} {_f(g['negentropy_std'], '{:.2f}'):>7} "
                         f"{_f(g.get('negentropy_ci95'), '{:.2f}'):>7} {_f(g.get('null_negentropy'), '{:.2f}'):>10} "
                         f"{g['estimator']}")
        lines += ["(gauss null: the same estimator's negentropy on a Gaussian sample of the same size and "
                  "component variances, whose true negentropy is 0 - the estimator's bias)", ""]
    for L, e in layers.items():
        if "brain" not in e:
            continue
        br = e["brain"]
        lines += [f"Brain, layer {L}: AMI(geometry, co-occurrence) [z vs {''}permutations]; "
                  f"{br['n_live']} live, {br['n_dead']} dead features"]
        lines.append(f"{'affinity':>16} " + " ".join(f"{'k=' + str(k):>15}" for k in br["ks"]))
        for name, rows in br["results"].items():
            lines.append(f"{name:>16} " + " ".join(
                f"{_f(r['ami']):>6} ({_f(r['ami_z'], '{:.0f}'):>5}σ)" for r in rows))
        reg = [(name, r) for name, rows in br["results"].items() for r in rows if "accuracy" in r]
        if reg:
            lines.append("Logistic regression, decoder direction -> co-occurrence lobe (balanced accuracy)")
            lines.append(f"{'affinity':>16} {'k':>5} {'accuracy':>9} {'random':>8} {'z':>8}")
            for name, r in reg:
                lines.append(f"{name:>16} {r['k']:>5} {_f(r['accuracy']):>9} {_f(r['random_accuracy']):>8} "
                             f"{_f(r['regression_z'], '{:.1f}'):>8}")
        lines.append("")
        for name, by_k in e.get("lobe_subsets", {}).items():
            if name != "phi":
                continue
            for k, table in by_k.items():
                lobes = sorted({lobe for row in table.values() for lobe in row}, key=int)
                lines.append(f"Blocks won per corpus subset, {name} lobes, k={k}, layer {L}")
                lines.append(f"{'subset':>20} " + " ".join(f"{'lobe ' + lb:>8}" for lb in lobes))
                for s, row in table.items():
                    lines.append(f"{s:>20} " + " ".join(f"{row.get(lb, 0):>8}" for lb in lobes))
                lines.append("")
    crys = {L: e["crystals"] for L, e in layers.items() if "crystals" in e}
    if crys:
        lines += ["Crystals on the decoder cloud (faces with edge cosine >= min_cos) against random directions",
                  f"{'layer':>5} {'faces':>7} {'parallelograms':>14} {'trapezoids':>10} {'min_cos':>7} {'random':>8}"]
        for L, c in crys.items():
            lines.append(f"{L:>5} {c['n_faces']:>7} {c['parallelograms']:>14} {c['trapezoids']:>10} "
                         f"{_f(c['min_cos'], '{:.2f}'):>7} {c['baseline_faces']:>8.1f}")
        lines.append("")
        for L, c in crys.items():
            t = c.get("by_threshold")
            if not t:
                continue
            lines += [f"Crystals by edge cosine, layer {L}: faces against {t['n_repeats']} random draw(s) "
                      f"(mean ± std, z = (faces - mean) / std)",
                      f"{'cos >=':>7} {'faces':>8} {'parallelograms':>14} {'random mean':>11} {'±std':>8} {'z':>8}"]
            for i, th in enumerate(t["thresholds"]):
                lines.append(f"{th:>7.2f} {t['faces'][i]:>8} {t['parallelograms'][i]:>14} "
                             f"{t['baseline_mean'][i]:>11.1f} {_f(t['baseline_std'][i], '{:.1f}'):>8} "
                             f"{_f(t['z'][i], '{:.1f}'):>8}")
            lines.append("")
    for L, e in layers.items():
        if "atom" in e:
            a = e["atom"]
            lines += [f"Atom, layer {L}: distractor PC1 vs last-token length difference r = {_f(a['distractor_r'])}",
                      f"  silhouette of task clusters (raw differences {_f(a['raw_silhouette'])})",
                      "  LDA dims: " + " ".join(f"{d:>6}" for d in a["dims"]),
                      "  silhouette: " + " ".join(f"{_f(s):>6}" for s in a["silhouette"]), ""]
    if "latent" in report:
        lines += format_latent(report["latent"])
    return "\n".join(lines)


def format_latent(lat: dict) -> list[str]:
    """Plain-text tables of ``latent_report``."""
    bos = "BOS first" if lat["bos"] else "no BOS"
    lines = [f"Latent geometry (Ning & Rangaraju, arXiv 2511.21594): {lat['n_docs']} documents x "
             f"{lat['n_positions']} positions ({bos}), {lat['n_tokens']} tokens; "
             f"{lat['bytes'] / 2**20:.1f} MB on disk ({lat['bytes_per_token']:.0f} bytes per token)", "",
             f"Attention vs MLP outputs per layer ({lat['separation_tokens']} tokens each): cross-validated linear "
             f"accuracy and silhouette, label-shuffled baseline in brackets",
             f"{'layer':>5} {'accuracy raw':>16} {'silhouette raw':>17} {'accuracy unit':>16} {'silhouette unit':>17}"]
    for e in lat["layers"]:
        r, u = e["separation"]["raw"], e["separation"]["unit"]
        lines.append(f"{e['layer']:>5} {r['accuracy']:>7.3f} ({r['accuracy_shuffled']:.3f}) "
                     f"{r['silhouette']:>7.3f} ({r['silhouette_shuffled']:>6.3f}) "
                     f"{u['accuracy']:>7.3f} ({u['accuracy_shuffled']:.3f}) "
                     f"{u['silhouette']:>7.3f} ({u['silhouette_shuffled']:>6.3f})")
    kinds = list(lat["layers"][0]["median_norm"])
    lines += ["", "Median norm per capture (positions >= 1) and position-0 ratio (norm at position 0 / median of "
                  "the others)",
              f"{'layer':>5} " + " ".join(f"{k:>10}" for k in kinds) + "   pos0 ratio: "
              + " ".join(f"{k:>10}" for k in ("resid_post", "attn_out", "mlp_out"))]
    e0 = lat["embed"]
    lines.append(f"{'embed':>5} {e0['median']:>10.2f}" + " " * (11 * (len(kinds) - 1)) + f"   {'':>12}{e0['pos0_ratio']:>10.1f}")
    for e in lat["layers"]:
        lines.append(f"{e['layer']:>5} " + " ".join(f"{e['median_norm'][k]:>10.2f}" for k in kinds) + "   "
                     + f"{'':>12}" + " ".join(f"{e['pos0_ratio'][k]:>10.1f}" for k in ("resid_post", "attn_out", "mlp_out")))
    f = lat["final_norm"]
    lines += [f"final norm: median {f['median']:.2f}, position-0 ratio {f['pos0_ratio']:.1f}", "",
              "Positional structure of the residual stream (per-position means, positions >= 1): helix score "
              "over the first six PCs (1 = helix, ~0 = none) and the early-position tail",
              f"{'layer':>5} {'helix':>7} {'tail ends':>10} {'tail PR':>8} {'tail top-2':>10}"]
    for e in lat["layers"]:
        t = e["tail"] or {}
        lines.append(f"{e['layer']:>5} {_f(e['helix']):>7} {t.get('entry_position', '-'):>10} "
                     f"{_f(t.get('participation_ratio'), '{:.2f}'):>8} {_f(t.get('top2_fraction'), '{:.2f}'):>10}")
    if lat.get("learned_position_embedding"):
        lp = lat["learned_position_embedding"]
        lines.append(f"learned position embedding {lp['module']}: helix score {lp['helix']['score']:.3f}")
    lines.append("")
    return lines


def write_figures(report_or_atlas, out_dir) -> list[Path]:
    """PNG figures: spectra with fits, alpha vs layer, AMI vs k, lobe-subset heatmap,
    silhouette vs LDA dimension. Accepts a report dict (no spectra then) or an atlas.
    Returns the written paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    atlas = None
    if isinstance(report_or_atlas, dict):
        report = report_or_atlas
    else:
        atlas = _open(report_or_atlas)
        report = build_report(atlas)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    layers = report["layers"]
    written = []

    def save(fig, name):
        p = out / name
        fig.tight_layout()
        fig.savefig(p, dpi=120)
        plt.close(fig)
        written.append(p)

    if atlas is not None and any(atlas.has(LayerFiles(int(L)).spectrum) for L in layers):
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for L, e in layers.items():
            spectrum = LayerFiles(int(L)).spectrum
            if not atlas.has(spectrum):
                continue
            lam = np.asarray(atlas.array(spectrum))
            r = np.arange(1, lam.size + 1)
            line, = ax.loglog(r[lam > 0], lam[lam > 0], lw=1, label=f"layer {L}")
            g = e.get("galaxy")
            if g and g["alpha"] is not None:
                rr = np.arange(g["ranks"][0], g["ranks"][1] + 1)
                ax.loglog(rr, 10 ** (g["intercept"] - g["alpha"] * np.log10(rr)), "--", color=line.get_color())
        ax.set(xlabel="rank r", ylabel="eigenvalue λ_r", title="Decoder covariance spectra (dashed: fits)")
        ax.legend(fontsize=7)
        save(fig, "spectra.png")

    gal = [(int(L), e["galaxy"]) for L, e in layers.items() if e.get("galaxy", {}).get("alpha") is not None]
    if gal:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.8))
        xs = [L for L, _ in gal]
        a1.errorbar(xs, [g["alpha"] for _, g in gal], yerr=[g["ci95"] for _, g in gal], marker="o", capsize=3)
        a1.plot(xs, [-(g["isotropic_slope"] or 0) for _, g in gal], "k:", label="isotropic")
        a1.set(xlabel="layer", ylabel="α", title="Power-law exponent")
        a1.legend()
        a2.errorbar(xs, [g["negentropy"] for _, g in gal], yerr=[g["negentropy_std"] for _, g in gal],
                    marker="o", capsize=3)
        a2.set(xlabel="layer", ylabel="negentropy (nats)", title=f"Clustering negentropy ({gal[0][1]['estimator']})")
        save(fig, "alpha_vs_layer.png")

    for L, e in layers.items():
        if "brain" not in e:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, rows in e["brain"]["results"].items():
            ax.semilogx([r["k"] for r in rows], [r["ami"] for r in rows], marker="o", label=name, base=2)
        ax.set(xlabel="k", ylabel="AMI(geometry, co-occurrence)", title=f"Layer {L}: AMI vs k")
        ax.legend(fontsize=8)
        save(fig, f"ami_vs_k_layer{L}.png")
        for k, table in e.get("lobe_subsets", {}).get("phi", {}).items():
            subsets = list(table)
            lobes = sorted({lb for row in table.values() for lb in row}, key=int)
            M = np.array([[table[s].get(lb, 0) for lb in lobes] for s in subsets], dtype=float)
            M = M / np.maximum(M.sum(axis=1, keepdims=True), 1)
            fig, ax = plt.subplots(figsize=(1.2 + 0.6 * len(lobes), 1 + 0.3 * len(subsets)))
            im = ax.imshow(M, aspect="auto", cmap="viridis", vmin=0, vmax=1)
            ax.set_xticks(range(len(lobes)), [f"lobe {lb}" for lb in lobes])
            ax.set_yticks(range(len(subsets)), subsets)
            ax.set_title(f"Layer {L}: share of blocks won, phi k={k}")
            fig.colorbar(im, ax=ax)
            save(fig, f"lobe_subsets_layer{L}_k{k}.png")

    atoms = [(L, e["atom"]) for L, e in layers.items() if "atom" in e]
    if atoms:
        fig, ax = plt.subplots(figsize=(6, 4))
        for L, a in atoms:
            ax.plot(a["dims"], a["silhouette"], marker="o", label=f"layer {L}")
            ax.axhline(a["raw_silhouette"], ls=":", lw=1)
        ax.set(xlabel="LDA dimensions", ylabel="silhouette", title="Task clusters after LDA (dotted: raw)")
        ax.legend()
        save(fig, "silhouette_vs_lda_dim.png")
    if atlas is not None and "latent" in report:
        _latent_figures(atlas, report["latent"], plt, save)
    return written


KIND_COLORS = {"resid_pre": "#1f77b4", "attn_out": "#d62728", "resid_mid": "#9467bd", "mlp_out": "#2ca02c",
               "resid_post": "#ff7f0e"}


def _latent_figures(atlas, lat: dict, plt, save) -> None:
    """Norms vs layer, position-0 ratio, norm vs position, separation vs layer, and PCA /
    UMAP pictures of three layers coloured by capture kind."""
    from analysis.latent import KINDS, norms_by_position, slot_of

    layers = lat["layers"]
    xs = [e["layer"] for e in layers]
    n = len(layers)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for k in KINDS:
        a1.semilogy(xs, [e["median_norm"][k] for e in layers], marker=".", color=KIND_COLORS[k], label=k)
    a1.semilogy(xs, [e["pos0_norm"]["resid_post"] for e in layers], "--", color=KIND_COLORS["resid_post"],
                label="resid_post, position 0")
    a1.set(xlabel="layer", ylabel="median norm", title="Norms per layer (positions >= 1)")
    a1.legend(fontsize=7)
    for k in ("resid_post", "attn_out", "mlp_out"):
        a2.semilogy(xs, [e["pos0_ratio"][k] for e in layers], marker=".", color=KIND_COLORS[k], label=k)
    a2.axhline(1, color="k", lw=0.5)
    a2.set(xlabel="layer", ylabel="norm at position 0 / median of others", title="Position-0 ratio")
    a2.legend(fontsize=7)
    save(fig, "latent_norms.png")

    norms = np.asarray(atlas.array("latent/norms.npy"))
    fig, ax = plt.subplots(figsize=(6, 4))
    for L in sorted({0, n // 4, n // 2, 3 * n // 4, n - 1}):
        med = norms_by_position(norms[slot_of(n, L, "resid_post")])
        ax.loglog(np.arange(1, len(med)), med[1:], lw=1, label=f"layer {L}")
        ax.plot([1], [med[0]], "o", color=ax.lines[-1].get_color())
    ax.set(xlabel="position (dot: position 0, drawn at 1)", ylabel="median norm", title="Residual norm vs position")
    ax.legend(fontsize=7)
    save(fig, "latent_norm_vs_position.png")

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for part, style in (("raw", "-"), ("unit", "--")):
        a1.plot(xs, [e["separation"][part]["accuracy"] for e in layers], style, marker=".", label=part)
        a1.plot(xs, [e["separation"][part]["accuracy_shuffled"] for e in layers], style, color="grey",
                label=f"{part}, shuffled")
        a2.plot(xs, [e["separation"][part]["silhouette"] for e in layers], style, marker=".", label=part)
        a2.plot(xs, [e["separation"][part]["silhouette_shuffled"] for e in layers], style, color="grey",
                label=f"{part}, shuffled")
    a1.set(xlabel="layer", ylabel="cross-validated accuracy", title="Attention vs MLP outputs: linear accuracy")
    a2.set(xlabel="layer", ylabel="silhouette", title="Attention vs MLP outputs: silhouette")
    a1.legend(fontsize=7)
    a2.legend(fontsize=7)
    save(fig, "latent_separation.png")

    pick = sorted({1, n // 2, n - 2}) if n > 2 else list(range(n))
    views = [("pca", "latent/pca_layer.npy", "uncentred PCA")]
    if atlas.has("latent/umap_layer.npy"):
        views.append(("umap", "latent/umap_layer.npy", "cosine UMAP"))
    for key, rel, title in views:
        coords = np.asarray(atlas.array(rel))
        fig, axes = plt.subplots(1, len(pick), figsize=(4 * len(pick), 3.8), squeeze=False)
        for ax, L in zip(axes[0], pick):
            for j, k in enumerate(KINDS):
                ax.scatter(coords[L, j, :, 0], coords[L, j, :, 1], s=3, alpha=0.5, color=KIND_COLORS[k], label=k)
            ax.set(title=f"layer {L}: {title}", xlabel="1", ylabel="2")
        axes[0][0].legend(fontsize=7, markerscale=3)
        save(fig, f"latent_{key}_layers.png")


# --------------------------------------------------------------------------- comparisons (METHODS 5)


def comparison_report(comparison) -> dict:
    """The numbers of a comparison (path or opened ``analysis.universality.Comparison``):
    the layer-by-layer SVCCA and RSA matrices with p-values and pair counts, the per-pair
    details, the alignment, and the semantic-subspace table."""
    from analysis.universality import open_comparison

    c = open_comparison(comparison) if isinstance(comparison, (str, Path)) else comparison
    m = c.manifest
    cfg = m.configs.get("compare", {})

    def mat(name):
        return [[None if not np.isfinite(v) else float(v) for v in row] for row in np.asarray(c.array(name))]

    subs = c.subspaces()
    return {"comparison": str(c.path), "title": m.title,
            "a": m.a.model_dump(), "b": m.b.model_dump(), "alignment": m.alignment.model_dump(),
            "settings": {k: cfg.get(k) for k in ("pairing", "one_to_one_rule", "min_corr", "filter_punctuation",
                                                  "require_shared_token", "svcca_variant", "variance", "n_shuffles",
                                                  "n_shuffles_small", "rsa_max_pairs")},
            "layers_a": m.a.layers, "layers_b": m.b.layers,
            "svcca": mat("svcca"), "svcca_p": mat("svcca_p"), "rsa": mat("rsa"), "rsa_p": mat("rsa_p"),
            "n_pairs": np.asarray(c.array("n_pairs")).tolist(), "pairs": c.summary()["pairs"],
            "subspaces": [{k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in row.items()}
                          for row in subs.to_dict("records")]}


def _cell(v, p) -> str:
    return f"{'-':>15}" if v is None else f"{v:>6.3f} (p {p:.3f})" if p is not None else f"{v:>15.3f}"


def format_comparison(rep: dict) -> str:
    """Plain-text tables of ``comparison_report``: the two heat maps, the pair counts, the subspaces."""
    al, s = rep["alignment"], rep["settings"]
    lines = [f"comparison {rep['comparison']}", rep["title"], "",
             f"A: {rep['a']['model']} ({rep['a']['path']}), layers {rep['layers_a']}",
             f"B: {rep['b']['model']} ({rep['b']['path']}), layers {rep['layers_b']}",
             f"Units: {al['n_units']} from {al['n_documents']} documents ({al['n_tokens_a']} tokens of A, "
             f"{al['n_tokens_b']} of B); {'same tokenizer, one unit per token' if al['same_tokenizer'] else al['unit']}"
             + (f"; {al['dropped_spans']} span(s) dropped" if al["dropped_spans"] else ""),
             f"Pairing {s['pairing']}" + (f" ({s['one_to_one_rule']} rule)" if s["pairing"] == "one_to_one" else "")
             + f"; filters: correlation > {s['min_corr']}, punctuation {'on' if s['filter_punctuation'] else 'off'}, "
               f"shared token {'on' if s['require_shared_token'] else 'off'}; SVCCA {s['svcca_variant']} "
               f"({s['variance']:.0%} variance); nulls: {s['n_shuffles']} row shuffles "
               f"({s['n_shuffles_small']} for small sets)", ""]
    width = 17
    for name in ("svcca", "rsa"):
        lines.append(f"{name.upper()} of paired decoder directions (rows: A layers, columns: B layers; "
                     f"p = (1 + #shuffles >= observed) / (1 + shuffles))")
        lines.append(f"{'A/B':>6} " + " ".join(f"{'L' + str(lb):>{width}}" for lb in rep["layers_b"]))
        for i, la in enumerate(rep["layers_a"]):
            lines.append(f"{'L' + str(la):>6} " + " ".join(
                f"{_cell(rep[name][i][j], rep[name + '_p'][i][j]):>{width}}" for j in range(len(rep["layers_b"]))))
        lines.append("")
    lines.append("Pairs per layer pair (kept after the filters; features of B; distinct A features; mean correlation kept)")
    lines.append(f"{'A':>4} {'B':>4} {'kept':>6} {'of B':>6} {'corr ok':>8} {'punct':>6} {'shared':>7} "
                 f"{'distinct A':>10} {'mean r':>7}")
    for p in rep["pairs"]:
        lines.append(f"{p['layer_a']:>4} {p['layer_b']:>4} {p['n_pairs']:>6} {p['n_features_b']:>6} "
                     f"{p['n_corr_ok']:>8} {p['n_punctuation']:>6} {p['n_shared']:>7} {p['distinct_a']:>10} "
                     f"{_f(p['mean_corr_kept']):>7}")
    lines += ["", "Semantic subspaces (keyword groups; features per side, pairs, SVCCA and RSA with p-values)",
              f"{'A':>4} {'B':>4} {'group':>14} {'n A':>4} {'n B':>4} {'pairs':>5} {'SVCCA':>16} {'RSA':>16}  note"]
    for r in rep["subspaces"]:
        lines.append(f"{r['layer_a']:>4} {r['layer_b']:>4} {r['group']:>14} {r['n_a']:>4} {r['n_b']:>4} "
                     f"{r['n_pairs']:>5} {_cell(r['svcca'], r['svcca_p']):>16} {_cell(r['rsa'], r['rsa_p']):>16}  "
                     f"{('skipped: ' + r['skipped']) if r['skipped'] else ''}")
    return "\n".join(lines)
