"""The published width (16,384 features, METHODS 1) runs within a memory bound (issue 11)."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from analysis import brain

ROOT = Path(__file__).resolve().parents[1]


def test_live_float32_affinities_are_the_full_ones_restricted():
    rng = np.random.default_rng(0)
    B = sp.csr_matrix(rng.random((300, 40)) < 0.2, dtype=np.int64)
    C = (B.T @ B).tolil()
    C[5, :] = 0
    C[:, 5] = 0                       # a dead feature
    C = C.tocsr()
    live = ~brain.dead_features(C)
    for name in brain.AFFINITIES:
        full = brain.cooccurrence_affinity(C, 300, name)[np.ix_(live, live)]
        np.testing.assert_array_equal(brain.cooccurrence_affinity(C, 300, name, live), full)
        np.testing.assert_array_equal(brain.cooccurrence_affinity(C, 300, name, live, np.float32),
                                      full.astype(np.float32))


def test_lanczos_embedding_matches_sklearns():
    rng = np.random.default_rng(2)
    X = np.concatenate([rng.standard_normal((100, 3)) + 6 * c for c in np.eye(3)])
    A = np.exp(-((X[:, None] - X[None]) ** 2).sum(-1) / 8)
    ref = brain.embed(A, 6)
    ours = brain.embed(A.astype(np.float32), 6, solver="lanczos")
    np.testing.assert_allclose(ours, ref, atol=1e-4 * np.abs(ref).max())


CHILD = textwrap.dedent("""
    import numpy as np, scipy.sparse as sp
    from analysis import stage
    rng = np.random.default_rng(0)
    F, d, n_blocks = 16384, 128, 400
    lobe = rng.integers(0, 4, F)
    # nearly isotropic: a strongly anisotropic cloud (and its covariance-matched random
    # baseline) gives the cos >= 0.3 crystal search hundreds of millions of chance faces
    W = (rng.normal(size=(4, d))[lobe] * 0.5 + rng.normal(size=(F, d))).astype(np.float32)
    topic = rng.integers(0, 4, n_blocks)
    p = np.where(lobe[None, :] == topic[:, None], 0.05, 0.005)
    B = sp.csr_matrix(rng.random((n_blocks, F)) < p, dtype=np.int32)
    del p
    C = (B.T @ B).tocsr()
    cfg = stage.GeometryConfig(affinities=["phi"], ks=[2, 4], n_permutations=5, n_random=2, umap=False,
                               entropy_bootstrap=2, crystal_baseline_repeats=1)
    files, computed = stage.compute_layer(W, cfg, C=C, T=n_blocks, blocks=B,
                                          block_subset=topic.astype(np.int16))
    import json, resource
    print(json.dumps({"peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
    assert "brain" in computed and "crystals" in computed, computed
    assert files["lobes_phi.npy"].shape == (2, F)
""")


def test_16k_features_layer_within_memory_bound():
    # every memory-heavy step at the published width: a co-occurrence and the geometry
    # affinity with their embeddings, neighbours, galaxy and the crystal search (fewer ks,
    # permutations and draws than published, and no UMAP, to keep the test short)
    out = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    peak_gb = json.loads(out.stdout.strip().splitlines()[-1])["peak_kb"] * 1024 / 1e9   # kB on Linux
    # float64 [F, F] affinities alone were 2.1 GB each and sklearn's embedding held 11 GB
    # (the whole run was killed at 24 GB). Measured: 2.98 GB alone, 5.6 GB once inside a full
    # suite run (not explained yet); the bound guards against the old behaviour, not the 4 GB aim
    assert peak_gb < 7.0, peak_gb
