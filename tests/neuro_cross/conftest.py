"""Shared fixtures: tiny simulated NSD trees (Fashion-MNIST with three subjects, shapes with one)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def text_encoder():
    from decodelab.neuro.simulate_fmri import default_text_encoder

    return default_text_encoder()


@pytest.fixture(scope="session")
def tiny_fmnist(tmp_path_factory, text_encoder):
    """Subjects 1, 2 and 5; 60 training images each, 12 shared test images, 3 sessions of 72 trials."""
    from decodelab.neuro.simulate_fmri import simulate_nsd

    root = tmp_path_factory.mktemp("nsd_fmnist")
    simulate_nsd(
        root, (1, 2, 5), world="fmnist", n_train=60, n_test=12, trials_per_session=72, text_encoder=text_encoder
    )
    return root


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory, text_encoder):
    """Subject 1 of the shapes world; 60 training images, 12 test images."""
    from decodelab.neuro.simulate_fmri import simulate_nsd

    root = tmp_path_factory.mktemp("nsd_shapes")
    simulate_nsd(root, (1,), world="shapes", n_train=60, n_test=12, trials_per_session=72, text_encoder=text_encoder)
    return root
