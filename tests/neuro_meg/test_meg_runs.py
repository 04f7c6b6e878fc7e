"""MEG runs on a small simulated Fashion-MNIST world: world, data, baseline, curves, training, reconstruction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from decodelab.eval.fmnist import predict
from decodelab.neuro.meg.simulate import MegSimulationConfig
from decodelab.neuro.runs import meg as runs_meg
from decodelab.neuro.runs.meg import (
    class_centroids,
    decode_classes,
    fit_linear_baseline,
    load_meg_data,
    retrieval_report,
    standardize_embedding,
    time_resolved,
)
from decodelab.neuro.runs.meg_world import fmnist_meg_world, load_world, pooled_pixels, simulate_fmnist_meg

N_IMG, N_TEST, N_SES = 90, 12, 2


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory):
    """Two subjects, a high SNR (0.5), early (0.1 s) and late (0.4 s) components."""
    out = tmp_path_factory.mktemp("megsim")
    cfg = MegSimulationConfig(n_subjects=2, n_test_images=N_TEST, n_sessions=N_SES, snr=0.5, seed=3)
    simulate_fmnist_meg(out, n_images=N_IMG, config=cfg, world_seed=1)
    return out


@pytest.fixture(scope="module")
def data(sim_dir):
    return load_meg_data(sim_dir)


def test_pooled_pixels_is_the_block_mean():
    img = np.zeros((1, 28, 28), np.uint8)
    img[0, :4, :4] = 255  # the first 4x4 block of a 7x7 grid
    img[0, 27, 27] = 255  # one pixel of the last block
    out = pooled_pixels(img, 7)
    assert out.shape == (1, 49) and out[0, 0] == 1.0 and out[0, -1] == pytest.approx(1 / 16)
    assert out[0, 1:-1].sum() == 0
    with pytest.raises(ValueError, match="5x5"):
        pooled_pixels(img, 5)


def test_world_semantic_embedding_carries_the_class(sim_dir):
    world = load_world(sim_dir)
    assert world.images.shape == (N_IMG, 28, 28) and world.low.shape == (N_IMG, 49) and world.n_test == N_TEST
    assert world.semantic.shape[1] > 16 and (world.semantic.std(0) > 0).all()
    again = fmnist_meg_world(N_IMG, n_test=N_TEST, seed=1)  # same seed, same images
    np.testing.assert_array_equal(again.images, world.images)
    # the classifier features cluster by class: the nearest centroid of the other images is usually right
    emb = world.semantic - world.semantic.mean(0)
    cent = np.stack([emb[world.labels == c].mean(0) for c in range(10) if (world.labels == c).any()])
    classes = [c for c in range(10) if (world.labels == c).any()]
    sim = emb @ cent.T / np.linalg.norm(emb, axis=1, keepdims=True) / np.linalg.norm(cent, axis=1)
    assert np.mean(np.array(classes)[sim.argmax(1)] == world.labels) > 0.7
    with pytest.raises(ValueError, match="unknown target"):
        world.embedding("pixels")


def test_load_meg_data_rows_targets_and_cache(sim_dir, data, monkeypatch):
    n_train = N_IMG - N_TEST
    assert data.subjects == ["P1", "P2"] and data.train_x.shape == (2 * n_train, 274, 181)
    assert data.test_x.shape == (2 * N_TEST, 274, 181) and (data.test_trials == N_SES).all()
    assert sorted(data.test_img[data.test_subject == 1]) == list(range(n_train, N_IMG))
    assert set(data.train_img) == set(range(n_train))
    emb = standardize_embedding(data.world, "semantic")
    np.testing.assert_allclose(data.targets("semantic", "test"), emb[data.test_img], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(emb[:n_train].mean(0), 0, atol=1e-9)  # standardised on the training images
    # the second load reads the cache, not the FIF files
    monkeypatch.setattr(runs_meg, "read_preprocessed_epochs", lambda *a, **k: pytest.fail("FIF read again"))
    again = load_meg_data(sim_dir)
    np.testing.assert_array_equal(again.test_x, data.test_x)
    assert again.subjects == data.subjects and again.ch_names == data.ch_names


def test_missing_files_and_world_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="preprocessed_P"):
        load_meg_data(tmp_path)
    (tmp_path / "preprocessed_P1-epo.fif").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="world.npz"):
        load_meg_data(tmp_path)


def test_linear_baseline_retrieves_at_high_snr_and_not_from_shuffled_targets(data):
    base = fit_linear_baseline(data, "semantic")
    pred = base.predict(data.test_x, data.test_subject)
    rep = retrieval_report(data, pred, "semantic")
    assert rep["mean.small.chance.top5"] == pytest.approx(5 / N_TEST)
    assert rep["mean.small.meg_to_image.top5"] > 0.8 and rep["mean.small.meg_to_image.median_relative_rank"] < 0.15
    assert rep["P1.small.n_candidates"] == N_TEST and rep["P1.large.n_candidates"] == N_IMG
    # a decoder that sees the wrong image pairs is at chance: shuffle the predictions across images
    shuffled = pred[np.random.default_rng(0).permutation(len(pred))]
    assert retrieval_report(data, shuffled, "semantic")["mean.small.meg_to_image.median_relative_rank"] > 0.25


def test_time_resolved_curves_peak_at_the_simulated_latencies(data):
    curves = time_resolved(data, ("low", "semantic"), width=0.1, step=0.025, alpha=1e3)
    assert abs(curves["semantic"]["peak_time"] - 0.4) <= 0.05
    assert abs(curves["low"]["peak_time"] - 0.1) <= 0.05
    sem = dict(zip(curves["semantic"]["times"], curves["semantic"]["mean_relative_rank"]))
    pre = [v for t, v in sem.items() if t < -0.1]
    assert min(pre) > 0.3  # before the image, chance (0.5 +- noise of 12 candidates)


def test_class_decoding_from_true_embeddings(data):
    cent = class_centroids(data, "semantic")
    assert cent.shape == (10, data.world.semantic.shape[1])
    truth = data.targets("semantic", "test")
    acc = np.mean(decode_classes(truth, cent) == data.world.labels[data.test_img])
    assert acc > 0.7


def test_meg_task_trains_resumes_exactly_and_exports(sim_dir, data, tmp_path):
    from decodelab.neuro.runs.meg_experiment import fit_meg, load_brain_module
    from decodelab.train import get_task

    assert get_task("meg").__name__ == "MegTask"
    kw = dict(preset="test", steps=6, batch_size=16, log_every=2, ckpt_every=2, progress=False, warmup=1)
    full = fit_meg(sim_dir, tmp_path / "full", overrides=kw, data=data)
    assert full.finished and full.step == 6 and np.isfinite(full.losses).all()
    part = fit_meg(sim_dir, tmp_path / "part", overrides=kw, data=data, stop_at=3)
    assert not part.finished and part.step == 3
    rest = fit_meg(sim_dir, tmp_path / "part", overrides=kw, data=data, resume=True)
    assert rest.finished and rest.losses == pytest.approx(full.losses[3:], rel=1e-5)
    a, b = load_brain_module(tmp_path / "full"), load_brain_module(tmp_path / "part")
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(v, w, msg=k)
    assert "clip.mean.small.meg_to_image.top5" in full.metrics
    z = np.load(full.final_dir / "predictions.npz")
    assert z["clip"].shape == (2 * N_TEST, data.world.semantic.shape[1])
    with pytest.raises(ValueError, match="unknown config key"):
        fit_meg(sim_dir, tmp_path / "bad", overrides=["nosuchkey=1"], data=data)


class _ClassPipeline:
    """Stands in for fmnist-c2i: returns a real Fashion-MNIST image of each requested class."""

    condition_kind = "class"

    def __init__(self, world):
        self.world = world
        self.asked: list[int] = []

    def __call__(self, classes, seed=0, batch_size=None):
        from types import SimpleNamespace

        from PIL import Image

        self.asked = list(classes)
        imgs = [Image.fromarray(self.world.images[np.flatnonzero(self.world.labels == c)[0]]) for c in classes]
        return SimpleNamespace(images=imgs)


def test_reconstruction_decodes_classes_and_scores_the_images(data):
    from decodelab.neuro.runs.meg_report import reconstruct_fmnist

    truth = data.targets("semantic", "test")
    pipe = _ClassPipeline(data.world)
    images, m = reconstruct_fmnist(data, truth, pipeline=pipe)
    labels = data.world.labels[data.test_img]
    decoded = decode_classes(truth, class_centroids(data, "semantic"))
    assert pipe.asked == list(decoded) and len(images) == len(truth) and m["chance"] == 0.1
    assert m["decoded_class_accuracy"] == pytest.approx(np.mean(decoded == labels))
    assert m["reconstruction_class_accuracy"] == pytest.approx(np.mean(predict(images) == labels))
    # predictions that carry no information decode to chance-level classes
    noise = np.random.default_rng(0).normal(size=truth.shape)
    _, m0 = reconstruct_fmnist(data, noise, pipeline=pipe)
    assert m0["decoded_class_accuracy"] < m["decoded_class_accuracy"]


def test_noise_normalization_whitens_the_baseline_and_follows_the_run(sim_dir, data, tmp_path):
    from decodelab.neuro.runs.meg import noise_normalize
    from decodelab.neuro.runs.meg_experiment import eval_meg, fit_meg

    before = data.train_x.copy()
    nn = noise_normalize(data)
    np.testing.assert_array_equal(data.train_x, before)  # the input is left alone
    assert not data.whiteners and len(nn.whiteners) == 2
    base = data.times < 0
    for s in range(2):
        rows = data.subject_rows("train", s)
        w = nn.train_x[rows][:, :, base].transpose(0, 2, 1).reshape(-1, data.train_x.shape[1]).astype(np.float64)
        raw = data.train_x[rows][:, :, base].transpose(0, 2, 1).reshape(-1, data.train_x.shape[1]).astype(np.float64)
        # the noise's sensor covariance becomes (close to, after shrinkage) the identity; it was far from it
        eig_w, eig_raw = np.linalg.eigvalsh(np.cov(w.T)), np.linalg.eigvalsh(np.cov(raw.T))
        assert eig_w.max() / np.median(eig_w) < 3 < eig_raw.max() / np.median(eig_raw)
        np.testing.assert_allclose(nn.whiteners[s], nn.whiteners[s].T, atol=1e-8)  # symmetric (ZCA)
        te = data.subject_rows("test", s)
        np.testing.assert_allclose(
            nn.test_x[te], np.einsum("dc,nct->ndt", nn.whiteners[s], data.test_x[te]), rtol=1e-3, atol=1e-3
        )
    with pytest.raises(ValueError, match="already noise-normalised"):
        noise_normalize(nn)
    kw = dict(preset="test", steps=2, batch_size=16, log_every=1, ckpt_every=2, progress=False, warmup=1)
    run = fit_meg(sim_dir, tmp_path / "nn", overrides={**kw, "noise_normalization": True}, data=data)
    assert run.card["data"]["noise_normalization"] is True
    assert len(np.load(run.final_dir / "noise_normalization.npz").files) == 2
    res = eval_meg(sim_dir, tmp_path / "nn", tmp_path / "ev", data=data, time_resolved_curves=False, figures=False)
    assert res["noise_normalization"] is True  # followed the run
    with pytest.raises(ValueError, match="trained with noise normalisation"):
        eval_meg(sim_dir, tmp_path / "nn", tmp_path / "ev2", data=data, noise_normalization=False, figures=False)
    with pytest.raises(ValueError, match="noise-normalised but noise_normalization is false"):
        fit_meg(sim_dir, tmp_path / "mismatch", overrides=kw, data=nn)
