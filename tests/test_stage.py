"""The geometry stage on real atlases on disk (synthetic, planted structure)."""
import numpy as np
import pytest
from sklearn.metrics import adjusted_mutual_info_score

from analysis import report, stage
from analysis.atlas import AtlasWriter, CorpusInfo, LayerInfo, Manifest, ModelInfo, SAEInfo, open_atlas
from analysis.synthetic import make_synthetic_atlas

FAST = dict(ks=[2, 4, 8], n_permutations=10, n_random=4, entropy_samples=400, entropy_components=20,
            entropy_bootstrap=5, crystal_baseline_repeats=2)


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    path = tmp_path_factory.mktemp("stage") / "syn"
    make_synthetic_atlas(path, n_features=400, d_model=48, layers=(0, 1), n_lobes=4, n_blocks=800,
                         alphas=(0.3, 0.5), seed=1, geometry=False)
    stage.run_geometry(path, stage.GeometryConfig(**FAST))
    return open_atlas(path)


def test_every_derived_file_written_with_contract_shapes(atlas):
    F = 400
    for L in (0, 1):
        b = f"layers/{L}/"
        assert atlas.array(b + "coords_pca.npy").shape == (F, 3)
        assert atlas.array(b + "coords_umap.npy").dtype == np.float32
        assert atlas.array(b + "neighbors.npy").dtype == np.int32
        assert atlas.array(b + "neighbors_cos.npy").shape == (F, 16)
        assert atlas.array(b + "spectrum.npy").shape == (48,)
        for a in ("simple_matching", "jaccard", "dice", "overlap", "phi", "geometry"):
            lab = atlas.array(b + f"lobes_{a}.npy")
            assert lab.shape == (3, F) and lab.dtype == np.int16
        info = atlas.manifest.layer(L)
        assert {"geometry", "layout", "neighbors", "galaxy", "brain"} <= set(info.computed)
        assert atlas.has(b + "lobe_subsets.parquet") and atlas.has(b + "lobe_tokens.parquet")
    assert atlas.manifest.configs["geometry"]["n_permutations"] == 10
    assert atlas.manifest.configs["geometry"]["ks"] == [2, 4, 8]


def test_planted_lobes_found_and_geometry_follows_function(atlas):
    planted = np.asarray(atlas.array("layers/0/planted_lobes.npy"))
    bj = atlas.json("layers/0/brain.json")
    dead = np.asarray(bj["dead"], dtype=int)
    assert set(dead) == set(atlas.json("layers/0/planted.json")["dead"])
    row = bj["ks"].index(4)
    live = np.setdiff1d(np.arange(400), dead)
    # co-occurrence lobes are recovered exactly; the generator re-colours the decoder to a
    # power-law spectrum, which blurs the geometric lobes somewhat (AMI about 0.85)
    for a, floor in (("phi", 0.9), ("jaccard", 0.9), ("geometry", 0.75)):
        lab = np.asarray(atlas.array(f"layers/0/lobes_{a}.npy"))[row]
        assert (lab[dead] == -1).all()
        assert adjusted_mutual_info_score(planted[live], lab[live]) >= floor
    res = bj["results"]["phi"][row]
    assert res["k"] == 4 and res["ami"]["ami"] >= 0.75 and res["ami"]["z"] > 20
    assert abs(res["ami"]["perm_mean"]) < 0.02
    reg = bj["results"]["phi"][0]["regression"]     # k = 2
    assert reg["accuracy"] > 0.9 and reg["z"] > 5
    assert bj["results"]["phi"][1]["regression"] is None   # k = 4 not in regression_ks


def test_lobes_win_their_own_subsets(atlas):
    tab = atlas.table("layers/0/lobe_subsets.parquet")
    t = tab[(tab.affinity == "phi") & (tab.k == 4)]
    # each subset is won (almost always) by one lobe, a different one per subset
    top = t.sort_values("blocks").groupby("subset").tail(1)
    share = top.set_index("subset")["blocks"] / t.groupby("subset")["blocks"].sum()
    assert len(top) == 4 and top["lobe"].nunique() == 4 and (share > 0.9).all()


def test_galaxy_slopes_follow_planted_exponents(atlas):
    # the generator plants covariance eigenvalues exactly r^-alpha (0.3 and 0.5)
    for L, alpha in ((0, 0.3), (1, 0.5)):
        g = atlas.json(f"layers/{L}/galaxy.json")
        assert abs(g["power_law"]["alpha"] - alpha) <= 0.02
        assert g["power_law"]["ranks"] == [11, 48] and g["entropy"]["n_samples"] == 400
        assert g["estimator"] == "textbook" and g["entropy"]["negentropy_std"] > 0
        np.testing.assert_allclose(atlas.array(f"layers/{L}/spectrum.npy")[:3], [1, 2 ** -alpha, 3 ** -alpha],
                                   rtol=1e-4)


def test_decoder_only_layer(tmp_path):
    rng = np.random.default_rng(0)
    W = rng.standard_normal((300, 24)).astype(np.float32)
    m = Manifest(model=ModelInfo(name="m", d_model=24, n_layers=1), corpus=CorpusInfo(name="none"),
                 layers=[LayerInfo(layer=0, sae=SAEInfo(source="synthetic", width=300, d_in=24))])
    with AtlasWriter(tmp_path / "a", m) as w:
        w.put_array("layers/0/decoder.npy", W)
    stage.run_geometry(tmp_path / "a", stage.GeometryConfig(umap=False, entropy_samples=200,
                                                            entropy_components=10, entropy_bootstrap=3))
    a = open_atlas(tmp_path / "a")
    comp = a.manifest.layer(0).computed
    assert "skipped:brain (no cooc.npz)" in comp and "galaxy" in comp and "brain" not in comp
    assert not a.has("layers/0/brain.json") and a.has("layers/0/coords_pca.npy")
    assert a.array("layers/0/spectrum.npy").shape == (24,)


def test_report_numbers_tables_and_figures(atlas, tmp_path):
    from analysis import report

    rep = report.build_report(atlas)
    bj = atlas.json("layers/0/brain.json")
    phi = rep["layers"]["0"]["brain"]["results"]["phi"]
    assert [r["k"] for r in phi] == [2, 4, 8]
    assert phi[1]["ami"] == bj["results"]["phi"][1]["ami"]["ami"]
    assert phi[0]["accuracy"] == bj["results"]["phi"][0]["regression"]["accuracy"]
    assert abs(rep["layers"]["1"]["galaxy"]["alpha"] - 0.5) <= 0.02
    assert sum(rep["layers"]["0"]["lobe_subsets"]["phi"]["2"]["code"].values()) > 0
    text = report.format_report(rep)
    assert "phi" in text and "0.500" in text and "Blocks won per corpus subset" in text
    paths = report.write_figures(atlas, tmp_path)
    names = {p.name for p in paths}
    assert {"spectra.png", "alpha_vs_layer.png", "ami_vs_k_layer0.png"} <= names
    assert all(p.stat().st_size > 1000 for p in paths)


def test_interrupted_geometry_resumes_at_the_first_layer_not_done(atlas, tmp_path):
    """Each layer is written when done: a run stopped during layer 1 keeps layer 0, the rerun
    computes layer 1 only, and the result equals the uninterrupted run's."""
    path = tmp_path / "syn"
    make_synthetic_atlas(path, n_features=400, d_model=48, layers=(0, 1), n_lobes=4, n_blocks=800,
                         alphas=(0.3, 0.5), seed=1, geometry=False)

    def stop_at_layer_1(layer, i, n):
        if layer == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        stage.run_geometry(path, stage.GeometryConfig(**FAST), on_layer=stop_at_layer_1)
    half = open_atlas(path)
    assert "geometry" in half.manifest.layer(0).computed and "geometry" not in half.manifest.layer(1).computed
    assert half.has("layers/0/lobes_phi.npy") and not half.has("layers/1/lobes_phi.npy")

    seen = []
    stage.run_geometry(path, stage.GeometryConfig(**FAST), on_layer=lambda L, i, n: seen.append((L, i, n)))
    assert seen == [(1, 1, 2)]
    done = open_atlas(path)
    for L in (0, 1):
        for name in ("lobes_phi.npy", "coords_pca.npy", "coords_umap.npy", "neighbors.npy", "spectrum.npy"):
            np.testing.assert_array_equal(done.array(f"layers/{L}/{name}"), atlas.array(f"layers/{L}/{name}"))
        assert done.json(f"layers/{L}/brain.json") == atlas.json(f"layers/{L}/brain.json")

    # other settings: every layer is computed again
    seen.clear()
    stage.run_geometry(path, stage.GeometryConfig(**{**FAST, "ks": [2, 4]}), on_layer=lambda L, i, n: seen.append(L))
    assert seen == [0, 1]
    assert open_atlas(path).array("layers/0/lobes_phi.npy").shape == (2, 400)


def test_crystal_counts_per_threshold_against_random_draws(atlas):
    # the synthetic generator plants parallelograms: they stand out of the random draws
    for L in (0, 1):
        c = atlas.json(f"layers/{L}/atom.json")["crystal_counts"]
        assert c["thresholds"] == [0.3, 0.5, 0.7, 0.9] and c["n_repeats"] == 2
        faces = atlas.table(f"layers/{L}/crystals.parquet")
        assert c["faces"] == [int((faces["edge_cos"] >= t).sum()) for t in c["thresholds"]]
        assert c["faces"][-1] > c["baseline_mean"][-1] and all(s is not None for s in c["baseline_std"])
    assert "Crystals by edge cosine, layer 0" in report.format_report(report.build_report(atlas))


def test_json_results_round_trip_through_their_models(atlas, tmp_path):
    """brain.json, galaxy.json and atom.json as the stage writes them (crystals and word pairs
    included) are read by their models and written back byte for byte; the atlas's loader
    hands out the same models."""
    import json

    from _app_atlas import planted_word_pairs
    from analysis.artefacts import Atom, Brain, Galaxy

    path = tmp_path / "words"
    make_synthetic_atlas(path, n_features=200, d_model=32, layers=(0,), n_blocks=300, seed=2, geometry=False)
    pairs, h_in, h_out = planted_word_pairs(32)
    with AtlasWriter.update(path) as w:
        w.put_array("layers/0/word_h_in.npy", h_in)
        w.put_array("layers/0/word_h_out.npy", h_out)
        w.put_table("wordpairs/pairs.parquet", pairs)
    stage.run_geometry(path, stage.GeometryConfig(**{**FAST, "ks": [2, 4], "umap": False}))
    words = open_atlas(path)
    for a, L in ((atlas, 0), (atlas, 1), (words, 0)):
        for name, model, read in (("brain.json", Brain, a.brain), ("galaxy.json", Galaxy, a.galaxy),
                                  ("atom.json", Atom, a.atom)):
            text = (a.path / f"layers/{L}/{name}").read_text()
            typed = model.model_validate(json.loads(text))
            assert json.dumps(typed.model_dump(exclude_unset=True), indent=1) == text, (a.path, L, name)
            assert type(read(L)) is model and read(L).model_dump_json() == typed.model_dump_json()
    got = words.atom(0)
    assert got.lda.dims == [2, 3] and got.distractor.pearson_r > 0.9 and got.n_pairs == len(pairs)
    assert got.crystal_search.n_faces == len(words.table("layers/0/crystals.parquet"))
    assert len(got.crystal_counts.z) == len(got.crystal_counts.thresholds) == len(got.crystal_baseline.counts.faces[0])
    assert atlas.brain(0).row("phi", 4).ami.ami >= 0.75 and atlas.brain(0).row("phi", 5) is None
    assert words.galaxy(0).estimator == "textbook"


def test_results_of_older_atlases_still_open_and_report(atlas, tmp_path):
    """galaxy.json before the published t·SE and the Gaussian null, atom.json before face
    counts per threshold: the fields they lack read as None, and the report prints them as '-'."""
    import json
    import shutil

    old = tmp_path / "old"
    shutil.copytree(atlas.path, old)
    g = json.loads((old / "layers/0/galaxy.json").read_text())
    for key in ("negentropy_ci95", "null_negentropy", "null_negentropy_std"):
        del g["entropy"][key]
    a = json.loads((old / "layers/0/atom.json").read_text())
    del a["crystal_counts"], a["crystal_baseline"]["counts"]
    with AtlasWriter.update(old) as w:
        w.put_json("layers/0/galaxy.json", g)
        w.put_json("layers/0/atom.json", a)
    back = open_atlas(old)
    assert back.galaxy(0).entropy.null_negentropy is None and back.atom(0).crystal_counts is None
    assert back.atom(0).crystal_baseline.counts is None and back.atom(0).crystal_search.n_faces > 0
    rep = report.build_report(back)
    assert rep["layers"]["0"]["galaxy"]["negentropy_ci95"] is None
    assert rep["layers"]["0"]["crystals"]["by_threshold"] is None
    assert "phi" in report.format_report(rep)
