"""Decoder-cosine neighbours of wide layers (issue 12): NN-descent against the exact table.

pynndescent compiles its parallel functions with numba once per process (about a minute of
CPU), so these tests share one process's compilation and use small planted layers.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
from pydantic import ValidationError

from analysis import layout, stage, wide


def planted_groups(n_groups: int = 300, size: int = 17, d: int = 32, seed: int = 0):
    """``n_groups`` tight groups of ``size`` rows around random directions, shuffled, plus
    dead (zero) rows: each live row's 16 exact neighbours are its group's other rows."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_groups, d))
    group = np.repeat(np.arange(n_groups), size)
    W = centres[group] + 0.05 * rng.normal(size=(len(group), d))
    W = np.concatenate([W, np.zeros((7, d))]).astype(np.float32)
    group = np.concatenate([group, np.full(7, -1)])
    order = rng.permutation(len(W))
    return W[order], group[order]


def test_nndescent_finds_each_planted_groups_members_with_exact_cosines():
    W, group = planted_groups()
    nb, cos = wide.nndescent_neighbors(W, 16, exact_upto=0)       # pynndescent, not the exact fallback
    live = group >= 0
    assert nb.shape == cos.shape == (len(W), 16) and nb.dtype == np.int32 and cos.dtype == np.float32
    # every live row's neighbours are exactly its group's other rows
    same = (group[nb[live]] == group[live][:, None]) & (nb[live] != np.flatnonzero(live)[:, None])
    assert same.all(axis=1).mean() == 1.0
    # dead rows have no neighbours and are nobody's
    assert (nb[~live] == -1).all() and np.isneginf(cos[~live]).all() and not np.isin(np.flatnonzero(~live), nb).any()
    # cosines are the exact ones, best first, as layout.neighbors gives them
    _, exact_cos = layout.neighbors(W, 16)
    np.testing.assert_allclose(cos[live], exact_cos[live], atol=1e-5)
    assert (np.diff(cos[live], axis=1) <= 0).all()


def test_nndescent_recall_is_far_above_the_inverted_files_on_an_unstructured_cloud():
    # Gaussian directions have no cells to find: the hard case for the inverted file
    W = np.random.default_rng(1).normal(size=(6000, 24)).astype(np.float32)
    r_nnd = wide.neighbor_recall(W, wide.nndescent_neighbors(W, 16, exact_upto=0)[0], 300)
    r_ivf = wide.neighbor_recall(W, wide.ivf_neighbors(W, 16)[0], 300)
    assert r_nnd > 0.95 and r_nnd > r_ivf + 0.2, (r_nnd, r_ivf)
    # fewer candidates per feature: less recall
    r_small = wide.neighbor_recall(W, wide.nndescent_neighbors(W, 16, 16, exact_upto=0)[0], 300)
    assert r_small < r_nnd


def test_the_stage_records_the_method_and_its_measured_recall():
    W = np.random.default_rng(2).normal(size=(700, 16)).astype(np.float32)
    cfg = dict(umap=False, crystals=False, entropy_bootstrap=2, wide_from=500)
    found = {}
    for method in ("nndescent", "ivf"):
        files, computed = stage.compute_layer(W, stage.GeometryConfig(**cfg, wide_neighbor_method=method))
        (note,) = [c for c in computed if c.startswith("wide:neighbors")]
        found[method] = float(re.search(r"recall ([0-9.]+) on 200 features", note).group(1))
        assert ("NN-descent, 48 candidates" if method == "nndescent" else "IVF probing 8") in note, note
        assert files["neighbors.npy"].shape == (len(W), 16)
    assert found["nndescent"] > 0.95 and found["nndescent"] > found["ivf"], found
    # settings: serialised with the others, a method not known refused with its name
    dumped = stage.GeometryConfig(wide_neighbor_method="ivf", wide_neighbor_candidates=32).model_dump()
    assert dumped["wide_neighbor_method"] == "ivf" and dumped["wide_neighbor_candidates"] == 32
    assert stage.GeometryConfig().wide_neighbor_method == "nndescent"
    with pytest.raises(ValidationError, match="wide_neighbor_method"):
        stage.GeometryConfig(wide_neighbor_method="exact-ish")
