"""Universality (METHODS 5): alignment, correlation, pairing, SVCCA, RSA, nulls, subspaces,
and the ``saegeo compare`` stage, each against planted known structure."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy import stats

from analysis import universality as U


def sparse_acts(rng, n, F, k=4, scale=1.0):
    """[n, F] non-negative activations with k active features per unit."""
    rows = np.repeat(np.arange(n), k)
    cols = np.concatenate([rng.choice(F, k, replace=False) for _ in range(n)])
    vals = rng.gamma(2.0, scale, n * k)
    return sp.csr_matrix((vals, (rows, cols)), shape=(n, F), dtype=np.float32)


# ------------------------------------------------------------------ correlation and pairing


def test_chunked_correlation_equals_dense_reference():
    rng = np.random.default_rng(0)
    A = sparse_acts(rng, 3000, 60, k=5)
    B = sp.csr_matrix(A[:, rng.permutation(60)[:50]] * 0.5 + sparse_acts(rng, 3000, 50, k=3))
    B = sp.hstack([B, sp.csr_matrix((3000, 1))]).tocsr()          # a dead feature: correlation 0
    ref = U.correlation_dense_reference(A, B)
    for kw in ({}, {"chunk_units": 257}, {"chunk_units": 500, "block_b": 7}, {"max_bytes": 60 * 8 * 10}):
        got = U.correlation_matrix(A, B, **kw)
        np.testing.assert_allclose(got, ref, atol=1e-9)
    assert np.all(U.correlation_matrix(A, B)[:, -1] == 0)
    # dense input takes the same path
    np.testing.assert_allclose(U.correlation_matrix(A.toarray(), B.toarray(), chunk_units=999), ref, atol=1e-9)
    with np.errstate(invalid="ignore", divide="ignore"):
        full = np.corrcoef(A.toarray().T, B.toarray().T)
    np.testing.assert_allclose(ref[:5, :5], full[:5, 60:65], atol=1e-9)


def test_pairing_recovers_a_planted_permutation():
    rng = np.random.default_rng(1)
    n, F = 4000, 200
    A = sparse_acts(rng, n, F, k=6)
    perm = rng.permutation(F)                  # B feature j is A feature perm[j], rescaled and noised
    B = sp.csr_matrix(A[:, perm].multiply(rng.uniform(0.5, 2.0, F)))
    B.data *= rng.uniform(0.8, 1.2, B.nnz)
    best, corr = U.best_matches(A, B, chunk_units=700, block_b=64)
    assert np.array_equal(best, perm)
    assert corr.min() > 0.9


def test_one_to_one_rules():
    best = np.array([3, 3, 1, 3, 1, 0])
    corr = np.array([0.2, 0.9, 0.5, 0.9, 0.6, 0.05])
    assert U.pair_features(best, corr).all()
    first = U.pair_features(best, corr, "one_to_one", "first")
    assert first.tolist() == [True, False, True, False, False, True]   # first B seen keeps its A
    high = U.pair_features(best, corr, "one_to_one", "highest")
    assert high.tolist() == [False, True, False, False, True, True]    # highest keeps it; tie -> first
    elig = corr > 0.1                                                   # filters first: B 5 takes no part
    assert U.pair_features(best, corr, "one_to_one", "first", eligible=elig).tolist() == \
        [True, False, True, False, False, False]
    with pytest.raises(ValueError, match="rule"):
        U.pair_features(best, corr, "one_to_one", "best")


def test_published_filters():
    tok_a = [["the", "a"], [",", "."], ["Paris", "London"]]
    tok_b = [["The"], ["cat"], ["<bos>", ";"], ["paris"]]
    best = np.array([0, 0, 2, 2])
    f = U.pair_filters(np.ones(4), tok_a, tok_b, best, specials=["<bos>"])
    assert f["shared"].tolist() == [True, False, False, True]
    assert f["punctuation"].tolist() == [False, False, True, False]
    assert U.is_punctuation_or_special(" —") and U.is_punctuation_or_special("  ") and not U.is_punctuation_or_special("x.")


def test_top_unit_tokens_and_unit_max():
    acts = sp.csr_matrix(np.array([[0, 1.0], [3.0, 0], [2.0, 5.0], [0, 0.5]], np.float32))
    # units: {0, 1}, {2}, {3}
    m = U.unit_max(acts, np.array([0, 2, 3, 4]), np.array([0, 1, 2, 3]))
    assert m.toarray().tolist() == [[3.0, 1.0], [2.0, 5.0], [0.0, 0.5]]
    tops = U.top_unit_tokens(m, [" cat", "dog ", "cat"], k=5)
    assert tops == [["cat", "dog"], ["dog", "cat"]]


# ------------------------------------------------------------------ SVCCA, RSA and nulls


def planted_pair(rng, n=600, r=12, d_a=40, d_b=48, noise=0.0):
    """Two sets of paired rows that are the same r-dimensional features seen through two
    different random linear maps (two SAEs in different bases), plus a little noise."""
    Z = rng.normal(size=(n, r))
    X = Z @ rng.normal(size=(r, d_a))
    Y = Z @ rng.normal(size=(r, d_b))
    X += noise * X.std() * rng.normal(size=X.shape)
    Y += noise * Y.std() * rng.normal(size=Y.shape)
    return X, Y


def test_svcca_is_one_on_linearly_related_sets_and_zero_on_unrelated():
    rng = np.random.default_rng(2)
    X, Y = planted_pair(rng, noise=0.0)
    assert U.svcca(X, Y) > 0.999
    X2, Y2 = planted_pair(rng, noise=0.01)
    assert U.svcca(X2, Y2) > 0.95
    X3, Y3 = planted_pair(rng, noise=0.0)
    Y3 = X3 @ np.linalg.qr(rng.normal(size=(40, 40)))[0] * 3.0 + 1.0   # rotated, scaled, shifted
    assert U.svcca(X3, Y3) == pytest.approx(1.0, abs=1e-9)
    # unrelated: independent low-rank sets of many rows
    A = rng.normal(size=(4000, 5)) @ rng.normal(size=(5, 40))
    B = rng.normal(size=(4000, 5)) @ rng.normal(size=(5, 40))
    assert U.svcca(A, B) < 0.05


def test_published_svcca_collapses_to_one_direction():
    rng = np.random.default_rng(3)
    vals = []
    for _ in range(20):
        X, Y = planted_pair(rng, noise=0.0)
        assert U.svcca(X, Y) > 0.999                   # strongly (exactly linearly) related
        vals.append(U.svcca(X, Y, variant="published"))
    vals = np.array(vals)
    # one canonical direction: |corr| of the first principal components, far below 1
    assert vals.mean() < 0.6, vals
    X, Y = planted_pair(rng, noise=0.0)
    Ux = U._reduced_basis(X, 0.99, published=True)
    assert Ux.shape[1] == 1
    pc_x = (X - X.mean(0)) @ np.linalg.svd(X - X.mean(0), full_matrices=False)[2][0]
    pc_y = (Y - Y.mean(0)) @ np.linalg.svd(Y - Y.mean(0), full_matrices=False)[2][0]
    assert U.svcca(X, Y, variant="published") == pytest.approx(abs(np.corrcoef(pc_x, pc_y)[0, 1]), abs=1e-9)


def test_rsa_against_a_hand_computed_example():
    X = np.array([[1.0, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 2]])
    Y = np.array([[2.0, 1], [1, 3], [0, 1], [5, 5]])
    # Pearson correlation of rows, hand-computed entry by entry:
    # X rows centred: (2/3,-1/3,-1/3), (-1/3,2/3,-1/3), (1/3,1/3,-2/3), (-2/3,-2/3,4/3)
    sx = {(0, 1): -0.5, (0, 2): 0.5, (0, 3): -0.5, (1, 2): 0.5, (1, 3): -0.5, (2, 3): -1.0}
    # Y rows have two entries: corr = sign of the difference product: (1,-1),(-1,1),(-1,1),(0,0)->nan->0
    sy = {(0, 1): -1.0, (0, 2): -1.0, (0, 3): 0.0, (1, 2): 1.0, (1, 3): 0.0, (2, 3): 0.0}
    keys = sorted(sx)
    expect = stats.spearmanr([sx[k] for k in keys], [sy[k] for k in keys]).statistic
    # ranks by hand: x: [-0.5 x3 -> 3, 0.5 x2 -> 5.5, -1 -> 1] ; y: [-1 x2 -> 1.5, 0 x3 -> 4, 1 -> 6]
    rx = np.array([3, 5.5, 3, 5.5, 3, 1.0])
    ry = np.array([1.5, 1.5, 4, 6, 4, 4.0])
    hand = np.corrcoef(rx, ry)[0, 1]
    assert hand == pytest.approx(expect)
    assert U.rsa(X, Y) == pytest.approx(hand)
    rng = np.random.default_rng(4)
    Z = rng.normal(size=(30, 8))
    assert U.rsa(Z, Z @ rng.normal(size=(8, 8)) * 0 + Z) == pytest.approx(1.0)


def test_permutation_p_is_uniform_under_the_null():
    rng = np.random.default_rng(5)
    ps = {"svcca": [], "rsa": []}
    for i in range(300):
        X, Y = rng.normal(size=(8, 3)), rng.normal(size=(8, 3))
        for m in ps:
            ps[m].append(U.similarity_null(X, Y, m, n_shuffles=39, seed=i)["p"])
    for m, p in ps.items():
        p = np.array(p)
        assert p.min() >= 1 / 40
        assert stats.kstest(p, "uniform").pvalue > 0.01, m
    assert U.permutation_p(0.5, np.array([0.1, 0.6, 0.5])) == 0.75


def test_null_detects_a_real_pairing():
    rng = np.random.default_rng(6)
    X, Y = planted_pair(rng, n=200, noise=0.05)
    for m in ("svcca", "rsa"):
        r = U.similarity_null(X, Y, m, n_shuffles=100, seed=0)
        assert r["p"] == pytest.approx(1 / 101)
        assert r["value"] > r["null_mean"] + 5 * r["null_std"]


# ------------------------------------------------------------------ semantic subspaces


def test_keywords_and_membership(tmp_path):
    groups = U.load_keywords()
    for g in ("time", "calendar", "people_roles", "nature", "emotions", "months", "countries", "biology"):
        assert len(groups[g]) >= 10
    assert "may" in groups["months"]
    text = "In May the mayor said: may it rain."
    assert U.whole_word(text, 2, 6) and U.whole_word(text, 3, 6)
    assert not U.whole_word(text, 11, 14)                 # "may" of "mayor"
    m = U.keyword_members([" May", "may", "rain", ""], np.array([True, False, True, False]), groups)
    assert m["months"].tolist() == [0] and m["nature"].tolist() == [2]
    f = tmp_path / "kw.tsv"
    f.write_text("# mine\ncolours\tred\ncolours\tBlue\n")
    assert U.load_keywords(f) == {"colours": {"red", "blue"}}
    f.write_text("colours red\n")
    with pytest.raises(ValueError, match="group<TAB>keyword"):
        U.load_keywords(f)


# ------------------------------------------------------------------ real tokenizers


@pytest.fixture(scope="module")
def tokenizers():
    from precompute.compare import load_tokenizer

    return load_tokenizer("smollm2"), load_tokenizer("gemma3-270m")


def real_texts(n=12):
    from precompute.corpus import open_corpus

    docs = []
    for i, d in enumerate(open_corpus("default")):
        docs.append(d.text[:3000])
        if len(docs) == n:
            break
    docs.append("Déjà vu — naïve café 日本語のテキスト 🙂👍🏽 tabs\tand   spaces\r\n"
                "<|im_start|>user\nhi<|im_end|> <bos> <start_of_turn>model  x² ≤ ∑ αβγ\n\n\n  end")
    return docs


@pytest.mark.model
def test_character_offset_alignment_of_smollm2_and_gemma3(tokenizers):
    from precompute.compare import _encode

    ta, tb = tokenizers
    assert ta.is_fast and tb.is_fast and len(ta) != len(tb)
    spec_a, spec_b = set(ta.all_special_ids), set(tb.all_special_ids)
    total_units = total_chars = covered = 0
    multi = 0
    for text in real_texts():
        ids_a, off_a = _encode(ta, text)
        ids_b, off_b = _encode(tb, text)
        keep_a = np.array([i not in spec_a for i in ids_a])
        keep_b = np.array([i not in spec_b for i in ids_b])
        al = U.align_offsets(off_a, off_b, keep_a, keep_b, n_chars=len(text))
        assert np.all(al.end > al.start) and np.all(al.start[1:] >= al.end[:-1])       # ordered, disjoint
        for side_ptr, side_tok, off, keep in ((al.ptr_a, al.tokens_a, off_a, keep_a),
                                              (al.ptr_b, al.tokens_b, off_b, keep_b)):
            assert len(np.unique(side_tok)) == len(side_tok) and keep[side_tok].all()  # no special token in a unit
            for u in range(al.n_units):
                toks = side_tok[side_ptr[u]:side_ptr[u + 1]]
                assert len(toks) >= 1
                chars = np.zeros(len(text), bool)
                for s, e in off[toks]:
                    chars[s:e] = True
                # the unit's tokens cover exactly the unit's characters, every one of them
                assert chars[al.start[u]:al.end[u]].all() and chars.sum() == al.end[u] - al.start[u]
        multi += int((np.diff(al.ptr_a) > 1).sum() + (np.diff(al.ptr_b) > 1).sum())
        total_units += al.n_units
        total_chars += len(text)
        covered += int((al.end - al.start).sum())
    assert multi > 0                       # units of several tokens occur (the tokenizers differ)
    assert total_units > 2000
    assert covered / total_chars > 0.98    # almost all text is in some unit


@pytest.mark.model
def test_the_same_tokenizer_aligns_one_to_one(tokenizers):
    from precompute.compare import _encode, same_tokenizer

    ta, tb = tokenizers
    assert same_tokenizer(ta, ta) and not same_tokenizer(ta, tb)
    text = real_texts(2)[0]
    ids, off = _encode(ta, text)
    al = U.align_offsets(off, off, n_chars=len(text))
    ident = U.identity_alignment(off)
    assert ident.n_units == len(ids)
    # offsets alone merge only byte pieces of one character; otherwise one unit per token
    assert al.n_units == len({(s, e) for s, e in off.tolist()})


# ------------------------------------------------------------------ the compare stage


@pytest.fixture(scope="module")
def real_atlases(tmp_path_factory):
    """Two small real atlases (statistics only) of the embedded models with their shipped SAEs."""
    from precompute.pipeline import PrecomputeConfig, run_precompute

    root = tmp_path_factory.mktemp("atlases")
    out = {}
    for model, layers in (("smollm2", [8, 15]), ("gemma3-270m", [5])):
        out[model] = run_precompute(PrecomputeConfig(
            model=model, saes=["embedded"], layers=layers, max_tokens=1024, seq_len=128, out=root / model,
            geometry=False, word_pairs=False, progress=False))
    return out


def run_cli(*args):
    from typer.testing import CliRunner

    from app.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


FAST = ("--n-shuffles", 20, "--n-shuffles-small", 50, "--max-tokens", 1500, "--seq-len", 128)


@pytest.mark.model
def test_compare_an_atlas_with_itself_pairs_every_feature_with_itself(real_atlases, tmp_path):
    smol = real_atlases["smollm2"]
    r = run_cli("compare", smol, smol, "--out", tmp_path / "self", "--layers-b", 8, *FAST)
    assert r.exit_code == 0, r.output
    c = U.open_comparison(tmp_path / "self")
    m = c.manifest
    assert m.alignment.same_tokenizer and m.alignment.n_units == m.alignment.n_tokens_a == m.alignment.n_tokens_b
    assert m.a.layers == [8, 15] and m.b.layers == [8]
    sv = np.asarray(c.array("svcca"))
    p = c.pairs(8, 8)
    fired = p["tokens_b"].map(len) > 0
    assert (p["feature_a"] == p["feature_b"])[fired].mean() > 0.95   # ties between features firing identically
    assert np.allclose(p.loc[fired, "corr"], 1.0, atol=1e-5)
    assert sv[0, 0] > 0.9 and c.array("svcca_p")[0, 0] == pytest.approx(1 / 21)
    assert sv[1, 0] < sv[0, 0]                                          # another layer is less similar
    assert set(c.subspaces()["group"]) == set(U.load_keywords())
    assert U.validate_comparison(tmp_path / "self") == []


@pytest.mark.model
def test_compare_two_models_with_two_tokenizers_end_to_end(real_atlases, tmp_path):
    out = tmp_path / "smol-vs-gemma"
    r = run_cli("compare", real_atlases["smollm2"], real_atlases["gemma3-270m"], "--out", out, "--layers-a", "8",
                "--pairing", "one_to_one", "--one-to-one-rule", "highest", *FAST)
    assert r.exit_code == 0, r.output
    c = U.open_comparison(out)
    al = c.manifest.alignment
    assert not al.same_tokenizer and 0 < al.n_units <= min(al.n_tokens_a, al.n_tokens_b)
    assert c.manifest.configs["compare"]["pairing"] == "one_to_one"
    p = c.pairs(8, 5)
    assert list(p.columns) == ["feature_b", "feature_a", "corr", "tokens_a", "tokens_b", "punctuation",
                               "shared_token", "kept"]
    kept = p[p["kept"]]
    assert kept["feature_a"].is_unique and (kept["corr"] > 0.1).all() and kept["shared_token"].all()
    assert len(kept) == c.array("n_pairs")[0, 0] > 10
    r = run_cli("report", out)
    assert r.exit_code == 0, r.output
    for text in ("SVCCA of paired decoder directions", "RSA of paired", "Semantic subspaces", "L8", "L5",
                 "needs > 2 per side"):
        assert text in r.output
    js = run_cli("report", out, "--json")
    import json

    rep = json.loads(js.output)
    assert rep["layers_a"] == [8] and rep["layers_b"] == [5] and len(rep["svcca"]) == 1
    # a truncated file is caught when the comparison is opened
    f = out / "pairs" / "8_5.parquet"
    f.write_bytes(f.read_bytes()[:-10])
    r = run_cli("report", out)
    assert r.exit_code == 1 and "truncated" in r.output


@pytest.mark.model
def test_compare_refuses_bad_input_clearly(real_atlases, tmp_path):
    from analysis.synthetic import make_synthetic_atlas

    smol, gemma = real_atlases["smollm2"], real_atlases["gemma3-270m"]
    synth = make_synthetic_atlas(tmp_path / "synth", n_features=60, d_model=8, layers=(0,), n_blocks=50, geometry=False)
    cases = [
        ((tmp_path / "missing", gemma), "no such atlas directory"),
        ((synth, gemma), "synthetic atlas has no model or SAEs"),
        ((smol, gemma, "--layers-b", "9"), "atlas B"),
        ((smol, gemma, "--layers-a", "8,8"), "twice"),
        ((smol, gemma, "--pairing", "best"), "bad compare settings"),
        ((smol, gemma, "--keywords", tmp_path / "none.tsv"), "keyword file"),
    ]
    for args, msg in cases:
        r = run_cli("compare", *args, "--out", tmp_path / "c")
        assert r.exit_code == 1 and msg in r.output, (args, r.output)
        assert "Traceback" not in r.output
        assert not (tmp_path / "c").exists()
    (tmp_path / "taken").mkdir()
    r = run_cli("compare", smol, gemma, "--out", tmp_path / "taken")
    assert r.exit_code == 1 and "already exists" in r.output


@pytest.mark.model
def test_an_interrupted_comparison_resumes_from_its_checkpoints(real_atlases, tmp_path, monkeypatch):
    import precompute.compare as pc

    smol = real_atlases["smollm2"]
    cfg = dict(atlas_a=smol, atlas_b=smol, layers_a=[8, 15], layers_b=[8], max_tokens=600, seq_len=128,
               n_shuffles=10, n_shuffles_small=10, progress=False)
    fresh = pc.run_compare(pc.CompareConfig(out=tmp_path / "fresh", **cfg))
    real_pair = pc._pair_layers
    calls = []

    def interrupted(cfg_, La, Lb, *a):
        calls.append((La, Lb))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_pair(cfg_, La, Lb, *a)

    monkeypatch.setattr(pc, "_pair_layers", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pc.run_compare(pc.CompareConfig(out=tmp_path / "resumed", **cfg))
    assert not (tmp_path / "resumed").exists() and (tmp_path / "resumed.partial" / "pairs" / "8_8.json").is_file()
    # resuming reads the captured activations and the finished layer pair back
    monkeypatch.setattr(pc, "_acts", lambda *a: pytest.fail("the capture ran again"))
    calls.clear()
    out = pc.run_compare(pc.CompareConfig(out=tmp_path / "resumed", resume=True, **cfg))
    assert [c[:2] for c in calls] == [(15, 8)]
    a, b = U.open_comparison(fresh), U.open_comparison(out)
    for name in ("svcca", "rsa", "svcca_p", "n_pairs"):
        np.testing.assert_array_equal(a.array(name), b.array(name))
    assert not (tmp_path / "resumed.partial").exists()


@pytest.mark.model
def test_sigkill_in_capture_and_pairing_then_resume_gives_an_identical_comparison(real_atlases, tmp_path):
    """Five SIGKILLs at random moments of the capture and of the layer-pair stage, each followed
    by ``--resume``: the comparison equals one made without interruption, file for file."""
    import json
    import os
    import random
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    smol = real_atlases["smollm2"]
    cfg = dict(atlas_a=str(smol), atlas_b=str(smol), layers_a=[8, 15], layers_b=[8, 15], max_tokens=3000,
               seq_len=128, batch_size=2, checkpoint_every=1, n_shuffles=200, n_shuffles_small=200, progress=False)
    code = ("import json, sys; from precompute.compare import CompareConfig, run_compare; "
            "run_compare(CompareConfig(**json.loads(sys.argv[1])))")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}     # the same BLAS threads in every run: the same sums
    ref = tmp_path / "ref"
    subprocess.run([sys.executable, "-c", code, json.dumps({**cfg, "out": str(ref)})], cwd=repo, env=env,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    out = tmp_path / "killed"
    work = tmp_path / "killed.partial"
    args = json.dumps({**cfg, "out": str(out), "resume": True})

    def parts() -> int:
        return len(list((work / "capture").glob("part_*.npz")))

    def pairs() -> int:
        return len(list((work / "pairs").glob("*.json")))

    rng = random.Random(0)
    killed = []
    for target in ("capture", "capture", "capture", "pairs", "pairs"):
        before = (parts(), pairs())
        proc = subprocess.Popen([sys.executable, "-c", code, args], cwd=repo, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        try:
            # wait for this run's own progress in the target stage, then kill somewhere after it
            reached = (lambda: parts() > before[0]) if target == "capture" else (lambda: (work / "pairs").is_dir())
            while proc.poll() is None and not reached() and time.time() < deadline:
                time.sleep(0.02)
            time.sleep(rng.uniform(0, 0.5 if target == "capture" else 1.5))
            if proc.poll() is None:
                stage = "pairs" if (work / "pairs").is_dir() else "capture"
                os.kill(proc.pid, signal.SIGKILL)
                killed.append((stage, parts(), pairs()))
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
    assert [k[0] for k in killed].count("capture") >= 2 and [k[0] for k in killed].count("pairs") >= 1, killed
    assert not out.exists()
    subprocess.run([sys.executable, "-c", code, args], cwd=repo, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=600)
    A, B = U.open_comparison(ref), U.open_comparison(out)
    assert sorted(A.manifest.files) == sorted(B.manifest.files)
    for rel, info in A.manifest.files.items():
        if rel == "summary.json":        # holds the run's seconds; everything else in it must agree
            assert {k: v for k, v in A.summary().items() if k != "seconds"} == \
                {k: v for k, v in B.summary().items() if k != "seconds"}
        else:
            assert info.sha256 == B.manifest.files[rel].sha256, rel
    assert not work.exists()


@pytest.mark.model
def test_the_same_model_with_other_saes_is_encoded_with_those_saes(real_atlases, tmp_path):
    """SmolLM2 with its seed-0 SAEs against SmolLM2 with its seed-1 SAEs: B's activations come
    from B's own SAEs (once, they were A's encoded twice, so every feature paired with itself at r = 1)."""
    from precompute.compare import CompareConfig, run_compare
    from precompute.pipeline import PrecomputeConfig, run_precompute
    from precompute.train_saes import shipped_saes

    seed1 = run_precompute(PrecomputeConfig(
        model="smollm2", saes=[str(p) for p in shipped_saes("smollm2-seed1")[:1]], max_tokens=1024, seq_len=128,
        out=tmp_path / "seed1", geometry=False, word_pairs=False, progress=False))
    out = run_compare(CompareConfig(atlas_a=real_atlases["smollm2"], atlas_b=seed1, layers_a=[8], max_tokens=1500,
                                    seq_len=128, n_shuffles=10, n_shuffles_small=10, progress=False,
                                    out=tmp_path / "c"))
    r = U.open_comparison(out).pairs(8, 8)["corr"]
    r = r[r > 0.1]                              # features that fired in these few tokens
    assert len(r) > 100
    assert (r > 0.99).mean() < 0.5              # two seeds: related features, not the same ones
    assert (r > 0.5).mean() > 0.2               # but many close partners
