"""Galaxy scale (METHODS 3): spectrum, power law, entropy."""
import numpy as np
import pytest
from scipy import stats

from analysis import galaxy


def planted_power_law(n_features, d, alpha, seed=0):
    """Decoder whose covariance has eigenvalues exactly ∝ r^-alpha: orthonormal centred
    columns scaled by sqrt((F-1) λ), rotated by a random orthogonal matrix."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((n_features, d)) - 0.0)
    Q -= Q.mean(axis=0)
    Q, _ = np.linalg.qr(Q)                       # orthonormal and (numerically) centred
    lam = np.arange(1, d + 1, dtype=float) ** -alpha
    R, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (Q * np.sqrt((n_features - 1) * lam)) @ R + 0.3, lam


@pytest.mark.parametrize("alpha", [0.24, 0.49])
def test_planted_power_law_exponent_recovered(alpha):
    W, lam = planted_power_law(1200, 200, alpha)
    spec = galaxy.spectrum(W)
    assert np.all(np.diff(spec) <= 1e-12)           # descending
    np.testing.assert_allclose(spec, lam, rtol=1e-6, atol=1e-9)
    fit = galaxy.power_law_fit(spec)
    assert fit["ranks"] == [11, 150]
    assert abs(fit["alpha"] - alpha) <= 0.02
    assert fit["ci95"] >= 0


def test_sampled_power_law_cloud_recovers_exponent():
    # a Gaussian cloud with that covariance, many more points than dimensions
    rng = np.random.default_rng(1)
    d, alpha = 160, 0.4
    W = rng.standard_normal((40000, d)) * np.arange(1, d + 1) ** (-alpha / 2)
    fit = galaxy.power_law_fit(galaxy.spectrum(W))
    assert abs(fit["alpha"] - alpha) <= 0.02
    assert fit["ranks"] == [11, 150]


def test_isotropic_slope_near_zero_and_small_d_clipped():
    iso = galaxy.isotropic_baseline(40000, 200, seed=0)
    # Marchenko-Pastur spread of a finite isotropic sample: small, far below planted 0.24+
    assert abs(iso["slope"]) < 0.1 and iso["slope"] == -iso["alpha"]
    assert galaxy.fit_ranks(64) == (11, 64)
    assert galaxy.fit_ranks(12) == (1, 12)


@pytest.mark.parametrize("d", [2, 3])
def test_kl_entropy_matches_gaussian_within_bootstrap_error(d):
    rng = np.random.default_rng(d)
    sd = np.linspace(0.5, 2.0, d)
    X = rng.standard_normal((5000, d)) * sd
    truth = galaxy.gaussian_entropy(sd ** 2)
    est = galaxy.kl_entropy(X, k=1, n_bootstrap=30)
    assert est["std"] > 0
    assert abs(est["mean"] - truth) <= 3 * est["std"]   # 3 bootstrap sigma


def test_clustering_entropy_negentropy_and_published_variant():
    rng = np.random.default_rng(0)
    # two well separated blobs are far from Gaussian: large negentropy
    W = np.concatenate([rng.standard_normal((600, 8)) + 8, rng.standard_normal((600, 8)) - 8])
    W = np.concatenate([W, rng.standard_normal((1200, 8)) * 0.1], axis=1)
    blob = galaxy.clustering_entropy(W, n_samples=1000, n_components=5, n_bootstrap=10)
    gauss = galaxy.clustering_entropy(rng.standard_normal((1200, 16)), n_samples=1000,
                                      n_components=5, n_bootstrap=10)
    assert blob["n_samples"] == 1000 and blob["n_components"] == 5
    assert blob["negentropy"] > 1.0
    assert abs(gauss["negentropy"]) < 4 * gauss["negentropy_std"] + 0.05
    pub = galaxy.clustering_entropy(W, n_samples=1000, n_components=5, n_bootstrap=10,
                                    estimator="published")
    assert pub["estimator"] == "published" and pub["entropy"] != blob["entropy"]
    with pytest.raises(ValueError):
        galaxy.clustering_entropy(W, estimator="nope")


def test_pca_view_scaled_by_sqrt_eigenvalues():
    W, lam = planted_power_law(500, 20, 1.0, seed=2)
    coords, axes, ev = galaxy.pca_view(W)
    np.testing.assert_allclose(ev, lam[:3], rtol=1e-6)
    np.testing.assert_allclose(coords.var(axis=0, ddof=1), lam[:3], rtol=1e-6)


def test_published_entropy_resamples_points_as_the_authors_did():
    # The P1 code bootstraps by resampling points: about 1 - 1/e of the drawn points have a
    # duplicate, whose nearest neighbour is at rho = 0 and adds d*log(0.01). On an anisotropic
    # Gaussian (true negentropy 0) that drives the negentropy far above zero; resampling the
    # per-point terms instead (the earlier "published" mode) gave about -118 here.
    rng = np.random.default_rng(0)
    n, d = 2000, 100
    X = rng.standard_normal((n, d)) * np.arange(1, d + 1) ** -0.5
    lam = np.linalg.eigvalsh(np.cov(X.T))[::-1]
    pub = galaxy.kl_entropy(X, n_bootstrap=10, estimator="published", eigenvalues=lam)
    rho = galaxy.nn_distances(X)
    dup = 1 - (1 - 1 / n) ** (n - 1)          # expected share of drawn points with a duplicate
    # the replicates' mean sits near the sample value minus the duplicates' share of
    # d*(log(rho + 0.01) - log(0.01)) (the others' rho only grows on a resample, lowering it further)
    drop = dup * d * np.mean(np.log(rho + 0.01) - np.log(0.01))
    assert pub["mean"] < pub["estimate"] - 0.9 * drop
    assert galaxy.gaussian_entropy(lam) - pub["mean"] > 150
    assert pub["ci95"] == pytest.approx(stats.t.ppf(0.975, 9) * pub["std"] / np.sqrt(10))
    txt = galaxy.kl_entropy(X, n_bootstrap=10, eigenvalues=lam)
    assert abs(txt["mean"] - txt["estimate"]) < 3 * txt["std"]


def test_gaussian_null_shows_the_estimators_bias():
    rng = np.random.default_rng(1)
    G = rng.standard_normal((1500, 40)) * np.linspace(2, 0.5, 40)
    for est in ("textbook", "published"):
        r = galaxy.clustering_entropy(G, n_samples=1500, n_components=40, n_bootstrap=5, estimator=est)
        # the data are Gaussian: their negentropy equals the null's up to sampling noise
        assert abs(r["negentropy"] - r["null_negentropy"]) < 6 * (r["negentropy_std"] + r["null_negentropy_std"]) + 1.0
    assert r["null_negentropy"] > 50          # the published variant's bias alone
    assert "null_negentropy" not in galaxy.clustering_entropy(G, n_samples=300, n_components=5, n_bootstrap=3,
                                                              gaussian_null=False)


def test_fit_window_is_ranks_11_to_150_exactly():
    # a different exponent inside ranks 11-150 than before rank 11 and after rank 150: a window
    # shifted by even a few ranks, or 0-based where 1-based is meant, moves the fitted alpha
    r = np.arange(1, 301, dtype=float)
    inside = 0.4
    lam = r ** -inside
    lam[r < 11] = 10 * r[r < 11] ** -1.5            # steeper and a decade above
    lam[r > 150] = 0.1 * r[r > 150] ** -2.0          # steeper and a decade below
    fit = galaxy.power_law_fit(lam)
    assert fit["ranks"] == [11, 150]
    assert fit["alpha"] == pytest.approx(inside, abs=1e-9)
    for lo, hi in [(10, 149), (12, 151), (1, 150), (11, 160)]:
        assert abs(galaxy.power_law_fit(lam, ranks=(lo, hi))["alpha"] - inside) > 1e-3
