"""Atom scale: crystals - parallelograms and trapezoids among feature directions (METHODS 2).

Two analyses, both after Li, Michaud, Baek, Engels, Sun, Tegmark, *The Geometry of Concepts:
Sparse Autoencoder Feature Structure*, arXiv 2410.19750 (2024; Entropy 27(4):344, 2025):

**Word pairs** (the published procedure). For pairs of words from twelve relation tasks
(``load_word_pairs``) the hidden states at the last token of each word give a difference
vector ``d = h(input) - h(output)`` (``pair_differences``). The first principal component of
the z-scored differences is a *distractor*: it tracks the difference in character length of
the two words' last tokens (``distractor_diagnosis``). Linear discriminant analysis with the
task as the class keeps the directions that separate tasks (top eigenvectors of
``S_w^-1 S_b``) and drops such global distractors; the silhouette score of the task clusters
against the number of LDA dimensions measures it (``lda_silhouette``; published: raw
differences -0.079, clear separation with 8 LDA dimensions). ``atom_report`` bundles both into
the atlas file ``atom.json``.

**Crystals in the SAE point cloud** (``crystal_search``). A face ``a - b ≈ c - d`` is a pair
of parallel edges between four distinct features: a *parallelogram* when the two edges have
about equal length, a *trapezoid* otherwise (one function vector applied to inputs of
different strength). All ``F^2`` differences are never formed: edges are drawn only between
each feature and its top-``n_neighbors`` decoder-cosine neighbours (``E ≈ F·m/2`` edges),
distractor directions are projected out, and pairs of edges with ``|cos| >= min_cos`` are
found with a chunked matrix product over the unit edge vectors (``O(E^2 d)`` flops, memory
``O(chunk·E)``). ``crystal_baseline`` runs the same search on random directions of the same
shape, giving how many faces this good appear by chance.

All functions are plain numpy/scipy/scikit-learn (no torch).
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.metrics import silhouette_score

from analysis.layout import neighbors as cosine_neighbors

TASKS = ["country-capital", "country-currency", "English-French", "English-German",
         "English-Spanish", "landmark-country", "person-instrument", "person-occupation",
         "person-sport", "present-past", "product-company", "singular-plural"]
WORD_PAIRS_PATH = Path(__file__).with_name("data") / "word_pairs.tsv"
CRYSTAL_COLUMNS = ["a", "b", "c", "d", "kind", "edge_cos", "length_ratio", "closing_error"]


# --------------------------------------------------------------------------------------------
# Word pairs
# --------------------------------------------------------------------------------------------

def load_word_pairs(path: str | Path | None = None) -> pd.DataFrame:
    """Word pairs of the relation tasks.

    Parameters
    ----------
    path : None for the built-in list (``analysis/data/word_pairs.tsv``: the project's own
        pairs for the twelve tasks of ``TASKS``), or a user file with columns ``task``,
        ``input``, ``output`` - tab-separated, or comma-separated when the name ends in
        ``.csv``. Extra columns are ignored.

    Returns
    -------
    DataFrame with string columns task, input, output (surrounding whitespace stripped), in
    file order.

    Raises ValueError naming the file (and row) when the file is not a table with those
    columns, or has an empty field.
    """
    path = WORD_PAIRS_PATH if path is None else Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"word-pair file {path} does not exist")
    sep = "," if path.suffix.lower() == ".csv" else "\t"
    what = f"word-pair file {path}"
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh, delimiter=sep)
            # (line number, fields) of every non-blank line; blank lines are not pairs
            numbered = [(reader.line_num, r) for r in reader if any(f.strip() for f in r)]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{what} is not a readable UTF-8 "
                         f"{'comma' if sep == ',' else 'tab'}-separated table: {exc}") from exc
    if not numbered:
        raise ValueError(f"{what} is not a readable table: it is empty (expected a header row "
                         f"task, input, output)")
    header = numbered[0][1]
    lines = [n for n, _ in numbered[1:]]
    rows = [r for _, r in numbered[1:]]
    for line, r in zip(lines, rows):
        if len(r) != len(header):
            raise ValueError(f"{what}: line {line} has {len(r)} fields, the header has {len(header)} "
                             f"({'comma' if sep == ',' else 'tab'}-separated)")
    # everything stays text: a word such as "NaN" or "911" must stay a word
    df = pd.DataFrame(rows, columns=header, dtype=str)
    df.columns = [c.strip().lower() for c in header]
    missing = [c for c in ("task", "input", "output") if c not in df.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {missing}; it needs a header "
                         f"row with task, input, output (found {list(df.columns)})")
    df = df[["task", "input", "output"]].apply(lambda s: s.str.strip())
    if len(df) == 0:
        raise ValueError(f"{what} has no pairs")
    empty = (df == "").any(axis=1).to_numpy()
    if empty.any():
        line = lines[int(np.flatnonzero(empty)[0])]
        raise ValueError(f"{what}: line {line} has an empty task, input or output")
    return df.reset_index(drop=True)


def pair_differences(h_in: np.ndarray, h_out: np.ndarray) -> np.ndarray:
    """Difference vectors ``d = h(input) - h(output)`` (METHODS 2 step 2).

    h_in, h_out: [P, d] hidden states at the last token of each pair's input and output word.
    Returns float64 [P, d].
    """
    h_in = np.asarray(h_in, dtype=np.float64)
    h_out = np.asarray(h_out, dtype=np.float64)
    if h_in.ndim != 2 or h_in.shape != h_out.shape:
        raise ValueError(f"h_in and h_out must be [P, d] of one shape, got {h_in.shape} and {h_out.shape}")
    return h_in - h_out


def _token_lengths(tokens) -> np.ndarray:
    """Character lengths of token strings (leading space markers removed) or given lengths."""
    arr = np.asarray(tokens)
    if arr.dtype.kind in "iuf":
        return arr.astype(np.float64)
    # "▁Paris" (SentencePiece) and "ĠParis" (byte-level BPE) are the 5-letter word Paris
    return np.array([len(str(t).lstrip("▁Ġ ")) for t in arr], dtype=np.float64)


def distractor_diagnosis(differences: np.ndarray, input_tokens, output_tokens) -> dict:
    """First principal component of the z-scored differences against the token-length gap.

    METHODS 2 step 3 (Li et al. 2024, Fig. 2): z-score each dimension of the differences, take
    PC1, correlate the PC1 scores with ``len(input last token) - len(output last token)``.

    Parameters
    ----------
    differences : [P, d] from ``pair_differences``.
    input_tokens, output_tokens : [P] last-token strings (space markers ``▁``/``Ġ`` are not
        counted) or their character lengths.

    Returns
    -------
    dict with ``direction`` (unit PC1 in z-scored coordinates, [d]), ``scores`` ([P]),
    ``length_diff`` ([P]), ``explained_variance_ratio`` of PC1, ``pearson_r`` and ``p_value``.
    PC1's sign is arbitrary; it is oriented so that ``pearson_r >= 0``.
    """
    D = np.asarray(differences, dtype=np.float64)
    length_diff = _token_lengths(input_tokens) - _token_lengths(output_tokens)
    if D.ndim != 2 or len(length_diff) != len(D):
        raise ValueError(f"differences [P, d] and {len(length_diff)} token pairs do not match {D.shape}")
    sd = D.std(axis=0)
    # a constant dimension carries nothing; keep it at zero instead of dividing by zero
    Z = (D - D.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    _, s, Vt = np.linalg.svd(Z, full_matrices=False)
    direction = Vt[0]
    scores = Z @ direction
    if np.ptp(length_diff) == 0 or np.ptp(scores) == 0:
        r, p = float("nan"), float("nan")
    else:
        r, p = stats.pearsonr(scores, length_diff)
    if r < 0:
        direction, scores, r = -direction, -scores, -r
    return {"direction": direction, "scores": scores, "length_diff": length_diff,
            "explained_variance_ratio": float(s[0] ** 2 / np.sum(s ** 2)),
            "pearson_r": float(r), "p_value": float(p)}


def lda_silhouette(differences: np.ndarray, tasks, *, shrinkage: float | str | None = None,
                   remove_directions: np.ndarray | None = None) -> dict:
    """Silhouette of the task clusters after LDA, for every number of dimensions 2 .. C-1.

    METHODS 2 step 4 (Li et al. 2024, Fig. 3). LDA (task = class) is fitted once with C-1
    components, which come ordered by between-class variance explained; the first k of them
    form the k-dimensional projection. Silhouettes are Euclidean (scikit-learn's default).

    Parameters
    ----------
    differences : [P, d]; tasks : [P] class labels (C >= 3 classes).
    shrinkage : None = plain LDA as published (SVD solver). With ``d`` comparable to or above
        the number of pairs the within-class scatter is singular and in-sample separation is
        optimistic; ``"auto"`` (Ledoit-Wolf) or a float in [0, 1] regularises it (eigen solver).
    remove_directions : optional [k, d] directions (e.g. the distractor PC1 mapped back to
        raw coordinates) projected out before a second raw silhouette, ``raw_removed_silhouette``.

    Returns
    -------
    JSON-serialisable dict: ``tasks``, ``n_per_task``, ``dims`` [2..C-1], ``silhouette`` (per
    dim), ``raw_silhouette`` (the differences themselves, published -0.079), ``best_dim``,
    ``explained_variance_ratio`` of the LDA components, ``shrinkage``, and
    ``raw_removed_silhouette`` when directions were given.
    """
    D = np.asarray(differences, dtype=np.float64)
    y = np.asarray(tasks).astype(str)
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 3:
        raise ValueError(f"LDA silhouette needs at least 3 tasks, got {len(classes)}")
    if len(y) != len(D):
        raise ValueError(f"{len(y)} task labels for {len(D)} differences")
    if shrinkage is None:
        lda = LinearDiscriminantAnalysis(n_components=len(classes) - 1, solver="svd")
    else:
        lda = LinearDiscriminantAnalysis(n_components=len(classes) - 1, solver="eigen", shrinkage=shrinkage)
    proj = lda.fit_transform(D, y)
    dims = list(range(2, proj.shape[1] + 1))
    sil = [float(silhouette_score(proj[:, :k], y)) for k in dims]
    out = {"tasks": classes.tolist(), "n_per_task": dict(zip(classes.tolist(), counts.tolist())),
           "dims": dims, "silhouette": sil, "raw_silhouette": float(silhouette_score(D, y)),
           "best_dim": int(dims[int(np.argmax(sil))]) if dims else None,
           "explained_variance_ratio": [float(v) for v in lda.explained_variance_ratio_[:len(dims) + 1]],
           "shrinkage": shrinkage}
    if remove_directions is not None:
        out["raw_removed_silhouette"] = float(silhouette_score(_project_out(D, remove_directions), y))
    return out


def atom_report(h_in: np.ndarray, h_out: np.ndarray, tasks, input_tokens, output_tokens, *,
                shrinkage: float | str | None = None) -> dict:
    """Everything ``atom.json`` holds for one layer, JSON-serialisable.

    Keys: ``n_pairs``, ``distractor`` (``distractor_diagnosis`` with arrays as lists),
    ``lda`` (``lda_silhouette``; its ``raw_removed_silhouette`` is the raw silhouette after
    projecting PC1, mapped back to raw coordinates, out of the differences).
    """
    D = pair_differences(h_in, h_out)
    diag = distractor_diagnosis(D, input_tokens, output_tokens)
    # PC1 lives in z-scored coordinates; x = mu + sd * z maps its direction v to sd * v
    raw_dir = diag["direction"] * D.std(axis=0)
    lda = lda_silhouette(D, tasks, shrinkage=shrinkage, remove_directions=raw_dir[None])
    distractor = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in diag.items()}
    return {"n_pairs": int(len(D)), "distractor": distractor, "lda": lda}


# --------------------------------------------------------------------------------------------
# Crystals in the SAE point cloud
# --------------------------------------------------------------------------------------------

def _orthonormal_rows(U: np.ndarray) -> np.ndarray:
    U = np.atleast_2d(np.asarray(U, dtype=np.float64))
    q, r = np.linalg.qr(U.T)
    return q[:, np.abs(np.diag(r)) > 1e-12].T


def _project_out(X: np.ndarray, U: np.ndarray | None) -> np.ndarray:
    """X with the span of the rows of U removed (U need not be orthonormal)."""
    if U is None or len(U) == 0:
        return X
    Q = _orthonormal_rows(U).astype(X.dtype)
    return X - (X @ Q.T) @ Q


def _edges(neighbors: np.ndarray, alive: np.ndarray) -> np.ndarray:
    """Undirected near-neighbour edges (lo, hi), lo < hi, unique, from a [F, m] neighbour table."""
    F, m = neighbors.shape
    src = np.repeat(np.arange(F), m)
    dst = neighbors.ravel().astype(np.int64)
    keep = (dst >= 0) & (src != dst)
    src, dst = src[keep], dst[keep]
    keep = alive[src] & alive[dst]
    lo, hi = np.minimum(src, dst)[keep], np.maximum(src, dst)[keep]
    return np.unique(np.stack([lo, hi], axis=1), axis=0)


def distractor_directions(edge_vectors: np.ndarray, n_components: int) -> np.ndarray:
    """Top principal directions of a set of difference vectors, [n_components, d].

    Edges are undirected (``a - b`` and ``b - a`` are the same edge), so the PCA is of the
    sign-symmetric set: the top eigenvectors of the uncentred second moment ``V^T V``.
    This is the point-cloud analogue of the word-pair PC1 distractor: a direction shared by
    many differences regardless of what they relate.
    """
    if n_components <= 0:
        return np.zeros((0, edge_vectors.shape[1]))
    V = np.asarray(edge_vectors, dtype=np.float32)
    G = (V.T @ V).astype(np.float64)
    w, U = np.linalg.eigh(G)
    return U[:, ::-1][:, :n_components].T


def crystal_search(directions: np.ndarray, *, n_neighbors: int = 10, neighbors: np.ndarray | None = None,
                   min_cos: float = 0.9, parallelogram_ratio: tuple[float, float] = (0.8, 1.25),
                   n_distractors: int = 1, distractors: np.ndarray | None = None,
                   normalize: bool = False, min_width: float = 0.5, max_faces: int | None = None,
                   chunk_size: int | None = None) -> pd.DataFrame:
    """Parallelograms and trapezoids ``a - b ≈ c - d`` among feature directions (METHODS 2).

    Procedure: (1) edges join each feature to its top-``n_neighbors`` decoder-cosine
    neighbours (undirected, deduplicated); (2) distractor directions are projected out of the
    cloud - by default the top ``n_distractors`` principal directions of the edge vectors
    (``distractor_directions``), or the rows of ``distractors`` when given (e.g. a word-pair
    PC1); (3) every pair of edges whose unit vectors have ``|cos| >= min_cos`` and which share
    no feature is a face (a negative cosine means the second edge runs the other way and is
    flipped); (4) faces with a cross side ``|a - c|`` or ``|b - d|`` shorter than ``min_width``
    times the mean edge length are dropped - near-duplicate features otherwise form trivially
    thin parallelograms. Quality numbers are measured in the projected space:

    * ``edge_cos`` = cos(a - b, c - d),
    * ``length_ratio`` = |c - d| / |a - b|,
    * ``closing_error`` = |a - b - c + d| / mean(|a - b|, |c - d|).

    ``kind`` is "parallelogram" when ``length_ratio`` lies in ``parallelogram_ratio``, else
    "trapezoid".

    Scope and cost: only faces whose two edges are both near-neighbour edges are seen - a
    trapezoid whose long edge joins features outside each other's top ``n_neighbors`` is
    missed (raise ``n_neighbors``; cost grows as its square). With ``E`` edges the search
    costs ``E^2 d`` flops: F = 8192, d = 2304, m = 10 (E = 48k) took 70 CPU-seconds and
    1.4 GB; F = 16384 (E = 96k) about four times that and 3 GB.

    Parameters
    ----------
    directions : [F, d] decoder rows W_dec.
    n_neighbors : m, neighbours per feature that span edges (cost grows as m^2).
    neighbors : optional precomputed [F, K] neighbour table (e.g. the atlas ``neighbors.npy``),
        of which the first ``n_neighbors`` columns are used.
    min_cos : minimum |cos| between the two edges.
    parallelogram_ratio : (low, high) length-ratio range of a parallelogram.
    n_distractors : number of principal directions of the edge vectors projected out (0 = none).
    distractors : [k, d] or [d] explicit directions to project out instead.
    normalize : unit-normalise the rows first (look at directions only, ignoring norms).
    min_width : minimum cross-side length, in units of the mean edge length.
    max_faces : keep only the best this many faces.
    chunk_size : edge rows per matrix-product block (default: blocks of about 32 M entries).

    Returns
    -------
    DataFrame with columns ``CRYSTAL_COLUMNS`` (a, b, c, d int32; kind; edge_cos,
    length_ratio, closing_error float32), one row per face: a face found from either edge or
    the other pair of sides appears once, written with its smallest feature id as ``a``.
    Sorted by edge_cos (descending), then closing_error. ``df.attrs`` holds the search size
    (``n_features``, ``n_edges``, ``n_edge_pairs``) that baselines are expressed against.
    """
    X = np.asarray(directions, dtype=np.float32)
    if X.ndim != 2:
        raise ValueError(f"directions must be [F, d], got shape {X.shape}")
    F = len(X)
    norms = np.linalg.norm(X, axis=1)
    alive = norms > 0
    if normalize:
        X = X / np.where(alive, norms, 1.0)[:, None]
    if neighbors is None:
        neighbors, _ = cosine_neighbors(X, n_neighbors)
    edges = _edges(np.asarray(neighbors)[:, :n_neighbors], alive)

    # distractor projection: linear, so exact faces stay exact in the projected space
    V = X[edges[:, 0]] - X[edges[:, 1]]
    U = _orthonormal_rows(distractors) if distractors is not None else distractor_directions(V, n_distractors)
    Y = _project_out(X, U)
    if len(U):
        # in place: V is the largest array here ([E, d], about 1 GB at F = 16k, d = 2304)
        Q = U.astype(np.float32)
        V -= (V @ Q.T) @ Q
    L = np.linalg.norm(V, axis=1)
    ok = L > 1e-6 * (np.median(L) if len(L) else 1.0)
    edges, V, L = edges[ok], V[ok], L[ok]
    V /= L[:, None]
    N = V
    E = len(edges)
    info = {"n_features": int(F), "n_edges": int(E), "n_edge_pairs": int(E * (E - 1) // 2)}

    # all edge pairs with |cos| >= min_cos, j > i, block by block
    if chunk_size is None:
        chunk_size = max(1, min(E, (1 << 25) // max(E, 1)))
    I, J, C = [], [], []
    for s in range(0, E, chunk_size):
        e = min(E, s + chunk_size)
        S = N[s:e] @ N[s:].T    # row ii is edge s + ii, column jj is edge s + jj
        # each unordered pair once: clear the diagonal and lower triangle of the square part
        S[:, :e - s] = np.triu(S[:, :e - s], 1)
        # hits are rare; two row reductions find the rows worth a full scan
        rows = np.flatnonzero((S.max(axis=1) >= min_cos) | (S.min(axis=1) <= -min_cos))
        sub = S[rows]
        ii, jj = np.nonzero((sub >= min_cos) | (sub <= -min_cos))
        ii = rows[ii]
        I.append(ii + s)
        J.append(jj + s)
        C.append(S[ii, jj])
    I = np.concatenate(I) if I else np.zeros(0, np.int64)
    J = np.concatenate(J) if J else np.zeros(0, np.int64)
    C = np.concatenate(C) if C else np.zeros(0, np.float32)

    a, b = edges[I, 0], edges[I, 1]
    flip = C < 0
    c = np.where(flip, edges[J, 1], edges[J, 0])
    d = np.where(flip, edges[J, 0], edges[J, 1])
    distinct = (a != c) & (a != d) & (b != c) & (b != d)
    a, b, c, d, I, J, C = (x[distinct] for x in (a, b, c, d, I, J, C))
    Li, Lj, cabs = L[I].astype(np.float64), L[J].astype(np.float64), np.abs(C).astype(np.float64)
    mean_len = (Li + Lj) / 2
    width = np.minimum(np.linalg.norm(Y[a] - Y[c], axis=1), np.linalg.norm(Y[b] - Y[d], axis=1))
    wide = width >= min_width * mean_len
    a, b, c, d = (x[wide] for x in (a, b, c, d))
    # quality numbers of the faces found, in float64 from the directions themselves: the
    # float32 cosine of the search leaves 1 - cos with ~1e-7 resolution, so a closing error
    # derived from it could not tell a face closing to 1e-4 from an exact one
    cabs, Li, Lj, closing = _face_quality(X, U, a, b, c, d)
    ratio = Lj / Li

    # canonical order: of the equivalent writings (a,b,c,d), (c,d,a,b), (b,a,d,c), (d,c,b,a)
    # take the one starting at the smallest id; swapping the edges inverts the ratio
    quad = np.stack([a, b, c, d], axis=1)
    first = np.argmin(quad, axis=1)
    perms = np.array([[0, 1, 2, 3], [1, 0, 3, 2], [2, 3, 0, 1], [3, 2, 1, 0]])
    quad = np.take_along_axis(quad, perms[first], axis=1)
    ratio = np.where(first >= 2, 1.0 / ratio, ratio)

    lo, hi = parallelogram_ratio
    df = pd.DataFrame({"a": quad[:, 0].astype(np.int32), "b": quad[:, 1].astype(np.int32),
                       "c": quad[:, 2].astype(np.int32), "d": quad[:, 3].astype(np.int32),
                       "kind": np.where((ratio >= lo) & (ratio <= hi), "parallelogram", "trapezoid"),
                       "edge_cos": cabs.astype(np.float32), "length_ratio": ratio.astype(np.float32),
                       "closing_error": closing.astype(np.float32)})
    df = df.sort_values(["edge_cos", "closing_error"], ascending=[False, True], kind="stable")
    # one row per vertex set: the same face seen from its other pair of sides is the same face
    key = pd.DataFrame(np.sort(df[["a", "b", "c", "d"]].to_numpy(), axis=1), index=df.index)
    df = df[~key.duplicated()].reset_index(drop=True)
    if max_faces is not None:
        df = df.head(max_faces)
    df["kind"] = df["kind"].astype(str)
    df.attrs.update(info)
    return df[CRYSTAL_COLUMNS]


def _face_quality(X, U, a, b, c, d, chunk: int = 16_384):
    """edge_cos, |a - b|, |c - d| and closing error of faces (a, b, c, d) in the projected
    space, in float64, a chunk of faces at a time."""
    Q = _orthonormal_rows(U) if U is not None and len(U) else None
    out = [np.zeros(len(a)) for _ in range(4)]
    for s in range(0, len(a), chunk):
        sl = slice(s, s + chunk)
        e1 = X[a[sl]].astype(np.float64) - X[b[sl]]
        e2 = X[c[sl]].astype(np.float64) - X[d[sl]]
        if Q is not None:
            e1 -= (e1 @ Q.T) @ Q
            e2 -= (e2 @ Q.T) @ Q
        l1, l2 = np.linalg.norm(e1, axis=1), np.linalg.norm(e2, axis=1)
        out[0][sl] = np.abs(np.einsum("ij,ij->i", e1, e2)) / (l1 * l2)
        out[1][sl], out[2][sl] = l1, l2
        out[3][sl] = np.linalg.norm(e1 - e2, axis=1) / ((l1 + l2) / 2)
    return tuple(out)


CRYSTAL_THRESHOLDS = (0.3, 0.5, 0.7, 0.9)


def crystal_counts(crystals: pd.DataFrame, thresholds=CRYSTAL_THRESHOLDS) -> dict:
    """Faces and parallelograms with ``edge_cos >= t`` for each threshold ``t``.

    Returns ``{"thresholds", "faces", "parallelograms"}`` (lists aligned with the thresholds).
    """
    cos = crystals["edge_cos"].to_numpy()
    par = (crystals["kind"] == "parallelogram").to_numpy()
    return {"thresholds": [float(t) for t in thresholds],
            "faces": [int((cos >= t).sum()) for t in thresholds],
            "parallelograms": [int(((cos >= t) & par).sum()) for t in thresholds]}


def crystal_significance(counts: dict, baseline: dict) -> dict:
    """The real cloud's face counts against the random draws of ``crystal_baseline``.

    Per threshold: the baseline's mean and standard deviation over its repeats and
    ``z = (real - mean) / std`` (None with fewer than two draws, or when the draws agree
    exactly and the real count equals them; infinite when they agree and it does not).
    """
    draws = np.asarray(baseline["counts"]["faces"], dtype=np.float64)   # [repeats, thresholds]
    mean = draws.mean(axis=0)
    std = draws.std(axis=0, ddof=1) if len(draws) > 1 else np.full(draws.shape[1], np.nan)
    z = []
    for real, m, sd in zip(counts["faces"], mean, std):
        if np.isnan(sd):
            z.append(None)
        elif sd == 0:
            z.append(None if real == m else float("inf"))
        else:
            z.append(float((real - m) / sd))
    return {"thresholds": counts["thresholds"], "faces": counts["faces"],
            "parallelograms": counts["parallelograms"], "baseline_mean": mean.tolist(),
            "baseline_std": [None if np.isnan(v) else float(v) for v in std], "z": z,
            "n_repeats": int(len(draws))}


def feature_partners(crystals: pd.DataFrame, feature: int) -> pd.DataFrame:
    """The faces that ``feature`` belongs to (any of a, b, c, d), in the table's order."""
    f = int(feature)
    hit = (crystals["a"] == f) | (crystals["b"] == f) | (crystals["c"] == f) | (crystals["d"] == f)
    return crystals[hit.to_numpy()].reset_index(drop=True)


def plant_crystals(rng: np.random.Generator, directions: np.ndarray, n_parallelograms: int,
                   n_trapezoids: int, *, side: float = 0.2, trapezoid_ratio: float = 2.0
                   ) -> tuple[np.ndarray, pd.DataFrame]:
    """Overwrite rows of a cloud so that exact faces exist; for tests and synthetic atlases.

    Each face uses fresh orthonormal e1, e2, u and rows ``a, b = α e1 ± s u``,
    ``c, d = α' e2 ± s' u`` (``α² + s² = 1``), all scaled by the cloud's median row norm:
    every planted row has the same norm, so the face survives row normalisation and any
    linear projection. ``a - b = 2 s u`` and ``c - d = 2 s' u`` with ``s' = s`` for a
    parallelogram and ``s' = trapezoid_ratio · s`` for a trapezoid. cos(a, b) = 1 - 2 s², so
    a small ``side`` makes b a near neighbour of a.

    Returns (new directions [F, d] float64, planted faces: a, b, c, d int32, kind,
    planted_ratio).
    """
    W = np.array(directions, dtype=np.float64)
    F, dim = W.shape
    n = n_parallelograms + n_trapezoids
    if 4 * n > F or dim < 3 or not 0 < side * max(1.0, trapezoid_ratio) < 1:
        raise ValueError("need F >= 4 faces, d >= 3 and 0 < side * trapezoid_ratio < 1")
    scale = float(np.median(np.linalg.norm(W, axis=1)))
    ids = rng.choice(F, size=4 * n, replace=False).reshape(n, 4)
    rows = []
    for i, (a, b, c, d) in enumerate(ids):
        kind = "parallelogram" if i < n_parallelograms else "trapezoid"
        r = 1.0 if kind == "parallelogram" else trapezoid_ratio
        e1, e2, u = np.linalg.qr(rng.normal(size=(dim, 3)))[0].T
        s1, s2 = side, side * r
        W[a] = scale * (np.sqrt(1 - s1 ** 2) * e1 + s1 * u)
        W[b] = scale * (np.sqrt(1 - s1 ** 2) * e1 - s1 * u)
        W[c] = scale * (np.sqrt(1 - s2 ** 2) * e2 + s2 * u)
        W[d] = scale * (np.sqrt(1 - s2 ** 2) * e2 - s2 * u)
        rows.append((a, b, c, d, kind, r))
    faces = pd.DataFrame(rows, columns=["a", "b", "c", "d", "kind", "planted_ratio"]).astype(
        {"a": "int32", "b": "int32", "c": "int32", "d": "int32"})
    return W, faces


def random_directions(rng: np.random.Generator, like: np.ndarray, match: str = "norms") -> np.ndarray:
    """Random cloud of the shape of ``like`` [F, d], with each row's norm matched to ``like``.

    match="norms": i.i.d. isotropic Gaussian directions. match="covariance": Gaussian with the
    mean and covariance of ``like`` (keeps its anisotropy, e.g. a power-law spectrum), so only
    finer structure such as crystals is destroyed.
    """
    like = np.asarray(like, dtype=np.float64)
    F, dim = like.shape
    Z = rng.standard_normal((F, dim))
    if match == "covariance":
        mu = like.mean(axis=0)
        cov = np.cov(like, rowvar=False)
        w, Q = np.linalg.eigh(cov)
        Z = mu + (Z * np.sqrt(np.clip(w, 0, None))) @ Q.T
    elif match != "norms":
        raise ValueError(f"match must be 'norms' or 'covariance', got {match!r}")
    target = np.linalg.norm(like, axis=1)
    return Z * (target / np.maximum(np.linalg.norm(Z, axis=1), 1e-300))[:, None]


def crystal_baseline(directions: np.ndarray, *, n_repeats: int = 3, seed: int = 0, match: str = "norms",
                     thresholds=CRYSTAL_THRESHOLDS, **search_kwargs) -> dict:
    """How many faces pass the same thresholds in random clouds of the same shape.

    Runs ``crystal_search(random_directions(...), **search_kwargs)`` ``n_repeats`` times
    (a precomputed ``neighbors`` table is ignored: the random cloud has its own).

    Returns a JSON-serialisable dict: ``n_faces``, ``n_parallelogram``, ``n_trapezoid`` (per
    repeat), ``faces_mean``, ``faces_per_feature`` (mean faces / F), ``faces_per_edge_pair``
    (mean faces / edge pairs tested), ``counts`` (``crystal_counts`` per repeat: ``faces`` and
    ``parallelograms`` as [repeat][threshold] lists), ``match``, ``n_repeats``, ``seed``.
    ``crystal_significance`` turns it into z-scores per threshold. Compare the real
    cloud's ``len(crystals)`` with ``faces_mean``, or its faces per edge pair with
    ``faces_per_edge_pair`` (``crystals.attrs["n_edge_pairs"]``).
    """
    search_kwargs = {k: v for k, v in search_kwargs.items() if k != "neighbors"}
    rng = np.random.default_rng(seed)
    F = len(directions)
    n_faces, n_par, n_trap, pairs, by_t = [], [], [], [], []
    for _ in range(n_repeats):
        df = crystal_search(random_directions(rng, directions, match), **search_kwargs)
        by_t.append(crystal_counts(df, thresholds))
        n_faces.append(len(df))
        n_par.append(int((df["kind"] == "parallelogram").sum()))
        n_trap.append(int((df["kind"] == "trapezoid").sum()))
        pairs.append(df.attrs["n_edge_pairs"])
    mean = float(np.mean(n_faces))
    return {"n_faces": n_faces, "n_parallelogram": n_par, "n_trapezoid": n_trap, "faces_mean": mean,
            "faces_per_feature": mean / F,
            "faces_per_edge_pair": float(np.sum(n_faces) / max(np.sum(pairs), 1)),
            "counts": {"thresholds": [float(t) for t in thresholds],
                       "faces": [c["faces"] for c in by_t], "parallelograms": [c["parallelograms"] for c in by_t]},
            "match": match, "n_repeats": int(n_repeats), "seed": int(seed)}
