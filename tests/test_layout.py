"""Layouts (PCA, UMAP) aligned across layers, and decoder-cosine neighbours."""
import numpy as np

from analysis import layout


def test_neighbors_equal_brute_force():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((700, 24)).astype(np.float32)
    idx, cos = layout.neighbors(W, K=16, chunk=128)     # several chunks, one partial
    U = W / np.linalg.norm(W, axis=1, keepdims=True)
    S = U.astype(np.float64) @ U.T.astype(np.float64)
    np.fill_diagonal(S, -np.inf)
    brute = np.argsort(-S, axis=1)[:, :16]
    assert idx.shape == (700, 16) and idx.dtype == np.int32 and cos.dtype == np.float32
    assert (idx == brute).mean() > 0.999          # float32 vs float64 near-ties aside
    np.testing.assert_allclose(cos, np.take_along_axis(S, brute, 1), atol=1e-5)
    assert not (idx == np.arange(700)[:, None]).any()
    assert np.all(np.diff(cos, axis=1) <= 0)


def rotated_layers(seed=0, n_layers=3, F=400, d=16):
    """Layers sharing d_model whose clouds slowly drift: same anisotropic shape, small
    random perturbation, different features each layer."""
    rng = np.random.default_rng(seed)
    scale = np.array([5.0, 3.0, 2.0] + [0.3] * (d - 3))
    return [rng.standard_normal((F, d)) * scale + rng.standard_normal(d) for _ in range(n_layers)]


def test_pca_alignment_keeps_axes_and_fixes_signs():
    Ws = rotated_layers()
    raw = [layout.pca_coords(W) for W in Ws]
    flipped = [raw[0], raw[1] * np.array([-1, 1, -1]), raw[2] * np.array([1, -1, -1])]
    aligned = layout.align_layers(Ws, flipped, rotate=False)
    for W, Y in zip(Ws, aligned):
        A = layout.screen_map(W, Y.astype(np.float64))
        # axis j follows the same d_model direction (e_j) with the same sign in every layer
        assert np.all(np.argmax(np.abs(A), axis=0) == [0, 1, 2])
        assert np.all(A[[0, 1, 2], [0, 1, 2]] * layout.screen_map(Ws[0], aligned[0])[[0, 1, 2], [0, 1, 2]] > 0)
    # the input sign flips are undone relative to layer 0
    np.testing.assert_allclose(np.abs(aligned[1]), np.abs(raw[1] - raw[1].mean(0)), rtol=1e-5, atol=1e-4)


def test_procrustes_undoes_a_spin():
    Ws = rotated_layers(seed=1, n_layers=2)
    Y0 = layout.pca_coords(Ws[0])
    Y1 = layout.pca_coords(Ws[1])
    theta = 1.1
    R = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, -1]])
    a0, a1 = layout.align_layers(Ws, [Y0, Y1 @ R], rotate=True)
    b0, b1 = layout.align_layers(Ws, [Y0, Y1], rotate=True)
    np.testing.assert_allclose(a1, b1, atol=1e-3)       # the spin made no difference
    # and layer 1 ends up close to the canonical frame of layer 0
    M = layout.screen_map(Ws[1], a1.astype(np.float64))
    assert np.all(np.argmax(np.abs(M), axis=0) == [0, 1, 2])


def test_umap_coords_shape_and_determinism():
    rng = np.random.default_rng(2)
    W = np.concatenate([rng.standard_normal((60, 10)) + 6 * np.eye(10)[i] for i in range(3)])
    Y1 = layout.umap_coords(W)
    Y2 = layout.umap_coords(W)
    assert Y1.shape == (180, 3)
    np.testing.assert_allclose(Y1, Y2)
    # clusters of the decoder stay clusters in the layout
    lab = np.repeat(np.arange(3), 60)
    cent = np.stack([Y1[lab == i].mean(0) for i in range(3)])
    within = np.mean([np.linalg.norm(Y1[lab == i] - cent[i], axis=1).mean() for i in range(3)])
    between = np.min([np.linalg.norm(cent[i] - cent[j]) for i in range(3) for j in range(i)])
    assert between > 3 * within
