"""SAEs: training with sae-lens on planted structure, the sae-lens disk format, fit checks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from precompute.errors import SAEError
from precompute.models import load_model
from precompute.saes import check_fit, load_sae, reconstruction_metrics, save_sae, train_sae

D = 576   # SmolLM2's d_model, so the trained SAE fits the embedded model


def planted(n=6000, n_true=48, active=3, seed=0):
    """Activations that are sparse sums of ``n_true`` unit directions (the dictionary)."""
    rng = np.random.default_rng(seed)
    dirs = rng.standard_normal((n_true, D))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    x = np.zeros((n, D), np.float32)
    for i in range(n):
        j = rng.choice(n_true, active, replace=False)
        x[i] = rng.uniform(1, 4, active) @ dirs[j]
    return x, dirs


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    x, dirs = planted()
    s = train_sae(x, "blocks.4.hook_resid_post", "SmolLM2-135M-Instruct", width=96, k=3,
                  n_samples=30 * len(x), batch_size=256, lr=4e-3, seed=0, progress=False)
    path = save_sae(s, tmp_path_factory.mktemp("sae") / "layer4")
    return s, path, x, dirs


def test_training_recovers_planted_dictionary(trained):
    s, _, x, dirs = trained
    m = s.metrics
    assert m["train_l0"] == pytest.approx(3.0)            # TopK: exactly k active (all > 0 here)
    assert m["train_explained_variance"] > 0.9
    assert s.training["trainer"] == "sae_lens.SAETrainer" and s.training["k"] == 3
    W = s.decoder()
    assert W.shape == (96, D)
    np.testing.assert_allclose(np.linalg.norm(W, axis=1), 1.0, atol=1e-4)   # folded unit rows
    best = (dirs @ W.T).max(axis=1)                          # each true direction has a feature
    assert np.median(best) > 0.9


def test_saved_sae_loads_through_the_pretrained_loader(trained):
    s, path, x, _ = trained
    assert (path / "cfg.json").is_file() and (path / "sae_weights.safetensors").is_file()
    back = load_sae(str(path))          # the same function that loads sae-lens releases
    assert back.hook == "blocks.4.hook_resid_post" and back.layer == 4
    assert back.architecture == "topk" and back.width == 96 and back.d_in == D
    xt = torch.from_numpy(x[:200])
    with torch.no_grad():
        assert torch.equal(back.sae.encode(xt), s.sae.encode(xt))
    again = reconstruction_metrics(back.sae, x)
    assert again["explained_variance"] == pytest.approx(s.metrics["train_explained_variance"], abs=1e-6)


@pytest.mark.model
def test_fit_checks_against_the_real_model(trained, tmp_path):
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    lm = load_model("smollm2", device="cpu")
    _, path, _, _ = trained
    good = load_sae(str(path))
    check_fit(good, lm)
    check_fit(good, lm, layer=4)
    with pytest.raises(SAEError, match="reads blocks.4.hook_resid_post .*not layer 5"):
        check_fit(good, lm, layer=5)
    # an SAE for a wider model (GPT-2's 768), written by sae-lens itself
    wide = StandardSAE(StandardSAEConfig(d_in=768, d_sae=64, metadata=SAEMetadata(hook_name="blocks.4.hook_resid_pre")))
    wide.save_model(tmp_path / "wide")
    with pytest.raises(SAEError, match="width 768, but SmolLM2-135M-Instruct has d_model = 576"):
        check_fit(load_sae(str(tmp_path / "wide")), lm)
    deep = StandardSAE(StandardSAEConfig(d_in=576, d_sae=64, metadata=SAEMetadata(hook_name="blocks.40.hook_resid_post")))
    deep.save_model(tmp_path / "deep")
    with pytest.raises(SAEError, match=r"layers 0\.\.29"):
        check_fit(load_sae(str(tmp_path / "deep")), lm)


def test_unknown_sae_ids_are_refused(tmp_path, monkeypatch):
    with pytest.raises(SAEError, match="unknown SAE 'no-such-release/x'"):
        load_sae("no-such-release/x")
    with pytest.raises(SAEError, match="has no SAE 'blocks.99.hook_resid_pre'"):
        load_sae("gpt2-small-res-jb/blocks.99.hook_resid_pre")
    with pytest.raises(SAEError, match="not an SAE saved by sae-lens"):
        load_sae(str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SAEError, match="Hub could not be reached"):
        load_sae("gpt2-small-res-jb/blocks.8.hook_resid_pre")
