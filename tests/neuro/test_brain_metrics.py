"""NSD reconstruction metrics (decodelab.eval.brain): closed-form cases, direct references, tiny networks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.spatial.distance import correlation
from skimage.color import rgb2gray
from skimage.metrics import structural_similarity
from torch import nn

from decodelab.eval import brain
from decodelab.eval.brain import (
    FeatureNetwork,
    correlation_distance,
    evaluate_reconstructions,
    pixcorr,
    retrieval_top1,
    row_correlation,
    ssim,
    two_way_identification,
)


def _reference_two_way(real: np.ndarray, pred: np.ndarray) -> float:
    """The published formula, literally: np.corrcoef over the stacked features."""
    n = len(real)
    r = np.corrcoef(real.reshape(n, -1), pred.reshape(n, -1))[:n, n:]
    congruent = np.diag(r)
    success = r < congruent
    return float(np.mean(np.sum(success, axis=0) / (n - 1)))


def test_two_way_known_answers() -> None:
    n = 8
    real = np.eye(n) - 1.0 / n  # centred one-hot rows: corr(i, k) = 1 if i == k else -1/(n-1)
    assert two_way_identification(real, real) == 1.0
    assert two_way_identification(real, -real) == 0.0  # anti-correlated with its own ground truth: loses all
    flipped = real * np.array([1, 1, 1, -1, -1, -1, -1, -1])[:, None]
    # an unflipped reconstruction beats all n-1 others (1 > -1/(n-1)); a flipped one none (-1 is lowest)
    assert two_way_identification(real, flipped) == pytest.approx(3 / 8)
    assert _reference_two_way(real, flipped) == pytest.approx(3 / 8)
    mixed = real + 2 * np.roll(real, -1, axis=0)  # closer to the next ground truth than to its own: 1 loss each
    assert two_way_identification(real, mixed) == pytest.approx((n - 2) / (n - 1))
    assert two_way_identification(real[:, None, :], mixed[:, None, :]) == pytest.approx((n - 2) / (n - 1))


def test_two_way_matches_reference_on_random_features() -> None:
    rng = np.random.default_rng(1)
    real = rng.normal(size=(30, 50))
    pred = 0.3 * real + rng.normal(size=(30, 50))
    value = two_way_identification(real, pred)
    assert value == pytest.approx(_reference_two_way(real, pred), abs=1e-12)
    assert 0.6 < value < 1.0


def test_correlation_distance_is_scipy() -> None:
    rng = np.random.default_rng(2)
    real, pred = rng.normal(size=(5, 33)), rng.normal(size=(5, 33))
    expected = np.mean([correlation(real[i], pred[i]) for i in range(5)])
    assert correlation_distance(real, pred) == pytest.approx(expected, abs=1e-12)
    assert correlation_distance(real, 2 * real + 1) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="constant"):
        correlation_distance(np.ones((2, 4)), real[:2, :4])


def test_pixcorr_and_ssim_against_direct_computation() -> None:
    rng = np.random.default_rng(3)
    real = rng.uniform(size=(3, 3, 24, 24))
    pred = np.clip(real + rng.normal(scale=0.2, size=real.shape), 0, 1)
    direct = [np.corrcoef(real[i].ravel(), pred[i].ravel())[0, 1] for i in range(3)]
    np.testing.assert_allclose(pixcorr(real, pred), direct, atol=1e-12)
    direct_ssim = [
        structural_similarity(rgb2gray(pred[i].transpose(1, 2, 0)), rgb2gray(real[i].transpose(1, 2, 0)),
                              gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)
        for i in range(3)
    ]  # fmt: skip
    np.testing.assert_allclose(ssim(real, pred), direct_ssim, atol=1e-12)
    assert ssim(real, real) == pytest.approx(np.ones(3))


def test_retrieval_known_answers() -> None:
    n = 10
    emb = np.eye(n)
    assert retrieval_top1(emb, emb, n_way=n, n_draws=1) == {"fwd": 1.0, "bwd": 1.0, "fwd_std": 0.0, "bwd_std": 0.0}
    perm = np.array([0, 1, 2, 3, 5, 4, 7, 6, 9, 8])  # 4 fixed points
    res = retrieval_top1(emb, emb[perm], n_way=n, n_draws=1)
    assert res["fwd"] == pytest.approx(0.4) and res["bwd"] == pytest.approx(0.4)
    hub = emb.copy()
    hub[0] = 1.0  # image 0 is equally similar to every brain row: ties are misses for brain retrieval only
    res = retrieval_top1(emb, hub, n_way=n, n_draws=1)
    assert res["fwd"] == pytest.approx(1.0) and res["bwd"] == pytest.approx(0.9)
    sub = retrieval_top1(emb, emb[perm], n_way=4, n_draws=50, seed=1)  # subsets: only swapped pairs both drawn fail
    assert 0.4 < sub["fwd"] < 1.0 and sub["fwd"] == sub["bwd"]
    with pytest.raises(ValueError, match="n_way"):
        retrieval_top1(emb, emb, n_way=300)


class _TinyCNN(nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 4, 5, stride=4)
        self.pool = nn.AdaptiveAvgPool2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(self.conv(x)))


def _images(n: int, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.uniform(size=(n, 3, 8, 8)).astype(np.float32)
    return F.interpolate(torch.from_numpy(base), size=(size, size), mode="bilinear").numpy()  # smooth images


def test_evaluate_reconstructions_with_tiny_networks() -> None:
    gt = _images(6, 425, 0)
    rec = np.clip(gt + np.random.default_rng(1).normal(scale=0.05, size=gt.shape), 0, 1).astype(np.float32)
    nets = {k: FeatureNetwork(_TinyCNN(i), name=k) for i, k in enumerate(("alexnet2", "inception", "effnet"))}
    same = evaluate_reconstructions(gt, gt, networks=nets, batch_size=4)
    assert same["pixcorr"] == pytest.approx(1.0) and same["ssim"] == pytest.approx(1.0)
    assert same["alexnet2"] == 1.0 and same["inception"] == 1.0 and same["effnet"] == pytest.approx(0.0, abs=1e-6)
    res = evaluate_reconstructions(gt, rec[:, :, ::5, ::5].copy(), networks=nets, batch_size=4)  # 85 px recons
    assert set(res) == {"n_images", "pixcorr", "ssim", "alexnet2", "inception", "effnet"}
    # the same numbers computed by hand: MindEye resizes (torch bilinear) to 425 / 256 / 342 / 255
    small = torch.from_numpy(rec[:, :, ::5, ::5].copy())
    up = F.interpolate(small * 255, size=(425, 425), mode="bilinear", align_corners=False) / 255
    assert res["pixcorr"] == pytest.approx(np.mean(pixcorr(gt, up.numpy())), abs=1e-6)
    for key, size in (("alexnet2", 256), ("inception", 342), ("effnet", 255)):
        feats = []
        for x in (torch.from_numpy(gt), small):
            x = F.interpolate(x * 255, size=(size, size), mode="bilinear", align_corners=False) / 255
            feats.append(nets[key](x).numpy())
        fn = correlation_distance if key == "effnet" else two_way_identification
        assert res[key] == pytest.approx(fn(*feats), abs=1e-6)
    bd = evaluate_reconstructions(gt, small.numpy(), networks=nets, protocol="brain-diffuser", batch_size=4)
    assert bd["pixcorr"] != pytest.approx(res["pixcorr"], abs=1e-9)  # PIL bicubic, not torch bilinear
    assert bd["pixcorr"] > 0.9


def test_evaluate_errors() -> None:
    gt = _images(3, 32, 0)
    with pytest.raises(ValueError, match="needs the network 'clip'"):
        evaluate_reconstructions(gt, gt, metrics=["clip"])
    with pytest.raises(ValueError, match="unknown protocol"):
        evaluate_reconstructions(gt, gt, protocol="takagi")
    with pytest.raises(ValueError, match="3 ground-truth images but 2"):
        evaluate_reconstructions(gt, gt[:2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        evaluate_reconstructions(gt, gt * 3)
    with pytest.raises(ValueError, match="native 425"):
        evaluate_reconstructions(gt, gt, protocol="brain-diffuser")
    out = evaluate_reconstructions((gt * 255).astype(np.uint8), gt, metrics=["pixcorr"])
    assert out["pixcorr"] > 0.99  # uint8 inputs are scaled by 1/255


def test_standard_networks_load_from_files_only(monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision

    from decodelab.eval import features

    with pytest.raises(FileNotFoundError, match="alexnet-owt-7be5be79.pth"):
        brain.standard_networks(metrics=["alexnet2"])
    with pytest.raises(FileNotFoundError, match="swav_800ep_pretrain.pth.tar"):
        brain.standard_networks(metrics=["swav"])
    torch.manual_seed(0)
    alex = torchvision.models.alexnet(weights=None).eval()
    calls = []
    monkeypatch.setattr(features, "load_alexnet", lambda path, check_hash: calls.append(path) or alex)
    nets = brain.standard_networks({"alexnet": "alexnet.pth"}, metrics=["alexnet2", "alexnet5"])
    assert calls == ["alexnet.pth"]  # one network serves both layers, loaded from the given file
    x = torch.rand(2, 3, 64, 64)
    norm = (x - torch.tensor(brain.IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(brain.IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(nets["alexnet2"](x), alex.features[:5](norm).flatten(1))  # ReLU after conv2
        torch.testing.assert_close(nets["alexnet5"](x), alex.features[:12](norm).flatten(1))  # ReLU after conv5


def test_swav_loader(tmp_path) -> None:
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet50(weights=None).eval()
    state = {f"module.{k}": v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    state["module.projection_head.0.weight"] = torch.zeros(4, 2048)
    state["module.prototypes.weight"] = torch.zeros(3, 4)
    torch.save(state, tmp_path / "swav.pth.tar")
    swav = brain.load_swav_resnet50(tmp_path / "swav.pth.tar")
    x = torch.rand(1, 3, 64, 64)
    net.fc = nn.Identity()
    with torch.no_grad():
        torch.testing.assert_close(swav(x), net(x))
    del state["module.layer4.2.conv3.weight"]
    torch.save(state, tmp_path / "bad.pth.tar")
    with pytest.raises(ValueError, match=r"(?s)bad.pth.tar.*layer4.2.conv3.weight"):
        brain.load_swav_resnet50(tmp_path / "bad.pth.tar")


def test_two_way_per_reconstruction_and_its_bootstrap_interval():
    from decodelab.eval.brain import bootstrap_ci, two_way_per_reconstruction

    rng = np.random.default_rng(3)
    real = rng.normal(size=(9, 16))
    mixed = real.copy()
    mixed[0] = -real[0]  # one reconstruction anti-correlated with its own ground truth: it loses every pair
    per = two_way_per_reconstruction(real, mixed)
    assert per.shape == (9,) and per[0] == 0.0 and per.mean() == pytest.approx(two_way_identification(real, mixed))
    lo, hi = bootstrap_ci(per, seed=1)
    assert lo <= per.mean() <= hi and hi - lo > 0
    assert bootstrap_ci(per, seed=1) == (lo, hi)  # deterministic
    assert bootstrap_ci(np.full(50, 0.7)) == pytest.approx((0.7, 0.7))  # no spread, no interval
    wide, narrow = bootstrap_ci(rng.random(10)), bootstrap_ci(rng.random(1000))
    assert wide[1] - wide[0] > narrow[1] - narrow[0]  # more images, tighter interval
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci(per, level=1.5)


def test_row_correlation_constant_rows_raise_or_score_zero() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(4, 2, 5)), rng.normal(size=(4, 10))
    direct = [np.corrcoef(a[i].ravel(), b[i])[0, 1] for i in range(4)]
    np.testing.assert_allclose(row_correlation(a, b), direct, atol=1e-12)
    a[2] = 0.5  # a constant (e.g. all-black) row
    with pytest.raises(ValueError, match="constant"):
        row_correlation(a, b)
    r = row_correlation(a, b, constant="zero")
    assert r[2] == 0.0 and np.allclose(r[[0, 1, 3]], np.array(direct)[[0, 1, 3]])
    with pytest.raises(ValueError, match="rows differ in shape"):
        row_correlation(a[:, :, :4], b)
    with pytest.raises(ValueError, match="'raise' or 'zero'"):
        row_correlation(a, b, constant="nan")
