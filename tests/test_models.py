"""Language models: the two embedded models, forward hooks, early stop, clear errors."""
from __future__ import annotations

import pytest
import torch

from precompute.errors import ModelError
from precompute.models import hook_name, load_model, parse_hook

SPEC = {
    "smollm2": dict(display="SmolLM2-135M-Instruct", n_layers=30, d_model=576, vocab=49_152,
                    attn="self_attn", mlp="mlp"),
    # Gemma's sub-layer outputs pass through their own post-norms before the residual add
    "gemma3-270m": dict(display="Gemma-3-270M", n_layers=18, d_model=640, vocab=262_144,
                        attn="post_attention_layernorm", mlp="post_feedforward_layernorm"),
}
TEXT = "The capital of France is Paris. def square(x): return x ** 2"


@pytest.fixture(scope="module", params=list(SPEC))
def name(request):
    return request.param


@pytest.fixture(scope="module")
def lm(name):
    return load_model(name, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def spec(name):
    return SPEC[name]


@pytest.fixture(scope="module")
def ids(lm):
    return torch.tensor([[lm.bos_token_id] + lm.tokenize(TEXT)])


@pytest.mark.model
def test_embedded_model_shape_and_cache(name, lm, spec):
    assert lm.name == spec["display"]
    assert (lm.n_layers, lm.d_model) == (spec["n_layers"], spec["d_model"])
    assert lm.model.get_output_embeddings().weight.shape == (spec["vocab"], spec["d_model"])
    assert len(lm.tokenizer) == spec["vocab"]
    assert "gguf" in lm.source and lm.dtype == torch.float32
    assert next(lm.model.parameters()).dtype == torch.float32
    assert load_model(name, device="cpu") is lm          # cached per process
    assert lm.tokenizer.decode(lm.tokenize(" hello world")) == " hello world"


@pytest.mark.model
def test_hook_tensors_name_the_residual_terms(lm, spec):
    prefix = "model.layers[L]"
    assert lm.hook_tensors() == {
        "resid_pre": f"input of {prefix}",
        "attn_out": f"output of {prefix}.{spec['attn']}",
        "mlp_out": f"output of {prefix}.{spec['mlp']}",
        "resid_post": f"output of {prefix}",
    }
    for L in (0, lm.n_layers - 1):
        assert lm.attn[L] is getattr(lm.blocks[L], spec["attn"])
        assert lm.mlp[L] is getattr(lm.blocks[L], spec["mlp"])


@pytest.mark.model
def test_hooks_equal_output_hidden_states(lm, ids):
    n = lm.n_layers
    kinds = ("resid_pre", "attn_out", "mlp_out", "resid_post")
    got = lm.capture(ids, [hook_name(L, k) for L in range(n) for k in kinds])
    with torch.no_grad():
        hs = lm.model(ids, output_hidden_states=True).hidden_states
    assert len(hs) == n + 1
    for L in range(n):
        pre, post = got[hook_name(L, "resid_pre")], got[hook_name(L)]
        assert post.shape == (1, ids.shape[1], lm.d_model)
        assert torch.equal(pre, hs[L])
        if L < n - 1:
            assert torch.equal(post, hs[L + 1])
        # the architecture's own residual terms add up to the block output
        total = pre + got[hook_name(L, "attn_out")] + got[hook_name(L, "mlp_out")]
        torch.testing.assert_close(total, post, rtol=1e-5, atol=1e-6 * float(post.abs().max()))
        assert not torch.allclose(got[hook_name(L, "attn_out")], got[hook_name(L, "mlp_out")])
    # transformers applies the final norm to its last hidden state; the hook does not
    assert not torch.allclose(got[hook_name(n - 1)], hs[n])


@pytest.mark.model
def test_forward_stops_after_deepest_requested_block(lm, ids):
    calls = []
    watched = (2, 3, lm.n_layers - 1)
    handles = [lm.blocks[i].register_forward_hook(lambda *a, i=i: calls.append(i)) for i in watched]
    try:
        got = lm.capture(ids, [hook_name(1), hook_name(2, "mlp_out")])
    finally:
        for h in handles:
            h.remove()
    assert calls == [2]
    assert set(got) == {hook_name(1), hook_name(2, "mlp_out")}
    # and the hooks are removed again: a plain forward pass is unaffected
    with torch.no_grad():
        logits = lm.model(ids).logits
    assert logits.shape[:2] == ids.shape


@pytest.mark.model
def test_greedy_continuation_is_sensible(lm):
    prompt = torch.tensor([[lm.bos_token_id] + lm.tokenize("The capital of France is")])
    with torch.no_grad():
        out = lm.model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8,
                                do_sample=False, pad_token_id=lm.bos_token_id)
    text = lm.tokenizer.decode(out[0, prompt.shape[1]:])
    print(f"\n{lm.name}: The capital of France is|{text}")
    assert "Paris" in text or "France" in text


@pytest.mark.model
def test_gemma_bos_residual_norm_is_massive():
    # Gemma parks a huge-norm vector at the first position from the early layers on;
    # a wrong embedding scale or norm placement in the loader would erase it
    gemma = load_model("gemma3-270m", device="cpu", dtype="float32")    # the fixture's, cached
    ids = torch.tensor([[gemma.bos_token_id] + gemma.tokenize(TEXT)])
    norms = gemma.capture(ids, [hook_name(6)])[hook_name(6)][0].norm(dim=-1)
    ratio = float(norms[0] / norms[1:].median())
    print(f"\nGemma layer 6 resid_post: |x_0| / median |x_t| = {ratio:.1f}")
    assert ratio > 5


@pytest.mark.model
def test_layer_outside_model_refused(lm, ids):
    n = lm.n_layers
    with pytest.raises(ModelError, match=rf"layer {n} is outside the model .*0\.\.{n - 1}"):
        lm.capture(ids, [hook_name(n)])


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
