"""Shared fixtures: one MiniLM text encoder and one tiny simulated NSD tree per test session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def text_encoder():
    from decodelab.neuro.simulate_fmri import default_text_encoder

    return default_text_encoder()


@pytest.fixture(scope="session")
def tiny(tmp_path_factory, text_encoder):
    """Two subjects (1 and 5), 40 training images each, 12 shared test images, 3 sessions of 52 trials."""
    from decodelab.neuro.simulate_fmri import simulate_nsd

    root = tmp_path_factory.mktemp("nsd")
    info = simulate_nsd(
        root, (1, 5), world="fmnist", n_train=40, n_test=12, trials_per_session=52, text_encoder=text_encoder
    )
    return root, info
