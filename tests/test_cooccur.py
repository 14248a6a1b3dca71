"""precompute.cooccur.LayerStats against hand counts and an independent slow numpy reference."""
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from precompute.cooccur import LayerStats, block_keys, hist_edges

VOCAB = [f"t{i}" for i in range(50)]


def dense(m):
    return np.asarray(m.todense())


# ----------------------------------------------------------------- hand-made example
def hand_batch():
    """Two documents, F = 3, T = 5 positions after BOS, block_size = 2.

    doc 10 (subset 0, length 5): blocks [0,1], [2,3]; position 4 is a partial block (dropped
    for co-occurrence, still counted as a token).
      pos 0: f0 = 2.0            pos 1: f1 = 1.5           pos 2: f2 = 1.0 (not > 1)
      pos 3: f2 = 3.0            pos 4: f1 = 5.0 (partial block)
    doc 11 (subset 1, length 3, then 2 padding positions): block [0,1]; pos 2 partial.
      pos 0: f2 = 1.2            pos 2: f0 = 0.5 (below)   pos 4 (padding): f0 = 9.0, f1 = 9.0
    """
    acts = torch.zeros(2, 5, 3)
    acts[0, 0, 0], acts[0, 1, 1], acts[0, 2, 2], acts[0, 3, 2], acts[0, 4, 1] = 2, 1.5, 1, 3, 5
    acts[1, 0, 2], acts[1, 2, 0], acts[1, 4, 0], acts[1, 4, 1] = 1.2, 0.5, 9, 9
    tokens = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 0, 0]])
    return dict(acts=acts, token_ids=tokens, doc_ids=[10, 11], subset_ids=[0, 1], lengths=[5, 3])


def test_hand_counts():
    st = LayerStats(3, ["a", "b"], VOCAB, block_size=2, context_left=1, context_right=1,
                    top_k_contexts=2)
    st.update(**hand_batch())
    r = st.finalize()
    assert r.n_tokens == 8 and r.n_blocks == 3
    # blocks: doc10 {0, 1}, {2}; doc11 {2}
    assert dense(r.cooc).tolist() == [[1, 1, 0], [1, 1, 0], [0, 0, 2]]
    assert r.cooc.dtype == np.int64
    assert r.fire_count.tolist() == [1, 2, 2]
    assert r.subset_fire.tolist() == [[1, 0], [2, 0], [1, 1]]
    assert dense(r.blocks).tolist() == [[True, True, False], [False, False, True],
                                        [False, False, True]]
    assert r.block_subset.tolist() == [0, 0, 1] and r.block_subset.dtype == np.int16
    ctx = r.contexts.set_index(["feature", "rank"])
    assert ctx.loc[(1, 0), "value"] == 5.0 and ctx.loc[(1, 0), "doc"] == 10
    assert ctx.loc[(1, 0), "tokens"] == ["t4", "t5"] and ctx.loc[(1, 0), "peak"] == 1  # doc end
    assert ctx.loc[(0, 0), "tokens"] == ["t1", "t2"] and ctx.loc[(0, 0), "peak"] == 0   # BOS cut
    assert list(ctx.loc[2, "doc"]) == [10, 11] and list(ctx.loc[2, "subset"]) == ["a", "b"]
    assert ctx.loc[(2, 1), "value"] == pytest.approx(1.2)
    assert ctx.loc[(2, 0), "tokens"] == ["t3", "t4", "t5"] and ctx.loc[(2, 0), "peak"] == 1
    assert len(r.contexts) == 4    # f0: 1 doc, f1: 1 doc, f2: 2 docs
    tt = r.top_tokens
    assert tt[tt.feature == 1].token.tolist() == ["t2", "t5"]   # count 1 each, token id order
    assert tt["count"].sum() == 5
    # histogram: values 2, 1.5, 5, 3, 1.2 on edges starting at the threshold
    e = r.act_hist_edges
    assert e[0] == pytest.approx(1.0) and e[-1] == pytest.approx(1e3) and len(e) == 65
    assert r.act_hist.sum() == 5
    assert r.act_hist[1, np.searchsorted(e, 5.0, side="right") - 1] == 1


def test_threshold_zero_counts_values_above_zero():
    st = LayerStats(3, ["a", "b"], VOCAB, threshold=0.0, block_size=2)
    st.update(**hand_batch())
    r = st.finalize()
    # now f2 = 1.0 at doc10 pos 2 and f0 = 0.5 at doc11 pos 2 (partial block) fire too
    assert r.fire_count.tolist() == [2, 2, 3]
    assert dense(r.cooc).tolist() == [[1, 1, 0], [1, 1, 0], [0, 0, 2]]
    assert r.act_hist_edges[0] == pytest.approx(1e-3)


# ------------------------------------------------------------ random vs slow reference
def random_docs(seed, n_docs=13, T=40, F=20, S=3):
    rng = np.random.default_rng(seed)
    docs = []
    for d in range(n_docs):
        L = int(rng.integers(0, T + 1))
        a = rng.exponential(1.0, size=(T, F)).astype(np.float32) * (rng.random((T, F)) < 0.15)
        a[L:] += 5.0                      # padding garbage must be ignored
        docs.append(dict(acts=a, tokens=rng.integers(0, len(VOCAB), T), doc=1000 + d,
                         subset=int(rng.integers(0, S)), length=L))
    return docs


def batches(docs, size):
    for i in range(0, len(docs), size):
        ch = docs[i:i + size]
        yield dict(acts=torch.tensor(np.stack([d["acts"] for d in ch])),
                   token_ids=torch.tensor(np.stack([d["tokens"] for d in ch])),
                   doc_ids=torch.tensor([d["doc"] for d in ch]),
                   subset_ids=torch.tensor([d["subset"] for d in ch]),
                   lengths=torch.tensor([d["length"] for d in ch]))


def reference(docs, F, S, thr, bs, edges, k, left, right, k_tok):
    """Straightforward loops over documents, tokens and features."""
    fire = np.zeros(F, np.int64)
    sub = np.zeros((F, S), np.int64)
    hist = np.zeros((F, len(edges) - 1), np.int64)
    C = np.zeros((F, F), np.int64)
    tokcount = {}
    cands = {f: [] for f in range(F)}
    rows, n_tokens, n_blocks = [], 0, 0
    for order, d in enumerate(docs):
        a, L = d["acts"], d["length"]
        n_tokens += L
        for t in range(L):
            for f in range(F):
                if a[t, f] > thr:
                    fire[f] += 1
                    sub[f, d["subset"]] += 1
                    b = 0
                    while b + 1 < len(edges) - 1 and a[t, f] >= edges[b + 1]:
                        b += 1
                    hist[f, b] += 1
                    key = (f, int(d["tokens"][t]))
                    tokcount[key] = tokcount.get(key, 0) + 1
        for blk in range(L // bs):
            present = [f for f in range(F) if (a[blk * bs:(blk + 1) * bs, f] > thr).any()]
            for i in present:
                for j in present:
                    C[i, j] += 1
            row = np.zeros(F, bool)
            row[present] = True
            rows.append((row, d["subset"], int(block_keys([d["doc"]], [blk])[0])))
            n_blocks += 1
        for f in range(F):
            firing = [t for t in range(L) if a[t, f] > thr]
            if firing:
                p = max(firing, key=lambda t: (a[t, f], -t))
                lo, hi = max(0, p - left), min(L, p + right + 1)
                cands[f].append((-a[p, f], order, d["doc"], d["subset"],
                                 [VOCAB[i] for i in d["tokens"][lo:hi]], p - lo))
    ctx = []
    for f in range(F):
        for r, c in enumerate(sorted(cands[f], key=lambda c: (c[0], c[1]))[:k]):
            ctx.append((f, r, -c[0], c[2], c[3], c[4], c[5]))
    tt = []
    for f in range(F):
        mine = sorted((-n, tok) for (ff, tok), n in tokcount.items() if ff == f)[:k_tok]
        tt += [(f, r, VOCAB[tok], -n) for r, (n, tok) in enumerate(mine)]
    return dict(fire=fire, sub=sub, hist=hist, C=C, ctx=ctx, tt=tt, rows=rows,
                n_tokens=n_tokens, n_blocks=n_blocks)


def run(docs, batch_size=4, **kw):
    st = LayerStats(kw.pop("F", 20), ["x", "y", "z"], VOCAB, **kw)
    for b in batches(docs, batch_size):
        st.update(**b)
    return st.finalize()


# the three co-occurrence paths on F = 20 features; the wide one forced by a low threshold
# (cooc_topk 19 keeps every partner, so its C is the full one)
PATHS = {"dense": {}, "sparse": dict(dense_max_features=0), "wide": dict(wide_from=10, cooc_topk=19)}


@pytest.mark.parametrize("path", PATHS)
def test_matches_slow_reference(path):
    docs = random_docs(0)
    kw = dict(threshold=0.8, block_size=8, top_k_contexts=3, context_left=2, context_right=1,
              top_k_tokens=4, hist_bins=6, hist_range=(0.8, 4.0), max_stored_blocks=7)
    r = run(docs, cooc_chunk_blocks=5, **PATHS[path], **kw)
    ref = reference(docs, 20, 3, 0.8, 8, hist_edges(0.8, 6, (0.8, 4.0)), 3, 2, 1, 4)
    assert r.n_tokens == ref["n_tokens"] and r.n_blocks == ref["n_blocks"] > 10
    np.testing.assert_array_equal(dense(r.cooc), ref["C"])
    assert (r.cooc != r.cooc.T).nnz == 0
    np.testing.assert_array_equal(r.fire_count, ref["fire"])
    np.testing.assert_array_equal(r.subset_fire, ref["sub"])
    np.testing.assert_array_equal(r.act_hist, ref["hist"])
    assert r.act_hist[:, -1].sum() > 0        # open-ended last bin was exercised
    # stored blocks: the 7 with the smallest keys, in feeding order
    kept = sorted(sorted(range(len(ref["rows"])), key=lambda i: ref["rows"][i][2])[:7])
    np.testing.assert_array_equal(dense(r.blocks), np.array([ref["rows"][i][0] for i in kept]))
    np.testing.assert_array_equal(r.block_subset, [ref["rows"][i][1] for i in kept])
    got = [tuple(x) for x in r.contexts[["feature", "rank", "value", "doc", "subset", "tokens",
                                        "peak"]].itertuples(index=False)]
    exp = [(f, rk, np.float32(v), doc, "xyz"[s], toks, p) for f, rk, v, doc, s, toks, p in ref["ctx"]]
    assert got == exp
    assert [tuple(x) for x in r.top_tokens.itertuples(index=False)] == ref["tt"]


def test_dense_and_sparse_paths_identical():
    docs = random_docs(1, n_docs=20)
    kw = dict(threshold=0.5, block_size=4)
    d = run(docs, **kw)
    s = run(docs, dense_max_features=0, cooc_chunk_blocks=3, **kw)
    assert d.cooc.dtype == s.cooc.dtype == np.int64 and d.cooc_topk is s.cooc_topk is None
    np.testing.assert_array_equal(dense(d.cooc), dense(s.cooc))


def top_k_reference(C, k):
    """Loops over a dense C: each row's diagonal and its k largest off-diagonal counts (ties:
    lower column), every kept pair stored in both rows with its exact count."""
    C = dense(C)
    keep = np.eye(len(C), dtype=bool)
    for i in range(len(C)):
        partners = [j for j in range(len(C)) if j != i and C[i, j] > 0]
        for j in sorted(partners, key=lambda j: (-C[i, j], j))[:k]:
            keep[i, j] = keep[j, i] = True
    return np.where(keep, C, 0)


@pytest.mark.parametrize("k", [1, 3])
def test_wide_path_keeps_the_top_partners_of_the_exact_cooccurrence(tmp_path, k):
    docs = random_docs(8, n_docs=24)
    kw = dict(threshold=0.5, block_size=4, cooc_chunk_blocks=5)
    full = run(docs, dense_max_features=0, **kw)       # the full C, accumulated as before
    expect = top_k_reference(full.cooc, k)
    assert (expect != dense(full.cooc)).sum() > 50       # many pairs are really dropped
    make = lambda: LayerStats(20, ["x", "y", "z"], VOCAB, wide_from=10, cooc_topk=k,  # noqa: E731
                              cooc_chunk_entries=30, **kw)   # a few rows of C at a time
    whole = _fed(docs, 4, make).finalize()
    assert whole.cooc_topk == k and whole.cooc.dtype == np.int64 and whole.n_blocks == full.n_blocks
    np.testing.assert_array_equal(dense(whole.cooc), expect)
    # a checkpoint in the middle, resumed in a fresh object
    _, resumed = _checkpointed(make, list(batches(docs, 4)), 3, tmp_path / "ck.pt")
    np.testing.assert_array_equal(dense(resumed.finalize().cooc), expect)
    # two shards, merged through their states as the pipeline does
    shards = [_fed(docs[:9], 2, make), _fed(docs[9:], 3, make)]
    merged = make()
    for sh in shards:
        part = make()
        part.load_state_dict(sh.state_dict())
        merged.merge(part)
    np.testing.assert_array_equal(dense(merged.finalize().cooc), expect)


def results_equal(a, b):
    for name, x in a.files().items():
        y = b.files()[name]
        if isinstance(x, pd.DataFrame):
            pd.testing.assert_frame_equal(x, y)
        elif sp.issparse(x):
            assert x.dtype == y.dtype and x.shape == y.shape and (x != y).nnz == 0, name
        else:
            assert x.dtype == y.dtype, name
            np.testing.assert_array_equal(x, y, err_msg=name)
    assert (a.n_tokens, a.n_blocks, a.top_tokens_exact, a.cooc_topk) == (b.n_tokens, b.n_blocks,
                                                                          b.top_tokens_exact, b.cooc_topk)


@pytest.mark.parametrize("path", PATHS)
def test_checkpoint_resume_identical(tmp_path, path):
    docs = random_docs(2, n_docs=24)
    # tiny token accumulator so merges and pruning happen mid-run in both runs
    kw = dict(threshold=0.5, block_size=4, max_stored_blocks=9, top_k_contexts=2,
              cooc_chunk_blocks=6, max_token_pairs=30, token_prune_keep=2, **PATHS[path])

    def make():
        st = LayerStats(20, ["x", "y", "z"], VOCAB, **kw)
        st._tok_merge_min = 8
        return st

    whole = make()
    for b in batches(docs, 3):
        whole.update(**b)
    ref = whole.finalize()
    assert not ref.top_tokens_exact           # pruning really happened

    bl = list(batches(docs, 3))
    first, resumed = _checkpointed(make, bl, 5, tmp_path / "ck.pt")
    results_equal(ref, resumed.finalize())
    # the run that was checkpointed can also go on unchanged
    for b in bl[5:]:
        first.update(**b)
    results_equal(ref, first.finalize())


def test_load_rejects_other_settings(tmp_path):
    st = LayerStats(20, ["x", "y", "z"], VOCAB, block_size=4)
    st.save(tmp_path / "ck.pt")
    other = LayerStats(20, ["x", "y", "z"], VOCAB, block_size=8)
    with pytest.raises(ValueError, match="block_size"):
        other.load(tmp_path / "ck.pt")


def test_batching_does_not_change_results():
    docs = random_docs(3, n_docs=17)
    kw = dict(threshold=0.5, block_size=4, max_stored_blocks=11)
    results_equal(run(docs, batch_size=1, **kw), run(docs, batch_size=17, **kw))


def test_float32_fold_is_exact(monkeypatch):
    """Force the dense float32 partial sums to be folded into int64 mid-run."""
    import precompute.cooccur as cc
    docs = random_docs(4, n_docs=10)
    ref = run(docs, threshold=0.5, block_size=4).cooc
    monkeypatch.setattr(cc, "_F32_EXACT", 7)
    st = LayerStats(20, ["x", "y", "z"], VOCAB, threshold=0.5, block_size=4, cooc_chunk_blocks=3)
    for b in batches(docs, 2):
        st.update(**b)
    assert st.cooc_i64 is not None
    np.testing.assert_array_equal(dense(st.finalize().cooc), dense(ref))


def test_histogram_edges_are_closed_left_and_open_ended():
    st = LayerStats(3, ["a", "b"], VOCAB, block_size=2, hist_bins=2, hist_range=(1.0, 4.0))
    st.update(**hand_batch())
    r = st.finalize()
    np.testing.assert_allclose(r.act_hist_edges, [1, 2, 4])
    # f0: 2.0 (exactly on an edge -> upper bin); f1: 1.5, 5.0 (beyond last edge -> last bin);
    # f2: 3.0, 1.2
    assert r.act_hist.tolist() == [[0, 1], [1, 1], [1, 1]]


def test_context_ties_keep_first_fed_document_and_first_position():
    acts = torch.zeros(3, 6, 2)
    acts[0, [1, 4], 0] = 2.0          # doc 7: two equal peaks -> the first (pos 1)
    acts[1, 2, 0] = 2.0               # doc 3: same value, fed later
    acts[2, 0, 0] = 2.0               # doc 5: next batch
    tokens = torch.arange(18).view(3, 6) % len(VOCAB)
    st = LayerStats(2, ["a"], VOCAB, top_k_contexts=2, context_left=1, context_right=0)
    st.update(acts[:2], tokens[:2], [7, 3], [0, 0])
    st.update(acts[2:], tokens[2:], [5], [0])
    ctx = st.finalize().contexts
    assert ctx.doc.tolist() == [7, 3]
    assert ctx.tokens.tolist() == [["t0", "t1"], ["t7", "t8"]]


def test_empty_and_silent_inputs():
    st = LayerStats(4, ["a"], VOCAB)
    r = st.finalize()                                   # nothing fed at all
    assert r.n_tokens == r.n_blocks == 0 and r.cooc.shape == (4, 4) and r.cooc.nnz == 0
    assert len(r.contexts) == len(r.top_tokens) == 0 and r.blocks.shape == (0, 4)
    st.update(torch.zeros(2, 300, 4), torch.zeros(2, 300, dtype=torch.long), [0, 1], [0, 0],
              lengths=[300, 100])                       # nothing fires
    r = st.finalize()
    assert (r.n_tokens, r.n_blocks) == (400, 1) and r.cooc.nnz == 0
    assert r.blocks.shape == (1, 4) and r.blocks.nnz == 0 and r.block_subset.tolist() == [0]


def test_wide_dense_tiles_match_stored_blocks_and_sparse_path():
    """F = 700 spans several row tiles of the dense (lower-triangle) accumulation."""
    g = torch.Generator().manual_seed(5)
    F, kw = 700, dict(block_size=16, max_stored_blocks=10 ** 6, cooc_chunk_blocks=20)
    dense_st = LayerStats(F, ["a", "b"], VOCAB, **kw)
    sparse_st = LayerStats(F, ["a", "b"], VOCAB, dense_max_features=0, **kw)
    for i in range(3):
        acts = 3 * torch.rand(4, 64, F, generator=g) * (torch.rand(4, 64, F, generator=g) < 0.01)
        args = (acts, torch.randint(0, 50, (4, 64), generator=g), torch.arange(4) + 4 * i,
                torch.tensor([0, 1, 0, 1]), torch.tensor([64, 50, 33, 16]))
        dense_st.update(*args)
        sparse_st.update(*args)
    d, s = dense_st.finalize(), sparse_st.finalize()
    B = d.blocks.astype(np.int64)
    assert B.shape[0] == d.n_blocks == 3 * (4 + 3 + 2 + 1)
    expected = dense(B.T @ B)
    assert expected[np.triu_indices(F, 1)].sum() > 1000        # many off-diagonal pairs
    np.testing.assert_array_equal(dense(d.cooc), expected)
    np.testing.assert_array_equal(dense(s.cooc), expected)


def test_torch_and_numpy_key_counting_agree():
    from precompute.cooccur import _sum_by_key
    g = torch.Generator().manual_seed(0)
    keys = torch.randint(0, 300, (5000,), generator=g)
    counts = torch.randint(1, 9, (5000,), generator=g)
    for c in (None, counts):
        u1, c1 = _sum_by_key(keys, c, use_numpy=True)
        u2, c2 = _sum_by_key(keys, c, use_numpy=False)
        assert torch.equal(u1, u2) and torch.equal(c1, c2)
        exp = np.bincount(keys.numpy(), None if c is None else counts.numpy())
        assert c1.tolist() == exp[exp > 0].tolist() and u1.tolist() == np.flatnonzero(exp).tolist()


def test_bfloat16_activations_use_torch_path_with_same_results():
    docs = random_docs(6, n_docs=8)
    for d in docs:      # make every value exactly representable in bfloat16
        d["acts"] = torch.tensor(d["acts"]).bfloat16().float().numpy()
    kw = dict(threshold=0.5, block_size=4)
    ref = run(docs, **kw)
    st = LayerStats(20, ["x", "y", "z"], VOCAB, **kw)
    for b in batches(docs, 4):
        b["acts"] = b["acts"].bfloat16()
        st.update(**b)
    results_equal(ref, st.finalize())


def test_bad_ids_are_rejected_and_results_are_copies():
    st = LayerStats(3, ["a", "b"], VOCAB[:5], block_size=2)
    b = hand_batch()
    with pytest.raises(ValueError, match="token ids"):
        st.update(**b)                                   # token 5 is outside a 5-token vocab
    st = LayerStats(3, ["a"], VOCAB, block_size=2)
    with pytest.raises(ValueError, match="subset_ids"):
        st.update(**b)                                   # subset 1 of a single subset
    st = LayerStats(3, ["a", "b"], VOCAB, block_size=2)
    st.update(**dict(b, token_ids=torch.cat([b["token_ids"], b["token_ids"]], 1)))  # wider ids
    r = st.finalize()
    st.update(**b)
    assert r.fire_count.tolist() == [1, 2, 2] and r.act_hist.sum() == 5


def test_stored_blocks_sample_the_whole_pass_evenly():
    # a corpus fed subset by subset (as the embedded one is): the first blocks fed are all
    # subset x, but the stored sample must represent every subset by its share of blocks
    rng = np.random.default_rng(7)
    docs = []
    for s in range(3):
        for d in range(40):
            a = rng.exponential(1.0, size=(32, 20)).astype(np.float32) * (rng.random((32, 20)) < 0.2)
            docs.append(dict(acts=a, tokens=rng.integers(0, len(VOCAB), 32), doc=100 * s + d, subset=s, length=32))
    kw = dict(threshold=0.5, block_size=4)                       # 8 blocks per document, 960 in all
    r = run(docs, batch_size=5, max_stored_blocks=120, **kw)
    assert r.n_blocks == 960 and r.blocks.shape[0] == 120
    counts = np.bincount(r.block_subset, minlength=3)
    assert counts.min() >= 25, counts                        # ~40 each; feeding order kept 120, 0, 0
    # the same sample in any order and batching, and a larger sample holds the smaller one
    rev = run(docs[::-1], batch_size=7, max_stored_blocks=120, **kw)
    order = np.lexsort(dense(r.blocks).T[::-1])
    order_rev = np.lexsort(dense(rev.blocks).T[::-1])
    np.testing.assert_array_equal(dense(r.blocks)[order], dense(rev.blocks)[order_rev])
    big = run(docs, batch_size=5, max_stored_blocks=300, **kw)
    small_rows = {tuple(row) for row in dense(r.blocks)}
    assert small_rows <= {tuple(row) for row in dense(big.blocks)}
    everything = run(docs, batch_size=5, max_stored_blocks=10 ** 6, **kw)
    assert everything.blocks.shape[0] == 960
    np.testing.assert_array_equal(everything.block_subset, np.repeat([0, 1, 2], 320))


# ------------------------------------------------------------------ merging shard partials
def _checkpointed(make, bl, cut, path):
    """(the run fed ``bl[:cut]`` and saved to ``path``, a fresh one loaded from it and fed the rest)"""
    first = make()
    for b in bl[:cut]:
        first.update(**b)
    first.save(path)
    resumed = make()
    resumed.load(path)
    for b in bl[cut:]:
        resumed.update(**b)
    return first, resumed


def _fed(docs, batch_size, make):
    st = make()
    for b in batches(docs, batch_size):
        st.update(**b)
    return st


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("cuts", [[7], [3, 9, 15], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]])
def test_merging_the_partials_of_a_split_stream_equals_the_unsplit_stream(path, cuts):
    docs = random_docs(5, n_docs=22)
    # ties between documents (same peak in several shards), a sample smaller than the blocks
    # of one shard, and a float32 fold mid-merge
    for d in docs[::3]:
        d["acts"][0, 4] = 7.0
    kw = dict(threshold=0.5, block_size=4, max_stored_blocks=5, top_k_contexts=3,
              cooc_chunk_blocks=4, **PATHS[path])

    def make():
        return LayerStats(20, ["x", "y", "z"], VOCAB, **kw)

    ref = _fed(docs, 3, make).finalize()
    edges = [0, *cuts, len(docs)]
    parts = [_fed(docs[a:b], 2, make) for a, b in zip(edges, edges[1:])]
    merged = make()
    for p in parts:
        merged.merge(p)
    results_equal(ref, merged.finalize())
    # and through state_dict (how partials travel): the first partial absorbs the others
    first = make()
    first.load_state_dict(parts[0].state_dict())
    for p in parts[1:]:
        again = make()
        again.load_state_dict(p.state_dict())
        first.merge(again)
    results_equal(ref, first.finalize())


def test_merge_folds_float32_sums_before_they_could_round(monkeypatch):
    import precompute.cooccur as cc
    docs = random_docs(6, n_docs=12)
    ref = run(docs, threshold=0.5, block_size=4).cooc
    monkeypatch.setattr(cc, "_F32_EXACT", 9)
    make = lambda: LayerStats(20, ["x", "y", "z"], VOCAB, threshold=0.5, block_size=4)  # noqa: E731
    merged = make()
    for a in range(0, 12, 4):
        merged.merge(_fed(docs[a:a + 4], 2, make))
    assert merged.cooc_i64 is not None
    np.testing.assert_array_equal(dense(merged.finalize().cooc), dense(ref))


def test_merge_keeps_token_counts_and_refuses_other_settings():
    docs = random_docs(7, n_docs=10)
    make = lambda **k: LayerStats(20, ["x", "y", "z"], VOCAB, threshold=0.5, block_size=4, **k)  # noqa: E731
    ref = _fed(docs, 2, make).finalize()
    merged = _fed(docs[:5], 2, make).merge(_fed(docs[5:], 5, make))
    pd.testing.assert_frame_equal(ref.top_tokens, merged.finalize().top_tokens)
    with pytest.raises(ValueError, match="block_size"):
        make().merge(LayerStats(20, ["x", "y", "z"], VOCAB, threshold=0.5, block_size=8))
