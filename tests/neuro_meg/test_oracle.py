"""The simulation's Bayes-optimal identification: exact maths on small cases, and the noise model fits the data."""

from __future__ import annotations

import numpy as np
import pytest

from decodelab.datasets.things_meg import read_preprocessed_epochs
from decodelab.neuro.meg.oracle import NoiseWhitener, identification_ranks, signal_templates
from decodelab.neuro.meg.simulate import MegSimulationConfig, simulate_things_meg


def _dense_cov(mix, n_times, ar, w):
    t = np.arange(n_times)
    power = (mix**2).sum(0).mean()
    return (1 - w) / power * np.kron(mix.T @ mix, ar ** np.abs(t[:, None] - t[None, :])) + w * np.eye(
        mix.shape[1] * n_times
    )


def test_whitened_norm_is_the_mahalanobis_norm_of_the_dense_covariance():
    rng = np.random.default_rng(0)
    mix, x = rng.normal(size=(3, 5)), rng.normal(size=(7, 5, 4))
    wh = NoiseWhitener.from_simulation(mix, 4, noise_ar=0.8, white_noise=0.2)
    prec = np.linalg.inv(_dense_cov(mix, 4, 0.8, 0.2))
    flat = x.reshape(7, -1)  # C-major, T-minor: the kron(spatial, temporal) order
    expected = np.einsum("ni,ij,nj->n", flat, prec, flat)
    np.testing.assert_allclose((wh.whiten(x) ** 2).sum(1), expected, rtol=1e-9)


def test_identification_ranks_match_brute_force_likelihoods():
    rng = np.random.default_rng(1)
    mix = rng.normal(size=(2, 4))
    wh = NoiseWhitener.from_simulation(mix, 3, noise_ar=0.5, white_noise=0.4)
    prec = np.linalg.inv(_dense_cov(mix, 3, 0.5, 0.4))
    templates, truth = rng.normal(size=(6, 4, 3)), np.array([0, 3, 5, 2, 2])
    epochs = templates[truth] + rng.normal(size=(5, 4, 3))
    d = epochs.reshape(5, 1, -1) - templates.reshape(1, 6, -1)
    dist = np.einsum("nmi,ij,nmj->nm", d, prec, d)
    expected = (dist < dist[np.arange(5), truth][:, None]).sum(1)
    np.testing.assert_array_equal(identification_ranks(epochs, templates, truth, wh), expected)
    with pytest.raises(ValueError, match="template index"):
        identification_ranks(epochs, templates, np.array([0, 1, 2, 3, 6]), wh)
    with pytest.raises(ValueError, match="must be"):
        identification_ranks(epochs[:, :3], templates, truth, wh)


def test_singular_noise_is_refused():
    with pytest.raises(ValueError, match="singular"):
        NoiseWhitener.from_simulation(np.ones((1, 3)), 2, noise_ar=0.5, white_noise=0.0)


@pytest.mark.parametrize("snr, best", [(3.0, True), (1e-4, False)])
def test_oracle_on_a_simulation_and_its_noise_model(tmp_path, snr, best):
    rng = np.random.default_rng(2)
    n_img, n_test = 60, 20
    low, high = rng.normal(size=(n_img, 4)), rng.normal(size=(n_img, 3))
    cfg = MegSimulationConfig(n_subjects=1, n_test_images=n_test, n_sessions=2, snr=snr, seed=3)
    sim = simulate_things_meg(tmp_path, low, high, config=cfg)
    truth = np.load(tmp_path / "simulation_truth.npz")
    np.testing.assert_array_equal(truth["noise_mix_P1"], sim.noise_mix[0])
    ep = read_preprocessed_epochs(sim.files[0], tmin=-0.5, expected_sfreq=120.0)
    x, img = ep.data / 1e-13, ep.metadata["image_nr"].to_numpy() - 1
    z = lambda f: (f - f.mean(0)) / f.std(0)  # noqa: E731
    templates = signal_templates(z(low), z(high), sim.patterns_low[0], sim.patterns_high[0], sim.early, sim.late)
    wh = NoiseWhitener.from_simulation(
        sim.noise_mix[0], len(ep.times), noise_ar=cfg.noise_ar, white_noise=cfg.white_noise
    )
    # the noise model is the one that made the data: whitened residuals have the same variance in the
    # noisiest spatial directions (the sources') as overall, 1 / snr^2 (not so without whitening)
    resid = (x - templates[img]) * snr
    white = wh.whiten(resid).reshape(len(x), *wh.variance.shape)
    top = wh.variance.mean(1).argsort()[-5:]  # the strongest noise directions
    assert white.var() == pytest.approx(1.0, rel=0.05)
    assert white[:, top].var() == pytest.approx(1.0, rel=0.1)
    raw = np.einsum("ci,nct->nit", wh.spatial, resid)
    assert raw[:, top].var() > 3 * raw.var()
    test = img >= n_img - n_test
    ranks = identification_ranks(x[test], templates[n_img - n_test :], img[test] - (n_img - n_test), wh)
    if best:
        assert (ranks == 0).all()
    else:  # no signal: the true image is anywhere among the 20
        assert 4 < ranks.mean() < 15
