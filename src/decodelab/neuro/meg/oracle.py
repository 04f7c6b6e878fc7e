"""The best identification any decoder could reach on a simulated THINGS-MEG recording.

:func:`~decodelab.neuro.meg.simulate.simulate_things_meg` draws every epoch from a known
linear-Gaussian model: the seen image's signal ``S_m`` (its two feature sets through known spatial
patterns and time courses) plus Gaussian noise whose covariance is known up to a scale,

    Sigma = (1 - w) / c * (M^T M) (x) R  +  w * I,

with ``M`` the noise sources' spatial mixing ``[K, C]``, ``c`` its mean per-sensor power, ``R`` the
stationary AR(1) correlation over time (``R[t, u] = a^|t - u|``) and ``w`` the white-noise share.
Given an averaged test epoch ``Y`` and the candidate images, the Bayes-optimal way to say which
image was seen (uniform prior over the candidates) ranks them by the likelihood
``-||Y - S_m||^2_{Sigma^-1}``; for every ``k``, the top-``k`` of that ranking is the set of ``k``
candidates most likely to hold the true image, so no decoder trained on the recordings (which must
*estimate* the patterns that this ranking is given) can have a higher top-``k`` accuracy on the same
epochs. It is a ceiling for the simulation, not a method: it is handed the simulation's ground truth.

The Kronecker structure makes the Mahalanobis norm cheap without forming the ``C T x C T``
covariance: with ``M^T M = U diag(l) U^T`` and ``R = V diag(g) V^T``,
``||X||^2_{Sigma^-1} = sum_ij (U^T X V)_ij^2 / ((1 - w) / c * l_i g_j + w)``. Scaling ``Sigma``
(the SNR, the number of averaged repeats) does not change the ranking, so only the noise's shape
is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["NoiseWhitener", "identification_ranks", "signal_templates"]


@dataclass
class NoiseWhitener:
    """The simulated noise's covariance in its eigenbasis (see the module docstring).

    Attributes:
        spatial: ``U`` ``[C, C]``; temporal: ``V`` ``[T, T]``;
        variance: the covariance's eigenvalues ``[C, T]`` (up to the overall scale).
    """

    spatial: np.ndarray
    temporal: np.ndarray
    variance: np.ndarray

    @classmethod
    def from_simulation(
        cls, noise_mix: np.ndarray, n_times: int, *, noise_ar: float, white_noise: float
    ) -> NoiseWhitener:
        """From the noise sources' mixing ``[K, C]`` and the simulation's ``noise_ar`` / ``white_noise``."""
        mix = np.asarray(noise_mix, np.float64)
        if mix.ndim != 2:
            raise ValueError(f"noise_mix must be [n_sources, n_channels], got {mix.shape}")
        if not 0 <= white_noise <= 1 or not -1 < noise_ar < 1:
            raise ValueError(f"need 0 <= white_noise <= 1 and |noise_ar| < 1, got {white_noise}, {noise_ar}")
        power = (mix**2).sum(0).mean()
        lam, u = np.linalg.eigh(mix.T @ mix)
        t = np.arange(n_times)
        gam, v = np.linalg.eigh(noise_ar ** np.abs(t[:, None] - t[None, :]))
        variance = (1 - white_noise) / power * np.clip(lam, 0, None)[:, None] * np.clip(gam, 0, None)[None, :]
        variance = variance + white_noise
        if not (variance > 0).all():
            raise ValueError("the noise covariance is singular (white_noise = 0 with fewer sources than sensors)")
        return cls(u, v, variance)

    def whiten(self, x: np.ndarray) -> np.ndarray:
        """``[N, C, T]`` -> ``[N, C * T]`` with ``||row||^2`` the Mahalanobis norm of each epoch."""
        y = np.einsum("ci,nct,tj->nij", self.spatial, np.asarray(x, np.float64), self.temporal, optimize=True)
        return (y / np.sqrt(self.variance)).reshape(len(y), -1)


def signal_templates(z_low: np.ndarray, z_high: np.ndarray, patterns_low: np.ndarray, patterns_high: np.ndarray,
                     early: np.ndarray, late: np.ndarray) -> np.ndarray:  # fmt: skip
    """Noise-free epochs ``[N, C, T]`` of images with z-scored features ``z_low`` ``[N, F_low]`` / ``z_high``."""
    return (z_low @ patterns_low)[:, :, None] * early + (z_high @ patterns_high)[:, :, None] * late


def identification_ranks(
    epochs: np.ndarray, templates: np.ndarray, truth: np.ndarray, whitener: NoiseWhitener
) -> np.ndarray:
    """Rank (0 = first) of the true candidate when each epoch's candidates are ordered by likelihood.

    Args:
        epochs: ``[N, C, T]`` (averaged) test epochs in the simulation's units.
        templates: ``[M, C, T]`` noise-free epochs of the candidate images.
        truth: ``[N]`` index into ``templates`` of the image each epoch shows.
        whitener: the noise's covariance (:meth:`NoiseWhitener.from_simulation`).

    Returns:
        ``[N]`` integer ranks; top-``k`` accuracy is ``(ranks < k).mean()``.
    """
    if epochs.ndim != 3 or templates.ndim != 3 or epochs.shape[1:] != templates.shape[1:]:
        raise ValueError(f"epochs {epochs.shape} and templates {templates.shape} must be [N, C, T] alike")
    truth = np.asarray(truth)
    if truth.shape != (len(epochs),) or truth.min() < 0 or truth.max() >= len(templates):
        raise ValueError(f"truth must give one template index (0..{len(templates) - 1}) per epoch")
    y, s = whitener.whiten(epochs), whitener.whiten(templates)
    # ||y - s||^2 = ||y||^2 - 2 y.s + ||s||^2; the first term is the same for every candidate of an epoch
    dist = (s**2).sum(1)[None, :] - 2 * y @ s.T
    true = dist[np.arange(len(y)), truth]
    return (dist < true[:, None]).sum(1)
