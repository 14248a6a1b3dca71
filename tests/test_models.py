"""Language models: the embedded SmolLM2, forward hooks, early stop, clear errors."""
from __future__ import annotations

import pytest
import torch

from precompute.errors import ModelError
from precompute.models import hook_name, load_model, parse_hook


@pytest.fixture(scope="module")
def lm():
    return load_model("smollm2", device="cpu")


@pytest.fixture(scope="module")
def ids(lm):
    text = "The capital of France is Paris. def square(x): return x ** 2"
    return torch.tensor([[lm.bos_token_id] + lm.tokenize(text)])


@pytest.mark.model
def test_embedded_model_shape_and_cache(lm):
    assert (lm.n_layers, lm.d_model) == (30, 576)
    assert lm.name == "SmolLM2-135M-Instruct" and "gguf" in lm.source
    assert load_model("smollm2", device="cpu") is lm          # cached per process
    assert lm.tokenizer.decode(lm.tokenize(" hello world")) == " hello world"


@pytest.mark.model
def test_hooks_equal_output_hidden_states(lm, ids):
    hooks = [hook_name(L) for L in (0, 7, 28)] + [hook_name(7, k) for k in ("resid_pre", "attn_out", "mlp_out")]
    got = lm.capture(ids, hooks)
    with torch.no_grad():
        hs = lm.model(ids, output_hidden_states=True).hidden_states
    for L in (0, 7, 28):   # hidden_states[L + 1] is the output of block L (not for the last block: final norm)
        h = got[hook_name(L)]
        assert h.shape == (1, ids.shape[1], 576)
        assert torch.equal(h, hs[L + 1])
    assert torch.equal(got[hook_name(7, "resid_pre")], hs[7])
    # Llama blocks are sequential: resid_post = resid_pre + attn_out + mlp_out
    total = got[hook_name(7, "resid_pre")] + got[hook_name(7, "attn_out")] + got[hook_name(7, "mlp_out")]
    assert torch.allclose(total, got[hook_name(7)], atol=1e-4)
    assert not torch.allclose(got[hook_name(7, "attn_out")], got[hook_name(7, "mlp_out")])


@pytest.mark.model
def test_forward_stops_after_deepest_requested_block(lm, ids):
    calls = []
    handles = [lm.blocks[i].register_forward_hook(lambda *a, i=i: calls.append(i)) for i in (3, 4, 29)]
    try:
        lm.capture(ids, [hook_name(1), hook_name(3, "mlp_out")])
    finally:
        for h in handles:
            h.remove()
    assert calls == [3]
    # and the hooks are removed again: a plain forward pass is unaffected
    with torch.no_grad():
        logits = lm.model(ids).logits
    assert logits.shape[:2] == ids.shape


@pytest.mark.model
def test_layer_outside_model_refused(lm, ids):
    with pytest.raises(ModelError, match=r"layer 30 is outside the model .*0\.\.29"):
        lm.capture(ids, [hook_name(30)])


def test_hook_names():
    assert parse_hook("blocks.12.hook_resid_post") == (12, "resid_post")
    with pytest.raises(ModelError, match="unsupported hook point"):
        parse_hook("blocks.12.attn.hook_z")


def test_unknown_model_offline_says_hub_unreachable(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="Hub could not be reached.*local folder"):
        load_model("no-such-org/no-such-model-xyz", device="cpu")


def test_local_folder_without_model_refused(tmp_path):
    with pytest.raises(ModelError, match="not a Hugging Face model folder"):
        load_model(str(tmp_path), device="cpu")
