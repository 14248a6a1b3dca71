"""Latent geometry (METHODS 4): captures on both real models, the analysis on planted data,
and the precompute stage writing and validating latent/ in a tiny atlas."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from analysis import latent as la
from analysis.atlas import AtlasError, open_atlas, validate

TEXTS = ["The capital of France is Paris. def square(x): return x ** 2",
         "Licensed under the Apache License, Version 2.0"]


# --------------------------------------------------------------------------- real models

@pytest.fixture(scope="module", params=["smollm2", "gemma3-270m"])
def lm(request):
    from precompute.models import load_model
    return load_model(request.param, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def captured(lm):
    from precompute.latent import capture_latent

    rows = [[lm.bos_token_id] + lm.tokenize(t) for t in TEXTS]
    T = min(len(r) for r in rows)            # equal lengths: no padding in this check
    ids = torch.tensor([r[:T] for r in rows])
    got: dict[str, torch.Tensor] = {}
    capture_latent(lm, ids, lambda name, h: got.__setitem__(name, h.clone()))
    with torch.no_grad():
        hs = lm.model(ids, output_hidden_states=True).hidden_states
    return got, hs


@pytest.mark.model
def test_latent_hooks_name_each_architectures_modules(lm):
    from precompute.latent import latent_modules

    t = latent_modules(lm).tensors
    gemma = "Gemma" in lm.name
    assert t["resid_pre"].startswith("input of model.layers[L].input_layernorm")
    mlp_norm = "pre_feedforward_layernorm" if gemma else "post_attention_layernorm"
    assert t["resid_mid"].startswith(f"input of model.layers[L].{mlp_norm}")
    # Gemma: the attention output the residual stream receives is the post-norm's output
    assert t["attn_out"].startswith("output of model.layers[L]." + ("post_attention_layernorm" if gemma else "self_attn"))
    assert t["mlp_out"].startswith("output of model.layers[L]." + ("post_feedforward_layernorm" if gemma else "mlp"))
    assert t["final_norm"].startswith("output of model.norm")


@pytest.mark.model
def test_latent_captures_add_up(lm, captured):
    got, hs = captured
    n = lm.n_layers
    assert len(got) == 5 * n + 1
    for L in range(n):
        b = f"blocks.{L}.hook_"
        pre, attn, mid, mlp, post = (got[b + k] for k in la.KINDS)
        tol = dict(rtol=1e-5, atol=1e-6 * float(post.abs().max()))
        torch.testing.assert_close(mid, pre + attn, **tol)         # residual after attention
        torch.testing.assert_close(post, mid + mlp, **tol)         # residual after the MLP
        if L > 0:   # the attention norm's input is the previous block's output, bit for bit
            assert torch.equal(pre, got[f"blocks.{L - 1}.hook_resid_post"])
        if L < n - 1:
            assert torch.equal(post, hs[L + 1])


@pytest.mark.model
def test_latent_embedding_and_final_norm_are_the_models_own(lm, captured):
    got, hs = captured
    assert torch.equal(got[la.EMBED], hs[0])                # embedding output (Gemma: scaled)
    assert torch.equal(got[la.FINAL_NORM], hs[-1])          # transformers' last hidden state = final norm
    with torch.no_grad():
        final = lm.model.model.norm(got[f"blocks.{lm.n_layers - 1}.hook_resid_post"])
    torch.testing.assert_close(got[la.FINAL_NORM], final)


# --------------------------------------------------------------------------- planted data

def test_slot_names_and_aliases():
    names = la.slot_names(3)
    assert len(names) == 14 and names[0] == la.EMBED and names[-1] == la.FINAL_NORM
    assert names[la.slot_of(3, 2, "mlp_out")] == "blocks.2.hook_mlp_out"
    assert la.slot_of(3, 2, "resid_pre") == la.slot_of(3, 1, "resid_post")
    assert la.slot_of(3, 0, "resid_pre") == la.slot_of(3, 0, "embed") == 0
    with pytest.raises(ValueError, match="outside the model"):
        la.slot_of(3, 3, "attn_out")


def test_uncentred_projection_keeps_the_offset():
    rng = np.random.default_rng(0)
    offset = np.zeros(16)
    offset[:2] = [30.0, -20.0]
    X = rng.normal(size=(2000, 16)) * np.r_[3.0, 2.0, 1.0, np.full(13, 0.1)] + offset
    coords, fit = la.uncentred_pca(X, 3)
    # the mean of the coordinates is the offset seen along the components (up to their sampling tilt)
    np.testing.assert_allclose(np.abs(coords.mean(0)[:2]), [30.0, 20.0], atol=1.5)
    np.testing.assert_allclose(coords.mean(0), X.mean(0) @ fit["components"].T)
    centred = (X - fit["mean"]) @ fit["components"].T          # what PCA.transform would give
    assert np.abs(centred.mean(0)).max() < 1e-9
    from sklearn.decomposition import PCA
    np.testing.assert_allclose(np.abs(fit["components"]), np.abs(PCA(3).fit(X).components_), atol=1e-8)


def test_streamed_moments_equal_the_direct_fit():
    rng = np.random.default_rng(1)
    parts = [rng.normal(size=(n, 8)) * rng.uniform(0.5, 3, 8) + rng.normal(size=8) * 5 for n in (50, 80, 30)]
    moments = [(len(P), P.mean(0), (P - P.mean(0)).T @ (P - P.mean(0))) for P in parts]
    pooled = la.pca_from_moments(*la.pool_moments(moments), n_components=3)
    direct = la.fit_pca(np.vstack(parts), 3)
    np.testing.assert_allclose(pooled["components"], direct["components"], atol=1e-10)
    np.testing.assert_allclose(pooled["explained_variance"], direct["explained_variance"], rtol=1e-10)


def test_separation_near_one_on_separable_clouds_and_chance_on_identical():
    rng = np.random.default_rng(2)
    A = rng.normal(size=(200, 20))
    B = rng.normal(size=(200, 20)) + 8.0 * np.eye(20)[0]
    s = la.separation(A, B)
    for part in ("raw", "unit"):
        assert s[part]["accuracy"] > 0.97 and s[part]["silhouette"] > 0.2
        assert abs(s[part]["accuracy_shuffled"] - 0.5) < 0.1 and abs(s[part]["silhouette_shuffled"]) < 0.02
    same = la.separation_score(rng.normal(size=(200, 20)), rng.normal(size=(200, 20)))
    assert abs(same["accuracy"] - same["accuracy_shuffled"]) < 0.1 and abs(same["accuracy"] - 0.5) < 0.1
    assert abs(same["silhouette"] - same["silhouette_shuffled"]) < 0.02
    with pytest.raises(ValueError, match="one width"):
        la.separation_score(A, B[:, :5])


def test_norm_summaries_put_position_zero_apart():
    rng = np.random.default_rng(3)
    norms = rng.uniform(9, 11, size=(2, 5, 40))
    norms[0, :, 0] = 500.0
    norms[1, 2, 30:] = np.nan                                  # a shorter document
    np.testing.assert_allclose(la.position0_ratio(norms), [50.0, 1.0], rtol=0.1)
    s = la.norm_summary(norms)
    assert s["pos0"][0] == 500.0 and 9 < s["median"][0] < 11
    assert la.norms_by_position(norms).shape == (2, 40)


def _helix(T=256, d=64, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(T)
    Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    P = sum(a * (np.cos(2 * np.pi * k * t / T)[:, None] * Q[2 * i] + np.sin(2 * np.pi * k * t / T)[:, None] * Q[2 * i + 1])
            for i, (a, k) in enumerate(zip([4.0, 2.0, 1.0], [1, 2, 3])))
    return P + 0.05 * rng.normal(size=(T, d))


def test_helix_score_high_for_sinusoidal_positions_and_near_zero_for_random():
    assert la.helix_score(_helix())["score"] > 0.95
    T, d = 256, 64
    t = np.arange(T)[:, None]
    pe = np.zeros((T, d))                                       # Vaswani et al.'s sinusoidal embedding
    div = np.exp(np.arange(0, d, 2) * (-np.log(10000.0) / d))
    pe[:, 0::2], pe[:, 1::2] = np.sin(t * div), np.cos(t * div)
    assert la.helix_score(pe)["score"] > 0.6
    rand = la.helix_score(np.random.default_rng(4).normal(size=(T, d)))
    assert rand["score"] < 0.1 and len(rand["r2"]) == 6


def test_early_tail_finds_a_planted_line_into_the_cloud():
    rng = np.random.default_rng(5)
    d = 32
    u = np.linalg.qr(rng.normal(size=(d, d)))[0][0]
    tail = np.array([(20 - 2 * i) * np.sqrt(d) * u for i in range(10)]) + 0.1 * rng.normal(size=(10, d))
    out = la.early_tail(np.vstack([tail, rng.normal(size=(200, d))]))
    assert out["tail_length"] in (10, 11) and out["entry_position"] == 1 + out["tail_length"]
    assert out["participation_ratio"] < 1.2 and out["top2_fraction"] > 0.95
    assert la.early_tail(rng.normal(size=(200, d)))["tail_length"] <= 2


# --------------------------------------------------------------------------- the stage

MICRO = dict(layers=[1], max_tokens=3000, train_tokens=3000, seq_len=128, block_size=32, sae_width=128,
             sae_k=8, train_epochs=4, batch_size=4, checkpoint_every=1, eval_tokens=1024,
             word_pairs=False, geometry=False, progress=False, threads=1)
LATENT = dict(n_docs=3, seq_len=24, batch_size=2, sample_tokens=48, umap_tokens=16, vector_tokens=8,
              separation_tokens=24, cv=3)


@pytest.fixture(scope="module")
def latent_atlas(tmp_path_factory):
    from precompute.pipeline import PrecomputeConfig, run_precompute

    out = tmp_path_factory.mktemp("latent") / "atlas"
    return run_precompute(PrecomputeConfig(out=out, latent=True, latent_config=LATENT, **MICRO))


@pytest.mark.model
def test_precompute_writes_latent_files_that_validate(latent_atlas):
    atlas = open_atlas(latent_atlas)
    lat, n, d = atlas.manifest.latent, 30, 576
    K = 4 * n + 2
    assert lat is not None and lat.captures == la.slot_names(n) and (lat.n_docs, lat.n_positions) == (3, 24)
    assert "post_attention_layernorm" in lat.tensors["resid_mid"] and lat.requested["n_docs"] == 3
    cfg = atlas.manifest.configs["latent"]
    assert cfg["seq_len"] == 24 and cfg["corpus"] == "default" and cfg["dtype"] == atlas.manifest.model.dtype
    assert atlas.array("latent/norms.npy").shape == (K, 3, 24)
    assert atlas.array("latent/pca_layer.npy").shape == (n, 5, 48, 3)
    assert atlas.array("latent/umap_layer.npy").shape == (n, 5, 16, 3)
    sample = np.asarray(atlas.array("latent/sample.npy"))
    assert (sample[:, 1] >= 1).all() and len({tuple(r) for r in sample}) == 48
    # stored directions x stored norms = the vectors; their projection is the stored uncentred PCA
    norms = np.asarray(atlas.array("latent/norms.npy"))
    dirs = np.asarray(atlas.array("latent/vectors.npy"), dtype=np.float32)
    assert dirs.shape == (K, 8, d)
    L, j = 15, la.KINDS.index("mlp_out")
    k = la.slot_of(n, L, "mlp_out")
    X = dirs[k] * norms[k, sample[:8, 0], sample[:8, 1]][:, None]
    comps = np.asarray(atlas.array("latent/components_layer.npy"))[L]
    np.testing.assert_allclose(X @ comps.T, np.asarray(atlas.array("latent/pca_layer.npy"))[L, j, :8],
                               rtol=2e-3, atol=2e-3 * float(np.abs(X @ comps.T).max()))
    js = atlas.json("latent/latent.json")
    assert len(js["separation"]) == n and set(js["separation"][0]) == {"raw", "unit"}
    assert js["norms"][la.EMBED]["pos0_ratio"] > 0 and js["bytes"] == lat.bytes
    docs = atlas.table("latent/docs.parquet")
    assert len(docs) == 3 and all(len(t) == 24 for t in docs["tokens"])


@pytest.mark.model
def test_latent_stage_is_skipped_when_done_and_reported(latent_atlas, tmp_path):
    from analysis.report import build_report, format_report, write_figures
    from precompute.latent import LatentConfig, latent_done

    assert latent_done(latent_atlas, LatentConfig(**LATENT))
    assert not latent_done(latent_atlas, LatentConfig(**{**LATENT, "n_docs": 4}))
    rep = build_report(latent_atlas)
    text = format_report(json.loads(json.dumps(rep)))
    assert "Attention vs MLP outputs per layer" in text and "position-0 ratio" in text
    names = {p.name for p in write_figures(latent_atlas, tmp_path)}
    assert {"latent_norms.png", "latent_separation.png", "latent_pca_layers.png", "latent_umap_layers.png"} <= names


@pytest.mark.model
def test_truncated_or_inconsistent_latent_files_are_refused(latent_atlas, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(latent_atlas, bad)
    f = bad / "latent" / "norms.npy"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(AtlasError, match="latent/norms.npy: size"):
        open_atlas(bad, verify="size")
    other = tmp_path / "other"
    shutil.copytree(latent_atlas, other)
    m = json.loads((other / "manifest.json").read_text())
    m["latent"]["sample_tokens"] = 47
    (other / "manifest.json").write_text(json.dumps(m))
    assert any("latent/sample.npy: shape [48, 2], the latent section implies [47, 2]" in p for p in validate(other))
    del m["files"]["latent/umap_layer.npy"]
    m["latent"]["sample_tokens"] = 48
    (other / "manifest.json").write_text(json.dumps(m))
    assert any("umap_layer.npy: missing from the manifest" in p for p in validate(other))


def test_latent_config_refuses_bad_settings():
    from precompute.latent import LatentConfig

    with pytest.raises(ValueError, match="must not exceed sample_tokens"):
        LatentConfig(sample_tokens=10, umap_tokens=20)
    with pytest.raises(ValueError, match="n_docs >= 1"):
        LatentConfig(n_docs=0)
