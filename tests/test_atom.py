"""Atom scale (METHODS 2): word pairs, distractor diagnosis, LDA, crystal search, baseline."""
import json

import numpy as np
import pytest

from analysis import atom


# ---------------------------------------------------------------- word pairs

def test_builtin_word_pairs_cover_the_twelve_tasks():
    df = atom.load_word_pairs()
    assert list(df.columns) == ["task", "input", "output"]
    counts = df["task"].value_counts()
    assert set(counts.index) == set(atom.TASKS) and len(atom.TASKS) == 12
    assert counts.min() >= 20
    assert not df.duplicated(["task", "input"]).any()
    assert (df["input"] != df["output"]).all()
    # spot-check a few facts and that non-ASCII survives the round trip
    facts = set(zip(df["task"], df["input"], df["output"]))
    assert ("country-capital", "France", "Paris") in facts
    assert ("English-German", "king", "König") in facts
    assert ("singular-plural", "mouse", "mice") in facts
    assert ("present-past", "go", "went") in facts


def test_user_word_pair_files(tmp_path):
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("task\tinput\toutput\tnote\nanimal-sound\tdog\tbark\tx\nanimal-sound\tcat\t meow \t\n",
                   encoding="utf-8")
    df = atom.load_word_pairs(tsv)
    assert df.values.tolist() == [["animal-sound", "dog", "bark"], ["animal-sound", "cat", "meow"]]

    csv = tmp_path / "pairs.csv"
    csv.write_text('Task,Input,Output\nnumber-word,911,"nine, one, one"\nnumber-word,NaN,none\n', encoding="utf-8")
    df = atom.load_word_pairs(csv)
    assert df["input"].tolist() == ["911", "NaN"]          # kept as words, not numbers or missing
    assert df["output"].tolist() == ["nine, one, one", "none"]

    bad = tmp_path / "bad.tsv"
    bad.write_text("task\tinput\nx\ty\n", encoding="utf-8")
    with pytest.raises(ValueError, match="lacks column.*output"):
        atom.load_word_pairs(bad)
    bad.write_text("task\tinput\toutput\nx\ty\t\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2 has an empty"):
        atom.load_word_pairs(bad)
    bad.write_text("task\tinput\toutput\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no pairs"):
        atom.load_word_pairs(bad)
    bad.write_bytes(b"")
    with pytest.raises(ValueError, match="not a readable"):
        atom.load_word_pairs(bad)
    bad.write_text("task\tinput\toutput\na\tb\tc\td\te\n", encoding="utf-8")
    with pytest.raises(ValueError):
        atom.load_word_pairs(bad)


def test_pair_differences():
    h_in = np.arange(6.0).reshape(2, 3)
    h_out = np.ones((2, 3))
    np.testing.assert_array_equal(atom.pair_differences(h_in, h_out), h_in - 1)
    with pytest.raises(ValueError):
        atom.pair_differences(h_in, h_out[:1])


# ---------------------------------------------------------------- distractor and LDA

def _planted_pairs(rng, n_tasks=12, per_task=30, dim=40):
    """differences = task signal + length_diff * u + noise, as hidden states h_in, h_out."""
    means = rng.normal(size=(n_tasks, dim))
    means *= 1.5 / np.linalg.norm(means, axis=1, keepdims=True)
    u = rng.normal(size=dim)
    u /= np.linalg.norm(u)
    tasks = np.repeat([f"task{t}" for t in range(n_tasks)], per_task)
    task_idx = np.repeat(np.arange(n_tasks), per_task)
    len_in = rng.integers(1, 10, size=len(tasks))
    len_out = rng.integers(1, 10, size=len(tasks))
    D = means[task_idx] + (len_in - len_out)[:, None] * u + 0.15 * rng.normal(size=(len(tasks), dim))
    h_out = rng.normal(size=D.shape)
    tok_in = np.array(["▁" + "x" * n for n in len_in])      # space marker must not count
    tok_out = np.array(["Ġ" + "y" * n for n in len_out])
    return h_out + D, h_out, tasks, tok_in, tok_out, len_in - len_out, u


def test_distractor_found_and_lda_removes_it():
    rng = np.random.default_rng(0)
    h_in, h_out, tasks, tok_in, tok_out, length_diff, u = _planted_pairs(rng)
    D = atom.pair_differences(h_in, h_out)

    diag = atom.distractor_diagnosis(D, tok_in, tok_out)
    np.testing.assert_array_equal(diag["length_diff"], length_diff)
    assert diag["pearson_r"] > 0.95 and diag["p_value"] < 1e-50
    assert diag["explained_variance_ratio"] > 0.3
    # lengths given as numbers give the same answer
    same = atom.distractor_diagnosis(D, length_diff, np.zeros_like(length_diff))
    assert same["pearson_r"] == pytest.approx(diag["pearson_r"])

    lda = atom.lda_silhouette(D, tasks)
    assert lda["dims"] == list(range(2, 12))
    assert len(lda["silhouette"]) == 10
    assert lda["raw_silhouette"] < 0.1                     # the length direction blurs the tasks
    assert max(lda["silhouette"]) > 0.6                    # LDA drops it: tasks separate
    assert lda["silhouette"][-1] > lda["raw_silhouette"] + 0.5
    assert lda["n_per_task"] == {f"task{t}": 30 for t in range(12)}

    report = atom.atom_report(h_in, h_out, tasks, tok_in, tok_out)
    json.dumps(report)                                       # atom.json is plain JSON
    assert report["n_pairs"] == 360
    assert report["distractor"]["pearson_r"] == pytest.approx(diag["pearson_r"])
    # removing PC1 (mapped back to raw coordinates) already helps the raw clusters
    assert report["lda"]["raw_removed_silhouette"] > lda["raw_silhouette"] + 0.3
    shrunk = atom.lda_silhouette(D, tasks, shrinkage="auto")
    assert max(shrunk["silhouette"]) > 0.6

    with pytest.raises(ValueError, match="at least 3 tasks"):
        atom.lda_silhouette(D[:60], tasks[:60])


# ---------------------------------------------------------------- crystals

def _equivalent_writings(a, b, c, d, kind):
    """Orderings that denote the same face (and, for a parallelogram, its other pair of sides)."""
    ways = [(a, b, c, d), (c, d, a, b), (b, a, d, c), (d, c, b, a)]
    if kind == "parallelogram":
        ways += [(a, c, b, d), (b, d, a, c), (c, a, d, b), (d, b, c, a)]
    return set(ways)


@pytest.fixture(scope="module")
def planted_cloud():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(800, 32))
    W, planted = atom.plant_crystals(rng, X, n_parallelograms=8, n_trapezoids=6, trapezoid_ratio=2.0)
    return W, planted


def test_planted_crystals_found_with_partners_and_kind(planted_cloud):
    W, planted = planted_cloud
    faces = atom.crystal_search(W)
    assert list(faces.columns) == atom.CRYSTAL_COLUMNS
    assert all(faces[c].dtype == np.int32 for c in "abcd")
    by_set = {frozenset(r[:4]): r for r in faces.itertuples(index=False)}
    assert len(by_set) == len(faces)                         # deduplicated
    for p in planted.itertuples(index=False):
        hit = by_set[frozenset((p.a, p.b, p.c, p.d))]        # found (KeyError = missed)
        assert hit.kind == p.kind
        assert (hit.a, hit.b, hit.c, hit.d) in _equivalent_writings(p.a, p.b, p.c, p.d, p.kind)
        assert hit.edge_cos > 0.999
        # the length ratio of the found orientation is the planted one or its inverse
        assert min(abs(hit.length_ratio - p.planted_ratio),
                   abs(hit.length_ratio - 1 / p.planted_ratio)) < 1e-3
        if p.kind == "parallelogram":
            assert hit.closing_error < 1e-3
        else:                                                # |2s - 4s| / 3s for ratio 2
            assert hit.closing_error == pytest.approx(2 / 3, abs=1e-3)
        assert hit.a == min(p.a, p.b, p.c, p.d)
        partners = atom.feature_partners(faces, p.c)
        assert frozenset((p.a, p.b, p.c, p.d)) in {frozenset(r[:4]) for r in partners.itertuples(index=False)}
    # nothing but the planted faces passes in 32 dimensions
    assert len(faces) == len(planted)
    assert faces["edge_cos"].is_monotonic_decreasing
    assert atom.feature_partners(faces, -5).empty

    # the same faces from a precomputed neighbour table, after row normalisation, and capped
    nb, _ = atom.cosine_neighbors(W, 15)
    again = atom.crystal_search(W, neighbors=nb)
    assert {frozenset(r[:4]) for r in again.itertuples(index=False)} == set(by_set)
    normed = atom.crystal_search(W, normalize=True)
    assert {frozenset(r[:4]) for r in normed.itertuples(index=False)} == set(by_set)
    assert len(atom.crystal_search(W, max_faces=3)) == 3


def test_supplied_distractor_direction_restores_a_face(planted_cloud):
    W, planted = planted_cloud
    rng = np.random.default_rng(2)
    g = rng.normal(size=W.shape[1])
    g /= np.linalg.norm(g)
    p = planted.iloc[0]
    W = W.copy()
    edge = np.linalg.norm(W[p.a] - W[p.b])
    # a shared nuisance direction pushes the two edges apart: cos = (1 - t^2) / (1 + t^2) = 0.6
    W[p.a] += 0.5 * edge * g
    W[p.d] += 0.5 * edge * g
    key = frozenset((p.a, p.b, p.c, p.d))
    blurred = atom.crystal_search(W, n_distractors=0)
    assert key not in {frozenset(r[:4]) for r in blurred.itertuples(index=False)}
    cleaned = atom.crystal_search(W, distractors=g)
    row = [r for r in cleaned.itertuples(index=False) if frozenset(r[:4]) == key]
    assert len(row) == 1 and row[0].edge_cos > 0.999 and row[0].kind == "parallelogram"


def test_random_cloud_gives_faces_only_at_the_baseline_rate():
    # low dimension, so chance faces are plentiful and the comparison means something
    rng = np.random.default_rng(3)
    X = rng.normal(size=(400, 8))
    kw = dict(n_neighbors=6, min_cos=0.95)
    faces = atom.crystal_search(X, **kw)
    base = atom.crystal_baseline(X, n_repeats=6, seed=5, **kw)
    json.dumps(base)
    assert base["faces_mean"] > 100
    assert abs(len(faces) - base["faces_mean"]) < 4 * np.sqrt(base["faces_mean"])
    assert base["faces_per_feature"] == pytest.approx(base["faces_mean"] / 400)
    rate = len(faces) / faces.attrs["n_edge_pairs"]
    assert rate == pytest.approx(base["faces_per_edge_pair"], rel=0.25)
    assert sum(base["n_parallelogram"]) + sum(base["n_trapezoid"]) == sum(base["n_faces"])
    # a covariance-matched random cloud is a valid baseline too
    assert atom.crystal_baseline(X, n_repeats=1, match="covariance", **kw)["faces_mean"] > 50


def test_planted_faces_stand_out_against_the_baseline(planted_cloud):
    W, planted = planted_cloud
    base = atom.crystal_baseline(W, n_repeats=2, seed=0)
    assert base["faces_mean"] == 0.0                         # chance faces this good: none
    assert len(atom.crystal_search(W)) - base["faces_mean"] == len(planted)


def test_cosine_neighbors_match_brute_force():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(50, 6))
    X[7] = 0                                                 # a dead feature
    idx, cos = atom.cosine_neighbors(X, 5, chunk=16)
    Xn = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    S = Xn @ Xn.T
    np.fill_diagonal(S, -np.inf)
    S[:, 7] = -np.inf
    for i in range(50):
        if i == 7:
            continue
        np.testing.assert_array_equal(idx[i], np.argsort(-S[i], kind="stable")[:5])
        np.testing.assert_allclose(cos[i], np.sort(S[i])[::-1][:5], rtol=1e-5)
    assert 7 not in idx


def test_closing_error_is_exact_for_nearly_closed_faces():
    # a face that closes to 1e-5 of its edge length: the float32 search cosine rounds to 1 and
    # could not resolve it; the quality numbers are recomputed in float64
    rng = np.random.default_rng(11)
    X = rng.normal(size=(40, 32)) * 3
    e = rng.normal(size=32)
    e *= 2.0 / np.linalg.norm(e)
    delta = rng.normal(size=32)
    delta *= 2e-5 / np.linalg.norm(delta)
    X[1] = X[0] - e
    X[3] = X[2] - e + delta                  # (a - b) - (c - d) = -delta: closing 1e-5
    faces = atom.crystal_search(X.astype(np.float32), n_neighbors=39, min_cos=0.99, n_distractors=0,
                                min_width=0.0)
    # the face, written from whichever pair of its sides was kept
    row = faces[(np.sort(faces[["a", "b", "c", "d"]].to_numpy(), axis=1) == [0, 1, 2, 3]).all(axis=1)]
    assert len(row) == 1
    a, b, c, d = row.iloc[0][["a", "b", "c", "d"]]
    X32 = X.astype(np.float32).astype(np.float64)
    e1, e2 = X32[a] - X32[b], X32[c] - X32[d]
    want = np.linalg.norm(e1 - e2) / ((np.linalg.norm(e1) + np.linalg.norm(e2)) / 2)
    assert 1e-7 < want < 2e-5                 # nearly closed, but not exactly
    assert row.iloc[0].closing_error == pytest.approx(want, rel=1e-3)


def test_counts_per_threshold_with_baseline_spread():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(400, 8))
    kw = dict(n_neighbors=6, min_cos=0.9)
    faces = atom.crystal_search(X, **kw)
    counts = atom.crystal_counts(faces, (0.9, 0.95, 0.99))
    assert counts["faces"][0] == len(faces) and counts["faces"] == sorted(counts["faces"], reverse=True)
    assert counts["parallelograms"][0] == int((faces["kind"] == "parallelogram").sum())
    base = atom.crystal_baseline(X, n_repeats=4, seed=5, thresholds=(0.9, 0.95, 0.99), **kw)
    json.dumps(base)
    sig = atom.crystal_significance(counts, base)
    draws = np.array(base["counts"]["faces"])
    assert draws.shape == (4, 3) and draws[:, 0].tolist() == base["n_faces"]
    np.testing.assert_allclose(sig["baseline_mean"], draws.mean(0))
    np.testing.assert_allclose(sig["baseline_std"], draws.std(0, ddof=1))
    assert sig["z"][0] == pytest.approx((len(faces) - draws[:, 0].mean()) / draws[:, 0].std(ddof=1))
    assert abs(sig["z"][0]) < 5                                   # a random cloud is at chance
    one = atom.crystal_baseline(X, n_repeats=1, seed=5, **kw)
    assert atom.crystal_significance(atom.crystal_counts(faces), one)["z"] == [None] * 4
