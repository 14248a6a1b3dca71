"""Atlases for the app's tests and scripts, with derived files known in advance.

``build_app_atlas`` writes the synthetic atlas's raw statistics (analysis.synthetic) and adds
the derived files computed directly from the planted truth and the decoder (PCA
coordinates, exact neighbours, the planted lobes as the k=4 labels, the planted crystals
with their quality numbers, the spectrum and its fit). It takes seconds, and the app's
tests can assert exact answers; ``test_api.py`` checks the real geometry stage's output
separately. Layer files of the geometry stage that the panels read (``galaxy.json`` with its
interval, isotropic baseline and negentropy; ``lobe_subsets.parquet``; ``atom.json`` from
planted word pairs and the random crystal baseline) come from the analysis functions
themselves on the synthetic data.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from analysis import atom, brain, galaxy
from analysis.artefacts import Brain
from analysis.atlas import AtlasWriter, open_atlas
from analysis.synthetic import _VOCAB, make_synthetic_atlas

REPO = Path(__file__).resolve().parents[1]


def add_derived(path: Path, k_neighbours: int = 16) -> None:
    atlas = open_atlas(path, verify="size")
    with AtlasWriter.update(path) as w:
        for L in atlas.layer_ids:
            p = f"layers/{L}/"
            W = np.asarray(atlas.array(p + "decoder.npy"), dtype=np.float64)
            X = W - W.mean(0)
            _, s, Vt = np.linalg.svd(X, full_matrices=False)
            w.put_array(p + "coords_pca.npy", (X @ Vt[:3].T).astype(np.float32))
            w.put_array(p + "coords_umap.npy", (X @ Vt[3:6].T).astype(np.float32))
            U = W / np.linalg.norm(W, axis=1, keepdims=True)
            cos = U @ U.T
            np.fill_diagonal(cos, -np.inf)
            nb = np.argsort(-cos, axis=1)[:, :k_neighbours].astype(np.int32)
            w.put_array(p + "neighbors.npy", nb)
            w.put_array(p + "neighbors_cos.npy", np.take_along_axis(cos, nb, 1).astype(np.float32))
            planted = np.asarray(atlas.array(p + "planted_lobes.npy")).astype(np.int16)
            dead = atlas.json(p + "planted.json")["dead"]
            rows = np.stack([planted // 2, planted]).astype(np.int16)
            rows[:, dead] = -1
            w.put_array(p + "lobes_phi.npy", rows)
            w.put_array(p + "lobes_geometry.npy", rows.copy())
            w.put_json(p + "brain.json", Brain(ks=[2, 4], affinities=["phi"], lobe_affinities=["phi", "geometry"],
                                               n_features=len(W), n_live=len(W) - len(dead), dead=dead,
                                               n_blocks=atlas.manifest.layer(L).n_blocks, results={}))
            faces = atlas.table(p + "planted_crystals.parquet")
            a, b, c, d = (W[faces[x].to_numpy()] for x in "abcd")
            e1, e2 = a - b, c - d
            n1, n2 = np.linalg.norm(e1, axis=1), np.linalg.norm(e2, axis=1)
            faces = faces[["a", "b", "c", "d", "kind"]].assign(
                edge_cos=((e1 * e2).sum(1) / (n1 * n2)).astype(np.float32),
                length_ratio=(n2 / n1).astype(np.float32),
                closing_error=(np.linalg.norm(e1 - e2, axis=1) / ((n1 + n2) / 2)).astype(np.float32))
            w.put_table(p + "crystals.parquet", faces)
            lam = s ** 2 / (len(W) - 1)
            w.put_array(p + "spectrum.npy", lam)
            w.put_json(p + "galaxy.json", {
                "power_law": galaxy.power_law_fit(lam), "isotropic": galaxy.isotropic_baseline(*W.shape),
                "entropy": galaxy.clustering_entropy(W, n_samples=300, n_components=10, n_bootstrap=3)})
            labels4 = rows[1]
            tally = brain.lobe_subset_tally(atlas.sparse(p + "blocks.npz"), np.asarray(atlas.array(p + "block_subset.npy")),
                                            labels4, len(atlas.manifest.corpus.subsets))
            w.put_table(p + "lobe_subsets.parquet", pd.DataFrame(
                [("phi", 4, lobe, atlas.manifest.corpus.subsets[s], int(tally[lobe, s]))
                 for lobe, s in zip(*np.nonzero(tally))], columns=["affinity", "k", "lobe", "subset", "blocks"]))
            pairs, h_in, h_out = planted_word_pairs(W.shape[1], seed=L)
            report = atom.atom_report(h_in, h_out, pairs["task"], pairs["input_last_token"],
                                      pairs["output_last_token"])
            report["crystal_baseline"] = atom.crystal_baseline(W, n_repeats=2)
            w.put_json(p + "atom.json", report)
            if L == atlas.layer_ids[0]:
                w.put_table("wordpairs/pairs.parquet", pairs)


def planted_word_pairs(d: int, n_tasks: int = 4, per_task: int = 12, seed: int = 0):
    """Word pairs whose differences are a task direction plus a token-length distractor.

    Returns (pairs table as in docs/atlas.md, h_in [P, d], h_out [P, d]): the difference of
    a pair is ``3 * task_direction + (len(input) - len(output)) * length_direction + noise``,
    so PC1 follows the length gap and LDA separates the tasks.
    """
    rng = np.random.default_rng(100 + seed)
    tasks = np.repeat([f"task{t}" for t in range(n_tasks)], per_task)
    task_dir = rng.standard_normal((n_tasks, d))
    length_dir = rng.standard_normal(d)
    n_in = rng.integers(2, 10, len(tasks))
    n_out = rng.integers(2, 10, len(tasks))
    diff = (3 * task_dir[np.repeat(np.arange(n_tasks), per_task)] + (n_in - n_out)[:, None] * length_dir
            + 0.3 * rng.standard_normal((len(tasks), d)))
    h_out = rng.standard_normal((len(tasks), d))
    inp = ["x" * int(n) for n in n_in]
    out = ["y" * int(n) for n in n_out]
    pairs = pd.DataFrame({"task": tasks, "input": inp, "output": out, "input_last_token": inp,
                          "output_last_token": out})
    return pairs, (h_out + diff).astype(np.float32), h_out.astype(np.float32)


def build_app_atlas(root: Path, n_features: int = 600) -> Path:
    path = make_synthetic_atlas(root / "syn", n_features=n_features, d_model=48, layers=(0, 1, 2), n_blocks=1200,
                                seed=0, geometry=False)
    add_derived(path)
    return root


# a real latent capture small enough for a session fixture (~40 s on two busy cores)
LATENT_TEST = dict(n_docs=4, seq_len=64, batch_size=4, sample_tokens=128, umap_tokens=32, vector_tokens=16,
                   separation_tokens=64, cv=3)


def build_latent_atlas(path: Path, lm=None) -> Path:
    """Synthetic SAE layers (9 and 29, 200 features) in SmolLM2's shape (30 blocks, width 576),
    carrying a real latent capture of SmolLM2 on four 64-token documents of the default corpus:
    the feature cloud and the Latent view of one atlas, as in the demo's."""
    from analysis.atlas import AtlasWriter
    from precompute.latent import LatentConfig, run_latent
    from precompute.models import load_model

    lm = lm or load_model("smollm2", device="cpu", dtype="float32")
    make_synthetic_atlas(path, n_features=200, d_model=lm.d_model, layers=(9, lm.n_layers - 1), n_blocks=300,
                         seed=1, geometry=False)
    add_derived(path)
    with AtlasWriter.update(path) as w:   # the latent stage checks the model's shape, then trusts the caller
        w.manifest.title = f"synthetic SAE layers, real {lm.name} latent capture"
        w.manifest.model = w.manifest.model.model_copy(update={"name": lm.name, "source": lm.source})
    run_latent(path, LatentConfig(**LATENT_TEST), lm=lm)
    return path


def latent_atlas_root(request, tmp_path_factory) -> Path:
    """A folder with ``smollm2`` (SAE layers and a real latent capture) and ``syn`` (no latent
    capture), built once per session."""
    import shutil

    root = tmp_path_factory.getbasetemp() / "latent-atlases"
    if not (root / "smollm2" / "manifest.json").is_file():
        root.mkdir(exist_ok=True)
        if not (root / "syn").is_dir():
            shutil.copytree(app_atlas_root(request, tmp_path_factory) / "syn", root / "syn")
        build_latent_atlas(root / "smollm2")
    return root


def app_atlas_root(request, tmp_path_factory) -> Path:
    """The folder of atlases the app tests serve (``syn`` inside), built once per session."""
    root = tmp_path_factory.getbasetemp() / "app-atlases"
    if not (root / "syn" / "manifest.json").is_file():
        root.mkdir(exist_ok=True)
        build_app_atlas(root)
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root: Path, banner: str | None = None, extra: list[str] = ()):
    """A real uvicorn process serving ``root`` on a free port; returns (process, base url).
    ``extra``: more arguments of app.server (``["--workers", "2"]``). One worker unless
    ``extra`` says otherwise: the suite shares two cores with itself, and a second worker
    warming up beside the browser made first renders time out; tests/test_serving.py covers
    several workers."""
    port = free_port()
    workers = [] if "--workers" in extra else ["--workers", "1"]
    cmd = [sys.executable, "-m", "app.server", str(root), "--port", str(port), *workers, *extra]
    if banner:
        cmd += ["--banner", banner]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server exited: " + proc.stdout.read().decode(errors="replace")[-2000:])
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start within 60 s")


def build_comparison(out: Path, a: Path, b: Path, layers_a=(1, 2), layers_b=(0, 1), seed: int = 0,
                     n_shuffles: int = 20) -> Path:
    """A comparison of atlases ``a`` and ``b`` in the exact format of ``saegeo compare``, written
    by the same writer, from a planted pairing instead of two models' activations: every B
    feature's best A feature is a fixed random choice with a planted correlation, its top tokens
    the atlases' own; SVCCA, RSA, their nulls and the subspaces are the analysis functions'
    values on the paired decoder rows. Seconds, where a real compare needs the models."""
    from analysis.universality import AlignmentInfo, AtlasRef, ComparisonManifest, similarity_null

    A, B = open_atlas(a, verify="size"), open_atlas(b, verify="size")
    rng = np.random.default_rng(seed)

    def tokens(atlas, L):
        t = atlas.table(f"layers/{L}/top_tokens.parquet").sort_values(["feature", "rank"])
        return {int(f): [str(x) for x in g["token"].head(5)] for f, g in t.groupby("feature")}

    def sims(X, Y, s):
        if len(X) < 3:
            return {k: None for k in ("svcca", "svcca_p", "svcca_null_mean", "svcca_null_std", "rsa", "rsa_p",
                                      "rsa_null_mean", "rsa_null_std")}
        sv, rs = similarity_null(X, Y, "svcca", n_shuffles, s), similarity_null(X, Y, "rsa", n_shuffles, s + 1)
        return {"svcca": sv["value"], "svcca_p": sv["p"], "svcca_null_mean": sv["null_mean"],
                "svcca_null_std": sv["null_std"], "rsa": rs["value"], "rsa_p": rs["p"],
                "rsa_null_mean": rs["null_mean"], "rsa_null_std": rs["null_std"]}

    shape = (len(layers_a), len(layers_b))
    mats = {k: np.full(shape, np.nan) for k in ("svcca", "svcca_p", "rsa", "rsa_p")}
    n_pairs = np.zeros(shape, np.int64)
    tables, summary, subs = {}, [], []
    for i, La in enumerate(layers_a):
        Wa, ta = np.asarray(A.array(f"layers/{La}/decoder.npy"), np.float64), tokens(A, La)
        for j, Lb in enumerate(layers_b):
            Wb, tb = np.asarray(B.array(f"layers/{Lb}/decoder.npy"), np.float64), tokens(B, Lb)
            Fb = len(Wb)
            fa = rng.choice(len(Wa), Fb, replace=False).astype(np.int32)
            corr = rng.uniform(-0.05, 1.0, Fb).astype(np.float32)
            punct = rng.random(Fb) < 0.05
            shared = rng.random(Fb) < 0.9
            kept = (corr > 0.1) & ~punct & shared
            tables[(La, Lb)] = pd.DataFrame({
                "feature_b": np.arange(Fb, dtype=np.int32), "feature_a": fa, "corr": corr,
                "tokens_a": [ta.get(int(f), []) for f in fa], "tokens_b": [tb.get(f, []) for f in range(Fb)],
                "punctuation": punct, "shared_token": shared, "kept": kept})
            r = sims(Wa[fa[kept]], Wb[kept], seed + 10 * i + j)
            for k in mats:
                mats[k][i, j] = np.nan if r[k] is None else r[k]
            n_pairs[i, j] = int(kept.sum())
            summary.append({"layer_a": La, "layer_b": Lb, "n_features_a": len(Wa), "n_features_b": Fb,
                            "n_pairs": int(kept.sum()), "n_corr_ok": int((corr > 0.1).sum()),
                            "n_punctuation": int(punct.sum()), "n_shared": int(shared.sum()),
                            "mean_corr_kept": float(corr[kept].mean()), **r, "n_shuffles": n_shuffles})
            group = np.flatnonzero(kept)[:8]
            g = sims(Wa[fa[group]], Wb[group], seed + 100)
            subs.append((La, Lb, "time", 8, 8, 8, g["svcca"], g["svcca_p"], g["rsa"], g["rsa_p"], n_shuffles, ""))
            subs.append((La, Lb, "months", 2, 5, 0, None, None, None, None, 0,
                         "2 feature(s) on one side (needs > 2 per side)"))

    def ref(atlas, layers):
        m = atlas.manifest
        return AtlasRef(path=str(atlas.path), title=m.title, model=m.model.name, model_source=m.model.source,
                        tokenizer=m.model.tokenizer or "", layers=list(layers),
                        saes={str(L): m.layer(L).sae.source for L in layers},
                        widths={str(L): int(m.layer(L).sae.width) for L in layers})

    manifest = ComparisonManifest(
        title=f"{a.name} vs {b.name} (planted pairing)", a=ref(A, layers_a), b=ref(B, layers_b),
        corpus={"name": "planted", "max_tokens": 0, "seq_len": 0},
        alignment=AlignmentInfo(same_tokenizer=True, unit="one token (one tokenizer)", n_documents=10, n_chars=5000,
                                n_units=1000, n_tokens_a=1000, n_tokens_b=1000),
        configs={"compare": {"pairing": "many_to_one", "min_corr": 0.1, "n_shuffles": n_shuffles}},
        notes=["planted pairing for the app's tests"])
    cols = ["layer_a", "layer_b", "group", "n_a", "n_b", "n_pairs", "svcca", "svcca_p", "rsa", "rsa_p",
            "n_shuffles", "skipped"]
    sub = pd.DataFrame(subs, columns=cols)
    for col in ("svcca", "svcca_p", "rsa", "rsa_p"):
        sub[col] = sub[col].astype(float)
    with AtlasWriter(out, manifest) as w:
        for k, v in mats.items():
            w.put_array(f"{k}.npy", v)
        w.put_array("n_pairs.npy", n_pairs)
        for (La, Lb), t in tables.items():
            w.put_table(manifest.pair_file(La, Lb), t)
        w.put_table("subspaces.parquet", sub)
        w.put_json("summary.json", {"pairs": summary, "keyword_groups": {"time": ["day", "hour"],
                                                                         "months": ["may", "june"]}, "seconds": 0})
    return out


def comparison_root(request, tmp_path_factory) -> Path:
    """A folder with atlases ``syn`` (layers 0-2, 600 features) and ``syn2`` (layers 0-1, 300
    features), the comparison ``syn-vs-syn2`` of them, ``orphan`` (whose B atlas is not served)
    and ``broken`` (a truncated file), built once per session."""
    import json
    import shutil

    root = tmp_path_factory.getbasetemp() / "comparison-atlases"
    if not (root / "broken" / "manifest.json").is_file():
        root.mkdir(exist_ok=True)
        if not (root / "syn").is_dir():
            shutil.copytree(app_atlas_root(request, tmp_path_factory) / "syn", root / "syn")
        if not (root / "syn2").is_dir():
            make_synthetic_atlas(root / "syn2", n_features=300, d_model=40, layers=(0, 1), n_blocks=600, seed=2,
                                 geometry=False)
        if not (root / "syn-vs-syn2").is_dir():
            build_comparison(root / "syn-vs-syn2", root / "syn", root / "syn2")
        if not (root / "orphan").is_dir():
            # B computed from a folder that is not served, of a model no served atlas has
            shutil.copytree(root / "syn2", root / "gone-src")
            with AtlasWriter.update(root / "gone-src") as w:
                w.manifest.model = w.manifest.model.model_copy(update={"name": "other-model"})
            build_comparison(root / "orphan", root / "syn", root / "gone-src", layers_a=(0,), layers_b=(0,), seed=1)
            shutil.rmtree(root / "gone-src")
        shutil.copytree(root / "syn-vs-syn2", root / "broken.tmp")
        with open(root / "broken.tmp" / "svcca.npy", "r+b") as f:
            f.truncate(64)
        m = json.loads((root / "broken.tmp" / "manifest.json").read_text())
        (root / "broken.tmp" / "manifest.json").write_text(json.dumps(m))
        (root / "broken.tmp").rename(root / "broken")
    return root


def build_wide_atlas(path: Path, widths: tuple[int, ...] = (262_144,), seed: int = 0) -> Path:
    """An atlas of one wide layer per width (layer i has ``widths[i]`` features), written
    straight through AtlasWriter in seconds, for the explorer at scale.

    Only what the cloud, the card and the search read: PCA coordinates (64 Gaussian blobs of
    power-law sizes, so the density has structure), firing counts (log-normal; the blob is
    its k=64 lobe, pairs of blobs its k=16 lobe... as lobes_phi.npy rows), three top tokens per
    feature (a unique ``t<id>``: a search for it finds exactly that feature; then two words of
    analysis.synthetic's vocabularies, so hover labels weigh what real ones do), the ten nearest
    neighbours by coordinates (``neighbors.npy``, cosine stand-in ``1 - distance``) and a small
    decoder (d = 8). analysis.synthetic's make_synthetic_atlas draws layers this wide too, with
    co-occurrence, contexts and the geometry stage, in minutes (~5.5 min at 262,144 features
    on two busy cores): too slow for a browser test's fixture, which needs seconds.
    """
    from scipy.spatial import cKDTree

    from analysis.atlas import CorpusInfo, LayerFiles, LayerInfo, Manifest, ModelInfo, SAEInfo

    rng = np.random.default_rng(seed)
    d, n_tokens = 8, 1_000_000
    manifest = Manifest(
        title="wide synthetic layers (explorer at scale)", synthetic=True,
        model=ModelInfo(name="synthetic", source="tests._app_atlas", d_model=d, n_layers=len(widths)),
        corpus=CorpusInfo(name="synthetic", n_tokens=n_tokens),
        layers=[LayerInfo(layer=L, sae=SAEInfo(source="synthetic", width=F, d_in=d, architecture="synthetic"),
                          n_tokens=n_tokens, computed=["stats"]) for L, F in enumerate(widths)],
        notes=["Synthetic wide layers for the explorer's level of detail, not measurements of a model."])
    with AtlasWriter(path, manifest, overwrite=True) as w:
        for L, F in enumerate(widths):
            f = LayerFiles(L)
            n_blobs = 64
            share = 1.0 / np.arange(1, n_blobs + 1) ** 0.8
            blob = rng.choice(n_blobs, size=F, p=share / share.sum()).astype(np.int16)
            centres = rng.normal(size=(n_blobs, 3)) * 4.0
            xyz = (centres[blob] + rng.normal(size=(F, 3)) * rng.uniform(0.3, 1.2, n_blobs)[blob, None])
            xyz = xyz.astype(np.float32)
            w.put_array(f.coords_pca, xyz)
            counts = np.floor(rng.lognormal(3.0, 1.5, F)).astype(np.int64)
            counts[rng.choice(F, F // 200, replace=False)] = 0   # dead features
            w.put_array(f.fire_count, counts)
            w.put_array(f.lobes("phi"), np.stack([blob // 16, blob // 4, blob]).astype(np.int16))
            W = np.concatenate([xyz, rng.normal(size=(F, d - 3)).astype(np.float32) * 0.1], axis=1)
            w.put_array(f.decoder, W)
            dist, nb = cKDTree(xyz).query(xyz, k=11)
            w.put_array(f.neighbors, nb[:, 1:].astype(np.int32))
            w.put_array(f.neighbors_cos, (1 - dist[:, 1:] / max(dist.max(), 1e-9)).astype(np.float32))
            # three top tokens, as a real layer's hover shows: the unique t<id>, then two words
            ids = np.arange(F, dtype=np.int32)
            words = np.asarray(sorted({w for ws in _VOCAB.values() for w in ws}))
            toks = np.stack([np.char.add("t", ids.astype(str)).astype(object),
                             words[rng.integers(0, len(words), F)].astype(object),
                             words[rng.integers(0, len(words), F)].astype(object)], 1)
            w.put_table(f.top_tokens, pd.DataFrame({
                "feature": np.repeat(ids, 3), "rank": np.tile(np.arange(3, dtype=np.int16), F),
                "token": toks.reshape(-1), "count": np.repeat(counts, 3) >> np.tile(np.arange(3), F)}))
    return Path(path)


def wide_atlas_root(tmp_path_factory, widths: tuple[int, ...] = (262_144,)) -> Path:
    """A folder holding atlas ``wide`` (layer i: ``widths[i]`` features), built once per session."""
    root = tmp_path_factory.getbasetemp() / ("wide-atlas-" + "-".join(map(str, widths)))
    if not (root / "wide" / "manifest.json").is_file():
        root.mkdir(exist_ok=True)
        build_wide_atlas(root / "wide", widths)
    return root
