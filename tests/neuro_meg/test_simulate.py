"""Simulated THINGS-MEG: files the loader reads, and the forward model that produced them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from decodelab.datasets.things_meg import make_splits, read_preprocessed_epochs
from decodelab.neuro.meg.simulate import MegSimulationConfig, simulate_things_meg

N_IMG, N_TEST, N_SES = 40, 8, 3


def _features(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(N_IMG, 4)), rng.normal(size=(N_IMG, 3)), [f"c{i % 5}" for i in range(N_IMG)]


def test_simulated_files_round_trip_through_the_loader(tmp_path):
    low, high, concepts = _features()
    cfg = MegSimulationConfig(n_subjects=2, n_test_images=N_TEST, n_sessions=N_SES, snr=0.5, seed=1)
    sim = simulate_things_meg(tmp_path, low, high, concepts=concepts, config=cfg)
    assert [p.name for p in sim.files] == ["preprocessed_P1-epo.fif", "preprocessed_P2-epo.fif"]
    assert json.loads((tmp_path / "simulation.json").read_text())["config"]["snr"] == 0.5
    assert set(np.load(tmp_path / "simulation_truth.npz").files) >= {"late", "patterns_high_P2"}
    ep = read_preprocessed_epochs(sim.files[0], tmin=-0.5, expected_sfreq=120.0)
    n_trials = (N_IMG - N_TEST) + N_TEST * N_SES
    assert ep.data.shape == (n_trials, 274, 181) and ep.metadata["subject"].iloc[0] == "BIGMEG1"
    test = ep.metadata[ep.metadata["trial_type"] == "test"]
    assert sorted(test["image_nr"].unique()) == list(range(N_IMG - N_TEST + 1, N_IMG + 1))
    assert (test.groupby("image_nr")["session"].apply(sorted).apply(list) == [[1, 2, 3]] * N_TEST).all()
    assert ep.metadata.loc[ep.metadata["image_nr"] == 7, "concept"].iloc[0] == "c1"  # image 7 is index 6
    splits = make_splits(ep)
    assert len(splits.train) == N_IMG - N_TEST and list(splits.test.n_trials) == [N_SES] * N_TEST
    # noise level: before the stimulus there is only noise, of std 1 / snr (in units of 1e-13 T)
    pre = ep.data[..., ep.times < -0.2] / 1e-13
    assert pre.std() == pytest.approx(1 / 0.5, rel=0.15)
    # subjects get their own spatial mixing
    assert not np.allclose(sim.patterns_high[0], sim.patterns_high[1])


def test_forward_model_is_the_known_one(tmp_path):
    low, high, concepts = _features()
    cfg = MegSimulationConfig(n_subjects=1, n_test_images=N_TEST, n_sessions=N_SES, snr=1e6, early_gain=0.5)
    sim = simulate_things_meg(tmp_path, low, high, concepts=concepts, config=cfg)
    ep = read_preprocessed_epochs(sim.files[0], tmin=-0.5, expected_sfreq=120.0)
    img = ep.metadata["image_nr"].to_numpy() - 1
    z = lambda f: (f - f.mean(0)) / f.std(0)  # noqa: E731
    x = ep.data / 1e-13
    t_late = int(np.argmin(np.abs(ep.times - 0.4)))
    t_early = int(np.argmin(np.abs(ep.times - 0.1)))
    np.testing.assert_allclose(x[:, :, t_late], z(high)[img] @ sim.patterns_high[0], atol=1e-3, rtol=1e-3)
    late_at_early = sim.late[t_early] * (z(high)[img] @ sim.patterns_high[0])
    np.testing.assert_allclose(x[:, :, t_early] - late_at_early, z(low)[img] @ sim.patterns_low[0], atol=1e-3)
    # unit signal std per sensor at the late peak, early_gain at the early one
    assert np.sqrt((x[:, :, t_late] ** 2).mean()) == pytest.approx(1.0, rel=0.1)
    assert np.sqrt(((x[:, :, t_early] - late_at_early) ** 2).mean()) == pytest.approx(0.5, rel=0.1)
    # patterns live where they should: early on occipital sensors
    occipital = np.array([c[2] == "O" for c in sim.ch_names])
    power = (sim.patterns_low[0] ** 2).sum(0)
    assert power[occipital].mean() > 5 * power[~occipital].mean()
    with pytest.raises(ValueError, match="n_test_images"):
        simulate_things_meg(tmp_path, low, high, config=MegSimulationConfig(n_test_images=N_IMG))
