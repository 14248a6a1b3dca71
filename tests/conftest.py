"""Shared fixtures: synthetic atlases with planted structure, written once per session."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

# Before numpy/scikit-learn load: OpenMP threads on a busy 2-core machine spin against
# each other (k-means on a few hundred points went from 0.1 s to 5 s per fit).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

from analysis.synthetic import make_synthetic_atlas  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def atlas_root(tmp_path_factory) -> Path:
    """A folder of atlases as the server sees it: ``syn`` (3 layers, full geometry)."""
    root = tmp_path_factory.mktemp("atlases")
    make_synthetic_atlas(root / "syn", n_features=600, d_model=48, layers=(0, 1, 2), n_blocks=1200, seed=0,
                         geometry_config={"n_permutations": 10, "n_random": 10, "affinities": ["phi", "jaccard", "geometry"],
                                          "ks": [2, 4, 8, 16], "entropy_samples": 600, "entropy_bootstrap": 5})
    return root


@pytest.fixture(scope="session")
def synthetic_atlas_dir(atlas_root) -> Path:
    return atlas_root / "syn"


@pytest.fixture
def atlas_copy(synthetic_atlas_dir, tmp_path) -> Path:
    """A private copy of the synthetic atlas that a test may damage."""
    dst = tmp_path / "syn"
    shutil.copytree(synthetic_atlas_dir, dst)
    return dst
