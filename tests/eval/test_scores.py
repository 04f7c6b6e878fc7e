"""FID-family maths: closed forms and a cross-check against torchmetrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from decodelab.eval.fid import feature_statistics, fid_from_features, frechet_distance
from decodelab.eval.metrics import metrics_from_features
from decodelab.eval.refstats import ReferenceStats
from decodelab.eval.scores import inception_score, precision_recall


def _spd(d: int, seed: int) -> np.ndarray:
    a = np.random.default_rng(seed).normal(size=(d, d))
    return a @ a.T + 0.1 * np.eye(d)


# ----------------------------------------------------------------------------------- Fréchet
def test_frechet_closed_form_with_full_covariances():
    # sigma2 = c^2 sigma1 commutes with sigma1: tr((s1 s2)^1/2) = c tr(s1), so d = |dmu|^2 + (1 - c)^2 tr(s1)
    s1, c = _spd(6, 0), 1.7
    mu1, mu2 = np.arange(6.0), np.arange(6.0) + 0.5
    expected = 6 * 0.25 + (1 - c) ** 2 * np.trace(s1)
    assert frechet_distance(mu1, s1, mu2, c * c * s1) == pytest.approx(expected, rel=1e-10)


def test_frechet_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(1).normal(size=(300, 16))
    assert fid_from_features(x, x) == pytest.approx(0.0, abs=1e-8)


def test_fid_matches_torchmetrics():
    tm_fid = pytest.importorskip("torchmetrics.image.fid", reason="torchmetrics is not installed")
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(400, 32)), rng.normal(0.3, 1.2, size=(400, 32)) @ rng.normal(size=(32, 32)) / 5
    mu1, s1 = feature_statistics(a)
    mu2, s2 = feature_statistics(b)
    ours = frechet_distance(mu1, s1, mu2, s2)
    theirs = float(tm_fid._compute_fid(*(torch.from_numpy(v) for v in (mu1, s1, mu2, s2))))
    assert ours == pytest.approx(theirs, rel=1e-6)
    assert feature_statistics(a)[1] == pytest.approx(np.cov(a, rowvar=False))  # unbiased, as np.cov


# ---------------------------------------------------------------------------------------- IS
def test_inception_score_closed_forms():
    onehot = np.tile(np.eye(10), (5, 1))  # 50 confident predictions, balanced over 10 classes
    assert inception_score(onehot, splits=5, probs=True) == pytest.approx((10.0, 0.0))
    uniform = np.full((40, 10), 0.1)
    assert inception_score(uniform, splits=4, probs=True)[0] == pytest.approx(1.0)
    # one class only: confident but not diverse -> 1
    assert inception_score(np.tile(np.eye(10)[:1], (20, 1)), splits=2, probs=True)[0] == pytest.approx(1.0)
    # logits: a large margin approaches one-hot
    assert inception_score(onehot * 60.0, splits=5)[0] == pytest.approx(10.0, rel=1e-6)


def test_inception_score_splits_are_contiguous_and_validated():
    # first split all class 0, second split balanced over 2 classes -> IS (1 + 2) / 2
    p = np.concatenate([np.tile([[1.0, 0.0]], (4, 1)), np.tile(np.eye(2), (2, 1))])
    mean, std = inception_score(p, splits=2, probs=True)
    assert (mean, std) == pytest.approx((1.5, 0.5))
    perm = np.random.RandomState(2020).permutation(len(p))  # torch-fidelity's shuffle
    assert inception_score(p, splits=2, probs=True, shuffle_seed=2020) == inception_score(p[perm], splits=2, probs=True)
    with pytest.raises(ValueError, match="splits"):
        inception_score(p, splits=9, probs=True)
    with pytest.raises(ValueError, match="sum to 1"):
        inception_score(p * 2, splits=2, probs=True)


def test_inception_score_matches_torchmetrics():
    tm_is = pytest.importorskip("torchmetrics.image.inception", reason="torchmetrics is not installed")
    logits = torch.randn(60, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    metric = tm_is.InceptionScore(feature=torch.nn.Identity(), splits=3)
    metric.update(logits)
    torch.manual_seed(5)
    theirs = metric.compute()[0].item()
    torch.manual_seed(5)
    perm = torch.randperm(60)  # torchmetrics shuffles with the global RNG before chunking
    assert inception_score(logits[perm].numpy(), splits=3)[0] == pytest.approx(theirs, rel=1e-6)


# ---------------------------------------------------------------------------------------- PR
def test_precision_recall_on_constructed_sets():
    grid = np.array([[i, j] for i in range(5) for j in range(5)], dtype=float)  # unit grid
    assert precision_recall(grid, grid, k=3) == (1.0, 1.0)
    far = grid + 100.0
    assert precision_recall(grid, far, k=3) == (0.0, 0.0)
    # half the fakes sit on the real grid, half far away: precision 0.5; every real point is covered
    half = np.concatenate([grid, far])
    p, rec = precision_recall(grid, half, k=3)
    assert p == pytest.approx(0.5) and rec == 1.0
    # a fake collapsed into one real point: precise, but recalls only the real points in its ball
    collapsed = np.repeat(grid[12:13], 10, axis=0) + np.random.default_rng(0).normal(0, 1e-3, (10, 2))
    p, rec = precision_recall(grid, collapsed, k=3)
    assert p == 1.0 and rec == pytest.approx(1 / 25)
    # a point exactly on a ball's surface counts (<=)
    line = np.array([[0.0], [1.0], [2.0], [3.0]])  # k=1 radii are all 1
    assert precision_recall(line, np.array([[4.0], [50.0]]), k=1)[0] == 0.5
    assert precision_recall(line, np.array([[4.001], [50.0]]), k=1)[0] == 0.0


def test_precision_recall_counts_points_exactly_on_a_sphere():
    """Integer features put many points exactly on a k-NN sphere: the result equals exact integer arithmetic.

    (decodelab's former implementation compared squared distances with squared radii, sqrt(3)**2 < 3,
    and gave precision 0.8345 / recall 0.94 here.)
    """
    rng = np.random.default_rng(0)
    real = rng.integers(0, 4, size=(400, 16))
    fake = rng.integers(0, 4, size=(400, 16)) + (rng.random((400, 16)) < 0.1)

    def d2(a, b):  # exact squared distances (int64)
        return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)

    r_real, r_fake = np.sort(d2(real, real), 1)[:, 3], np.sort(d2(fake, fake), 1)[:, 3]
    precision = (d2(fake, real) <= r_real[None]).any(1).mean()
    recall = (d2(real, fake) <= r_fake[None]).any(1).mean()
    assert 0 < precision < 1 and 0 < recall < 1
    assert precision_recall(real.astype(float), fake.astype(float), k=3) == pytest.approx((precision, recall), abs=1e-6)


def test_inception_score_and_precision_recall_equal_torch_fidelity():
    from torch_fidelity.metric_isc import isc_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric

    rng = np.random.default_rng(4)
    logits = rng.normal(size=(103, 12)) * 2
    ref = isc_features_to_metric(torch.from_numpy(logits), splits=10, shuffle=True, rng_seed=2020)
    assert inception_score(logits, splits=10, shuffle_seed=2020) == pytest.approx(tuple(ref.values()), rel=1e-12)
    real, fake = rng.normal(size=(80, 5)), rng.normal(0.3, 1.0, size=(70, 5))
    ref = prc_features_to_metric(torch.from_numpy(fake), torch.from_numpy(real), prc_neighborhood=3,
                                 prc_batch_size=10000, save_cpu_ram=False, verbose=False)  # fmt: skip
    assert precision_recall(real, fake, k=3, batch_size=16) == (ref["precision"], ref["recall"])


def test_metrics_from_features_labels_non_standard_networks():
    rng = np.random.default_rng(3)
    real, fake = rng.normal(size=(60, 4)), rng.normal(0.5, 1, size=(60, 4))
    from decodelab.eval.features import FeatureSet

    mu, s = feature_statistics(real)
    ref = ReferenceStats(mu, s, 60, real.astype(np.float32))
    fs = FeatureSet(fake.astype(np.float32), rng.normal(size=(60, 5)).astype(np.float32), np.arange(60))
    std = metrics_from_features(fs, ref, ["fid", "is", "pr", "kid"], kid_subset_size=50, kid_subsets=5)
    assert {"fid", "inception_score", "precision", "recall", "kid"} <= set(std)
    assert std["fid"] == pytest.approx(fid_from_features(fake.astype(np.float32), real), rel=1e-6)
    other = metrics_from_features(fs, ref, ["fid"], extractor="efficientnet-lite0")
    assert list(other) == ["fid (efficientnet-lite0 features)"]
    with pytest.raises(ValueError, match="unknown metric"):
        metrics_from_features(fs, ref, ["fd"])
    with pytest.raises(ValueError, match="only mu/sigma"):
        metrics_from_features(fs, ReferenceStats(mu, s, 60), ["pr"])
