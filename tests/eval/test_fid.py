"""Fréchet distance and KID maths: reference formula, closed forms, degenerate inputs."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from decodelab.eval import fid


def reference_fid(mu1, sigma1, mu2, sigma2):
    """The textbook formula with a general matrix square root (test-only reference)."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def random_cov(rng, d, cond=10.0):
    """A random SPD matrix with eigenvalues spread over [1, cond]."""
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return (q * np.linspace(1.0, cond, d)) @ q.T


@pytest.mark.parametrize("d", [1, 5, 32])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_sqrtm_reference(d, seed):
    rng = np.random.default_rng(seed)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = random_cov(rng, d), random_cov(rng, d, cond=5.0)
    ours = fid.frechet_distance(mu1, s1, mu2, s2)
    ref = reference_fid(mu1, s1, mu2, s2)
    assert ours == pytest.approx(ref, rel=1e-6)


def test_identical_statistics_give_zero():
    rng = np.random.default_rng(2)
    mu, s = rng.normal(size=16), random_cov(rng, 16, cond=100.0)
    assert fid.frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-9)
    x = rng.normal(size=(300, 8))
    assert fid.fid_from_features(x, x) == pytest.approx(0.0, abs=1e-9)


def test_diagonal_closed_form():
    rng = np.random.default_rng(3)
    d = 10
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    v1, v2 = rng.uniform(0.1, 4.0, size=d), rng.uniform(0.1, 4.0, size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2.0 * np.sqrt(v1 * v2))
    got = fid.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2))
    assert got == pytest.approx(expected, rel=1e-10)


def test_mean_shift_only():
    rng = np.random.default_rng(4)
    s = random_cov(rng, 6)
    assert fid.frechet_distance(np.zeros(6), s, np.full(6, 2.0), s) == pytest.approx(24.0, rel=1e-9)


def test_rank_deficient_covariances_stay_finite():
    rng = np.random.default_rng(5)
    a = rng.normal(size=(10, 64))  # N < D: rank-9 covariances
    b = rng.normal(0.3, 1.0, size=(12, 64))
    mu1, s1 = fid.feature_statistics(a)
    mu2, s2 = fid.feature_statistics(b)
    assert np.linalg.matrix_rank(s1) < 64
    value = fid.frechet_distance(mu1, s1, mu2, s2)
    assert np.isfinite(value) and value > 0
    # Completely singular: zero covariances reduce to the squared mean distance.
    z = np.zeros((4, 4))
    assert fid.frechet_distance(np.zeros(4), z, np.ones(4), z) == pytest.approx(4.0)
    # Constant features (zero variance everywhere) are fine too.
    assert np.isfinite(fid.fid_from_features(np.ones((5, 3)), rng.normal(size=(5, 3))))


def test_feature_statistics_matches_numpy_and_accepts_tensors():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(50, 7)).astype(np.float32)
    mu, sigma = fid.feature_statistics(torch.from_numpy(x))
    assert mu.dtype == np.float64 and sigma.shape == (7, 7)
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "args",
    [
        (np.zeros(3), np.eye(3), np.zeros(4), np.eye(4)),  # dimension mismatch
        (np.zeros(3), np.eye(4), np.zeros(3), np.eye(3)),  # sigma does not fit mu
        (np.zeros((3, 1)), np.eye(3), np.zeros(3), np.eye(3)),  # mu not a vector
        (np.array([0.0, np.nan, 0.0]), np.eye(3), np.zeros(3), np.eye(3)),  # non-finite
    ],
)
def test_frechet_distance_validates_shapes(args):
    with pytest.raises(ValueError):
        fid.frechet_distance(*args)


def test_feature_validation():
    with pytest.raises(ValueError, match="2-D"):
        fid.feature_statistics(np.zeros(5))
    with pytest.raises(ValueError, match="at least 2"):
        fid.feature_statistics(np.zeros((1, 5)))
    with pytest.raises(ValueError, match="dimensions differ"):
        fid.fid_from_features(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="dimensions differ"):
        fid.kid(np.zeros((5, 3)), np.zeros((5, 4)))


def test_kid_same_vs_shifted_distribution():
    rng = np.random.default_rng(7)
    a = rng.normal(size=(400, 16))
    b = rng.normal(size=(400, 16))
    c = rng.normal(0.5, 1.0, size=(400, 16))
    same, same_std = fid.kid(a, b, subsets=20, subset_size=200)
    shifted, _ = fid.kid(a, c, subsets=20, subset_size=200)
    assert abs(same) < 3 * same_std + 0.01
    assert shifted > 0.1 and shifted > 10 * abs(same)
    # Deterministic for a seed; subset size is capped at the smaller set.
    assert fid.kid(a, c[:50], subsets=3, seed=1) == fid.kid(a, c[:50], subsets=3, seed=1)


def test_kid_unbiased_estimator_on_one_subset():
    """One subset covering both sets equals a direct evaluation of the unbiased MMD² formula."""
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(6, 3)), rng.normal(1.0, 1.0, size=(6, 3))

    def k(a, b):
        return (a @ b / 3 + 1.0) ** 3

    m = 6
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2
    mean, std = fid.kid(x, y, subsets=1, subset_size=6)
    assert mean == pytest.approx(kxx + kyy - 2 * kxy, rel=1e-10)
    assert std == 0.0


def test_kid_equals_torch_fidelity_with_the_same_seed():
    from torch_fidelity.metric_kid import kid_features_to_metric

    rng = np.random.default_rng(9)
    a, b = rng.normal(size=(120, 8)), rng.normal(0.2, 1.1, size=(150, 8))
    ref = kid_features_to_metric(torch.from_numpy(a), torch.from_numpy(b), kid_subsets=7, kid_subset_size=50,
                                 kid_kernel="poly", kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None,
                                 kid_kernel_poly_coef0=1, rng_seed=2020, verbose=False)  # fmt: skip
    assert fid.kid(a, b, subsets=7, subset_size=50) == pytest.approx(tuple(ref.values()), rel=1e-12)


def test_frechet_distance_equals_torch_fidelity():
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    rng = np.random.default_rng(10)
    a, b = rng.normal(size=(40, 64)), rng.normal(0.3, 1.0, size=(50, 64))  # rank-deficient covariances
    (mu1, s1), (mu2, s2) = fid.feature_statistics(a), fid.feature_statistics(b)
    ref = fid_statistics_to_metric({"mu": mu1, "sigma": s1}, {"mu": mu2, "sigma": s2}, verbose=False)
    assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref[KEY_METRIC_FID], rel=1e-8)
