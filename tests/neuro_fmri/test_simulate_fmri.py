"""Simulated NSD: the colleague's NSD loaders read it, and its ncsnr is NSD's, as written."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from decodelab.datasets.nsd import (
    NSDPaths,
    load_captions,
    load_expdesign,
    load_nsd_split,
    load_roi_mask,
    load_stim_info,
    load_stimuli,
    read_session_betas,
)
from decodelab.neuro.simulate_fmri import CAPTIONS_FILE, empirical_ncsnr, read_simulation, simulate_nsd


def test_the_nsd_loader_reads_the_simulated_tree(tiny, tmp_path):
    root, info = tiny
    assert info["sessions"] == 3 and read_simulation(root) == json.loads((root / "simulation.json").read_text())
    design = load_expdesign(NSDPaths(root, 1).expdesign)
    assert len(design.masterordering) == 156 and design.subjectim.shape == (8, 1040)
    assert np.array_equal(design.sharedix, np.arange(1, 13))
    splits = {}
    for s in (1, 5):
        split = load_nsd_split(root, s, sessions=3, trials_per_session=52, cache_dir=tmp_path)
        n_vox = int(load_roi_mask(NSDPaths(root, s).roi()).sum())
        assert n_vox == info["per_subject"][str(s)]["n_voxels"]
        assert split.train.shape == (40, n_vox) and split.test.shape == (12, n_vox)
        assert (split.train_repeats == 3).all() and (split.test_repeats == 3).all()
        assert np.array_equal(split.test_ids, np.arange(12))  # the shared images
        assert np.abs(split.train).max() < 100  # /300 applied: percent signal change
        splits[s] = split
    assert splits[1].train.shape[1] != splits[5].train.shape[1]  # different voxel counts
    assert not set(splits[1].train_ids) & set(splits[5].train_ids)  # own training images
    imgs = load_stimuli(NSDPaths(root, 1).stimuli, splits[1].test_ids)
    assert imgs.shape == (12, 32, 32, 3) and imgs.dtype == np.uint8 and imgs.max() > 100
    caps = load_captions(root / CAPTIONS_FILE, splits[1].test_ids)
    labels = load_stim_info(NSDPaths(root, 1).stim_info)["label"].to_numpy()[splits[1].test_ids]
    from decodelab.datasets.fashion_mnist import FASHION_MNIST_CLASSES

    assert all(FASHION_MNIST_CLASSES[lab].lower() in c[0] for lab, c in zip(labels, caps))
    # repeat averaging: the cached split equals the mean of the trials read one by one
    mask = load_roi_mask(NSDPaths(root, 1).roi())
    trials = np.concatenate([read_session_betas(NSDPaths(root, 1).betas(k), mask, trials=52) for k in (1, 2, 3)])
    ids = design.subjectim[0, design.masterordering - 1] - 1
    np.testing.assert_allclose(splits[1].test[3], trials[ids == 3].mean(0) / 300, rtol=1e-5, atol=1e-6)


def test_written_ncsnr_matches_an_empirical_estimate_and_scales_with_noise(tmp_path, text_encoder):
    ncsnr = {}
    for noise in (1.0, 2.0):
        root = tmp_path / f"n{noise}"
        simulate_nsd(root, (2,), world="fmnist", noise=noise, n_train=200, n_test=50, text_encoder=text_encoder)
        paths = NSDPaths(root, 2)
        mask = load_roi_mask(paths.roi())
        written = np.asarray(nib.load(paths.betas(1).parent / "ncsnr.nii.gz").dataobj)[mask]
        design = load_expdesign(paths.expdesign)
        ids = design.subjectim[1, design.masterordering - 1] - 1
        emp = empirical_ncsnr(read_session_betas(paths.betas(1), mask) / 300.0, ids)
        ncsnr[noise] = written
        if noise == 1.0:
            assert 0.2 <= np.median(written) <= 0.5  # NSD's nsdgeneral range
        assert abs(np.median(emp) - np.median(written)) < 0.05
        assert np.corrcoef(emp, written)[0, 1] > 0.7
        assert np.median(np.abs(emp - written)) < 0.08
    np.testing.assert_allclose(ncsnr[2.0], ncsnr[1.0] / 2, rtol=1e-5)


def test_empirical_ncsnr_on_known_numbers():
    rng = np.random.default_rng(0)
    signal = rng.normal(size=(3000, 3)) * np.array([1.0, 0.5, 0.0])
    ids = np.repeat(np.arange(3000), 3)
    betas = signal[ids] + rng.normal(size=(9000, 3))
    est = empirical_ncsnr(betas, ids)
    np.testing.assert_allclose(est[:2], signal.std(0)[:2], atol=0.05)  # noise sd 1
    assert est[2] < 0.1


def test_clear_errors(tiny, tmp_path):
    root, _ = tiny
    with pytest.raises(ValueError, match="overwrite"):
        simulate_nsd(root, (1,))
    with pytest.raises(ValueError, match="unknown world"):
        simulate_nsd(tmp_path, (1,), world="coco")
    with pytest.raises(ValueError, match="whole sessions"):
        simulate_nsd(tmp_path, (1,), n_train=41, n_test=20, trials_per_session=60)
    with pytest.raises(FileNotFoundError, match="simulation.json"):
        read_simulation(tmp_path)
