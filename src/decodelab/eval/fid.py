"""Fréchet distance and kernel (MMD) distance between two sets of features: the pure maths.

Nothing here knows which network produced the features. FID proper (Heusel et al. 2017) is
:func:`frechet_distance` applied to Inception-v3 ``pool_3`` statistics; decodelab's offline domain
metrics (e.g. "FID (fmnist features)", :mod:`decodelab.eval.fmnist`) apply the same formula to
other feature networks, and their numbers are not comparable to Inception FID.

Everything is computed in float64.

- :func:`feature_statistics`: mean and unbiased covariance of ``[N, D]`` features.
- :func:`frechet_distance`: ``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))``. The trace of
  the matrix square root is taken through symmetric eigendecompositions instead of a general
  ``sqrtm``: ``S1 S2`` is similar to the symmetric PSD matrix ``S1^(1/2) S2 S1^(1/2)``, so
  ``tr((S1 S2)^(1/2))`` is the sum of the square roots of that matrix's eigenvalues. This is exact
  for PSD inputs, never produces complex values, and stays finite for rank-deficient covariances
  (fewer samples than dimensions), where ``sqrtm`` based code needs an ``eps * I`` retry.
- :func:`kid`: kernel inception distance (Bińkowski et al. 2018), the unbiased MMD² estimate with
  the cubic polynomial kernel ``k(x, y) = (x·y / D + 1)^3``, averaged over random subsets: torch-fidelity's
  ``kid_features_to_metric`` (same subsets for the same seed as torch-fidelity itself, whose default seed
  2020 is the default here), with input checks and the subset size capped at the smaller set.

Why the Fréchet distance is not torch-fidelity's ``fid_statistics_to_metric``: the numbers are the
same (tested; relative error against a closed form 1.3e-7 here and 1.2e-7 there at D=2048, N=1000,
both about 9 s on one core), but importing any torch-fidelity metric module imports torchvision
(measured: 6.4-7.5 s instead of 3.8-4.1 s for a fresh ``python -c "import ..."`` on the 2-core build
machine) and needs the ``eval`` extra, while the domain FIDs of the base install
(:mod:`decodelab.eval.fmnist`, the classifier training in :mod:`decodelab.train`) call
:func:`frechet_distance`. It also checks its inputs with ``ValueError`` (torch-fidelity asserts) and
accepts statistics of mixed float dtypes (torch-fidelity asserts equal dtypes).

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> a, b = rng.normal(size=(500, 8)), rng.normal(0.5, 1.0, size=(500, 8))
    >>> round(fid_from_features(a, a), 6)
    0.0
    >>> fid_from_features(a, b) > 1.0
    True
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

__all__ = ["feature_statistics", "fid_from_features", "frechet_distance", "kid", "trace_sqrt_product"]


def _as_features(features: object, name: str) -> np.ndarray:
    x = np.asarray(features.detach().cpu() if hasattr(features, "detach") else features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array of features [N, D], got shape {x.shape}")
    if x.shape[0] < 2 or x.shape[1] < 1:
        raise ValueError(f"{name} needs at least 2 samples of at least 1 dimension, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def feature_statistics(features: object) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of a set of feature vectors.

    Args:
        features: ``[N, D]`` array-like (numpy array or torch tensor), ``N >= 2``.

    Returns:
        ``(mu, sigma)``: float64 ``[D]`` and ``[D, D]`` (unbiased covariance, divided by ``N - 1``).

    Raises:
        ValueError: for a non-2-D input, fewer than 2 samples or non-finite values.
    """
    x = _as_features(features, "features")
    mu = x.mean(axis=0)
    centred = x - mu
    sigma = centred.T @ centred / (x.shape[0] - 1)
    return mu, sigma


def _check_stats(mu: object, sigma: object, name: str) -> tuple[np.ndarray, np.ndarray]:
    mu = np.atleast_1d(np.asarray(mu, dtype=np.float64))
    sigma = np.atleast_2d(np.asarray(sigma, dtype=np.float64))
    if mu.ndim != 1:
        raise ValueError(f"mu{name} must be a vector [D], got shape {mu.shape}")
    if sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"sigma{name} must be [D, D] = [{mu.shape[0]}, {mu.shape[0]}], got shape {sigma.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"mu{name} / sigma{name} contain NaN or infinite values")
    return mu, sigma


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a (numerically) PSD matrix; negative round-off eigenvalues -> 0."""
    w, v = scipy.linalg.eigh((sigma + sigma.T) / 2.0)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """``tr((sigma1 @ sigma2)^(1/2))`` for symmetric PSD ``sigma1``, ``sigma2`` (eigenvalue route)."""
    root1 = _psd_sqrt(sigma1)
    inner = root1 @ ((sigma2 + sigma2.T) / 2.0) @ root1  # symmetric PSD, similar to sigma1 @ sigma2
    eig = scipy.linalg.eigvalsh((inner + inner.T) / 2.0)
    return float(np.sqrt(np.clip(eig, 0.0, None)).sum())


def frechet_distance(mu1: object, sigma1: object, mu2: object, sigma2: object) -> float:
    """Fréchet distance between the Gaussians ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``.

    ``d² = |mu1 - mu2|² + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2))``, computed in
    float64 through symmetric eigendecompositions (see the module docstring), so it is real and
    finite for any PSD covariances, singular ones included.

    Args:
        mu1, mu2: means ``[D]``.
        sigma1, sigma2: covariances ``[D, D]`` (symmetric positive semi-definite).

    Returns:
        The squared distance as a Python float (``>= 0``; round-off below zero is clipped).

    Raises:
        ValueError: on mismatched or malformed shapes, or non-finite values.
    """
    mu1, sigma1 = _check_stats(mu1, sigma1, "1")
    mu2, sigma2 = _check_stats(mu2, sigma2, "2")
    if mu1.shape != mu2.shape:
        raise ValueError(f"the two statistics have different dimensions: {mu1.shape[0]} vs {mu2.shape[0]}")
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    return float(max(value, 0.0))


def fid_from_features(features1: object, features2: object) -> float:
    """Fréchet distance between the Gaussian fits of two feature sets ``[N1, D]`` and ``[N2, D]``.

    Note that the estimate is biased upward for small ``N`` (the covariance noise adds to it);
    compare numbers computed from equally many samples.
    """
    f1 = _as_features(features1, "features1")
    f2 = _as_features(features2, "features2")
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature dimensions differ: {f1.shape[1]} vs {f2.shape[1]}")
    return frechet_distance(*feature_statistics(f1), *feature_statistics(f2))


def kid(
    features1: object,
    features2: object,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    seed: int = 2020,
    gamma: float | None = None,
    coef0: float = 1.0,
) -> tuple[float, float]:
    """Kernel distance (KID): unbiased MMD² with a polynomial kernel, averaged over random subsets.

    For each of ``subsets`` draws, ``m`` rows are sampled without replacement from each set
    (``numpy.random.RandomState(seed)``, as torch-fidelity) and

    ``MMD² = sum_{i!=j} k(x_i, x_j) / (m(m-1)) + sum_{i!=j} k(y_i, y_j) / (m(m-1)) - 2 sum_{i,j} k(x_i, y_j) / m²``

    with ``k(x, y) = (gamma x·y + coef0)^degree`` (``gamma = 1/D`` by default, Bińkowski et al.).
    The estimate is unbiased, so it fluctuates around 0 (and may be slightly negative) for two
    samples of the same distribution. Computed by torch-fidelity (``metric_kid.kid_features_to_metric``)
    in float64.

    Args:
        features1, features2: ``[N1, D]`` and ``[N2, D]`` features.
        subsets: number of random subsets.
        subset_size: rows per subset; capped at ``min(N1, N2)``.
        degree: polynomial degree (3).
        seed: seed of the subset sampler (torch-fidelity's default, 2020).
        gamma: kernel scale (``None``: ``1 / D``).
        coef0: kernel offset (1).

    Returns:
        ``(mean, std)`` of MMD² over the subsets (``std`` with ``ddof=0``).

    Raises:
        ValueError: on mismatched dimensions or invalid settings.
        ImportError: torch-fidelity is not installed (the ``eval`` extra).
    """
    f1 = _as_features(features1, "features1")
    f2 = _as_features(features2, "features2")
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature dimensions differ: {f1.shape[1]} vs {f2.shape[1]}")
    if subsets < 1 or subset_size < 2 or degree < 1:
        raise ValueError(f"need subsets >= 1, subset_size >= 2 and degree >= 1; got {subsets}, {subset_size}, {degree}")
    try:
        import torch
        from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric
    except ImportError as err:
        raise ImportError(f"KID needs torch-fidelity: pip install 'decodelab[eval]' ({err})") from None
    out = kid_features_to_metric(
        torch.from_numpy(f1), torch.from_numpy(f2), kid_subsets=subsets,
        kid_subset_size=min(subset_size, f1.shape[0], f2.shape[0]), kid_kernel="poly",
        kid_kernel_poly_degree=degree, kid_kernel_poly_gamma=gamma, kid_kernel_poly_coef0=coef0, rng_seed=seed,
        verbose=False,
    )  # fmt: skip
    return float(out[KEY_METRIC_KID_MEAN]), float(out[KEY_METRIC_KID_STD])
