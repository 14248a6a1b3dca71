"""bfloat16 against float32: the same corpus documents through both precisions of each embedded
model, compared where the atlas uses them (hidden states, SAE firing sets, statistics counts)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

import precompute.models as models
from precompute.cooccur import LayerStats
from precompute.corpus import open_corpus, tokenize_corpus
from precompute.errors import ModelError
from precompute.models import cpu_has_native_bf16, hook_name, load_model, resolve_dtype
from precompute.pipeline import _batch_ids, _flat, _unflat
from precompute.saes import load_sae
from precompute.train_saes import DEFAULT_LAYERS, EMBEDDED_SAES

N_DOCS, SEQ = 4, 256          # compared documents; as many again supply the synthetic SAE's directions
WIDTH, K = 2048, 32

# Measured on this machine (4 docs x 256 tokens, BOS excluded, middle layer resid_post,
# synthetic TopK SAE from real activation directions):
#   smollm2 L15:     cosine median 0.99994, 1st pct 0.99972, min 0.986;
#                    Jaccard mean 0.968, 5th pct 0.882 (neighbouring tokens: mean ~0.1)
#   gemma3-270m L9:  cosine median 0.999993, 1st pct 0.99996, min 0.99985;
#                    Jaccard mean 0.941, 5th pct 0.778
# Gemma's firing sets move more despite the higher cosine: its residual norms reach 1e5, so
# bfloat16's relative rounding is spread over directions that several features score alike.
TOL = {  # cosine median, cosine 1st percentile, Jaccard mean, Jaccard 5th percentile
    "smollm2": (0.999, 0.995, 0.90, 0.70),
    "gemma3-270m": (0.999, 0.995, 0.85, 0.55),
}


def middle_layer(name: str) -> int:
    layers = DEFAULT_LAYERS[name]
    return layers[len(layers) // 2]


@pytest.fixture(scope="module", params=list(TOL))
def run(request):
    name = request.param
    m32 = load_model(name, device="cpu", dtype="float32")
    m16 = load_model(name, device="cpu", dtype="bfloat16")
    tc = tokenize_corpus(open_corpus("default"), m32.tokenize, seq_len=SEQ, max_docs=2 * N_DOCS,
                         progress=False)
    assert tc.n_docs == 2 * N_DOCS
    ids, lens = _batch_ids(tc, 0, tc.n_docs, m32.bos_token_id)
    hook = hook_name(middle_layer(name))
    h32 = m32.capture(ids, [hook])[hook]
    h16 = m16.capture(ids, [hook])[hook]
    return SimpleNamespace(name=name, m32=m32, m16=m16, tc=tc, ids=ids, lens=lens, hook=hook,
                           h32=h32, h16=h16)


def synthetic_sae(d_in: int, hook: str, pool: torch.Tensor):
    """TopK SAE whose encoder rows are centred, normalised real activations: a feature fires
    where the stream points like one of the sampled tokens, so firing sets carry meaning."""
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=WIDTH, k=K, metadata=SAEMetadata(hook_name=hook)))
    mean = pool.mean(0)
    pick = torch.randint(len(pool), (WIDTH,), generator=torch.Generator().manual_seed(0))
    dirs = pool[pick] - mean
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    with torch.no_grad():
        sae.W_enc.copy_(dirs.T)
        sae.W_dec.copy_(dirs)
        sae.b_enc.zero_()
        sae.b_dec.copy_(mean)        # subtracted from the input before encoding
    return sae


@pytest.fixture(scope="module")
def sae(run):
    folder = EMBEDDED_SAES / run.name / run.hook
    if folder.is_dir():   # a shipped SAE, once train-saes has written it
        return load_sae(folder).sae
    pool = _flat(run.h32[N_DOCS:], run.lens[N_DOCS:])     # directions from the other documents
    return synthetic_sae(run.m32.d_model, run.hook, pool)


def compared(run):
    """float32 and bfloat16 hidden states of the compared documents' real tokens, as float32."""
    lens = run.lens[:N_DOCS]
    return _flat(run.h32[:N_DOCS], lens), _flat(run.h16[:N_DOCS], lens).float()


@pytest.mark.model
def test_bf16_model_is_the_fp32_model_rounded(run):
    assert run.m16.dtype == torch.bfloat16 and run.h16.dtype == torch.bfloat16
    assert run.h32.dtype == torch.float32
    p32 = dict(run.m32.model.named_parameters())
    p16 = dict(run.m16.model.named_parameters())
    assert p16.keys() == p32.keys()
    for k, p in p16.items():
        assert p.dtype == torch.bfloat16, k
        assert torch.equal(p, p32[k].to(torch.bfloat16)), k


@pytest.mark.model
def test_hidden_states_cosine(run):
    a, b = compared(run)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1).numpy()
    med, p1 = np.median(cos), np.percentile(cos, 1)
    print(f"\n{run.name} {run.hook}: bf16 vs fp32 cosine over {len(cos)} tokens: "
          f"median {med:.6f}, 1st pct {p1:.6f}, min {cos.min():.6f}")
    tol_med, tol_p1, _, _ = TOL[run.name]
    assert med >= tol_med and p1 >= tol_p1
    assert not torch.equal(a, b)      # the bf16 model really computed in bf16


@pytest.mark.model
def test_sae_firing_sets_agree(run, sae):
    a, b = compared(run)
    with torch.no_grad():
        fa, fb = sae.encode(a) > 0, sae.encode(b) > 0
    k = int(sae.cfg.k)
    assert (fa.sum(1) <= k).all() and fa.sum(1).float().mean() > 0.9 * k
    # firing is token-specific, not the same few features everywhere
    assert int(fa.any(0).sum()) >= sae.cfg.d_sae // 8
    jac = ((fa & fb).sum(1) / (fa | fb).sum(1)).numpy()
    # The same measure between neighbouring tokens of one precision is what "different" looks
    # like - on the token-specific features: Gemma's SAEs carry dense features that fire on
    # most tokens (they track the few very large directions of its residual stream), which
    # would make any two tokens look alike.
    dense = fa.float().mean(0) > 0.5
    sa, sb = fa[:, ~dense], fb[:, ~dense]
    nb = ((sa[1:] & sa[:-1]).sum(1) / (sa[1:] | sa[:-1]).sum(1).clamp(min=1)).numpy()
    js = ((sa & sb).sum(1) / (sa | sb).sum(1).clamp(min=1)).numpy()
    print(f"\n{run.name} {run.hook}: bf16 vs fp32 firing-set Jaccard over {len(jac)} tokens: "
          f"mean {jac.mean():.3f}, 5th pct {np.percentile(jac, 5):.3f}, min {jac.min():.3f}; "
          f"{int(dense.sum())} dense features; on the others {js.mean():.3f} "
          f"(neighbouring tokens: mean {nb.mean():.3f})")
    _, _, tol_mean, tol_p5 = TOL[run.name]
    assert jac.mean() >= tol_mean and np.percentile(jac, 5) >= tol_p5
    assert js.mean() >= tol_mean - 0.05 and nb.mean() < 0.5


def layer_stats(run, acts):
    st = LayerStats(acts.shape[-1], run.tc.subsets, [str(i) for i in range(len(run.m32.tokenizer))],
                    threshold=0.0, block_size=64)
    n = N_DOCS
    st.update(acts, run.ids[:n, 1:], torch.arange(n),
              torch.from_numpy(run.tc.subset_ids[:n].astype(np.int64)), run.lens[:n])
    return st.finalize()


@pytest.mark.model
def test_statistics_counts_are_exact_integers_in_any_dtype(run, sae):
    a, b = compared(run)
    lens = run.lens[:N_DOCS]
    with torch.no_grad():
        acts = _unflat(sae.encode(a), lens)
        acts_bf16model = _unflat(sae.encode(b), lens)
    ref = layer_stats(run, acts)
    # the same firing pattern in other dtypes: bfloat16 keeps every positive value positive
    for same in (acts.bfloat16(), acts.bfloat16().float()):
        r = layer_stats(run, same)
        assert np.array_equal(r.fire_count, ref.fire_count)
        assert np.array_equal(r.subset_fire, ref.subset_fire)
        assert (r.cooc != ref.cooc).nnz == 0 and (r.blocks != ref.blocks).nnz == 0
        assert (r.n_tokens, r.n_blocks) == (ref.n_tokens, ref.n_blocks)
    # a different firing pattern (the bf16 model's) still gives exact, consistent integer counts
    for r, x in ((ref, acts), (layer_stats(run, acts_bf16model), acts_bf16model)):
        assert r.fire_count.dtype == np.int64 and r.cooc.dtype == np.int64
        assert r.subset_fire.dtype == np.int64 and r.act_hist.dtype == np.int64
        assert int(r.fire_count.sum()) == int((x > 0).sum()) == int(r.act_hist.sum())
        B = r.blocks.astype(np.int64)
        assert r.n_blocks == B.shape[0] == int((lens // 64).sum())
        assert (r.cooc != (B.T @ B)).nnz == 0


def test_auto_dtype_is_bf16_exactly_where_native(monkeypatch):
    cpu = torch.device("cpu")
    expected = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    assert resolve_dtype("auto", cpu) == expected
    for native, dtype in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(models, "cpu_has_native_bf16", lambda native=native: native)
        assert resolve_dtype("auto", cpu) == dtype
        assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    for name in ("float32", "bfloat16", "float16"):
        assert resolve_dtype(name, cpu) == getattr(torch, name)


def test_unknown_dtype_names_the_allowed_ones():
    with pytest.raises(ModelError, match="unknown dtype 'fp8'.*auto, float32, bfloat16, float16"):
        resolve_dtype("fp8", torch.device("cpu"))
    with pytest.raises(ModelError, match="unknown dtype 'half'"):     # refused before any loading
        load_model("smollm2", device="cpu", dtype="half")
