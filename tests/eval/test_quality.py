"""PSNR / SSIM / Y-channel / LPIPS against scikit-image and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from decodelab.eval.quality import load_lpips, lpips_distance, psnr, psnr_from_mse, rgb_to_y, ssim


def _pair(seed: int = 0, shape=(2, 3, 40, 36)):
    g = torch.Generator().manual_seed(seed)
    clean = torch.rand(shape, generator=g)
    noisy = (clean + 0.1 * torch.randn(shape, generator=g)).clamp(0, 1)
    return noisy, clean


def _np(x: torch.Tensor) -> np.ndarray:
    return x.permute(1, 2, 0).double().numpy()


def test_psnr_rgb_matches_skimage_and_closed_form():
    pred, target = _pair()
    ours = psnr(pred, target)
    for i in range(2):
        ref = peak_signal_noise_ratio(_np(target[i]), _np(pred[i]), data_range=1.0)
        assert ours[i].item() == pytest.approx(ref, rel=1e-10)
    # constant error e -> PSNR = -20 log10(e)
    t = torch.full((3, 16, 16), 0.5, dtype=torch.float64)
    assert psnr(t + 0.01, t).item() == pytest.approx(40.0, abs=1e-6)
    assert psnr(t, t).item() == math.inf
    assert psnr_from_mse(1e-4) == pytest.approx(40.0)


def test_y_channel_matches_skimage_rgb2ycbcr():
    pred, _ = _pair()
    y = rgb_to_y(pred[0])[0].numpy()
    ref = rgb2ycbcr(_np(pred[0]))[..., 0] / 255.0  # skimage returns Y in [16, 235]
    np.testing.assert_allclose(y, ref, atol=1e-6)


def test_psnr_y_with_shave_matches_skimage():
    pred, target = _pair(1)
    ours = psnr(pred, target, y_channel=True, shave=4)[0].item()
    yp = rgb2ycbcr(_np(pred[0]))[4:-4, 4:-4, 0] / 255.0
    yt = rgb2ycbcr(_np(target[0]))[4:-4, 4:-4, 0] / 255.0
    assert ours == pytest.approx(peak_signal_noise_ratio(yt, yp, data_range=1.0), rel=1e-6)


def test_ssim_rgb_matches_skimage_gaussian_protocol():
    pred, target = _pair(2)
    ours = ssim(pred, target)
    for i in range(2):
        ref = structural_similarity(_np(target[i]), _np(pred[i]), data_range=1.0, channel_axis=2,
                                    gaussian_weights=True, sigma=1.5, use_sample_covariance=False)  # fmt: skip
        assert ours[i].item() == pytest.approx(ref, abs=1e-9)
    assert ssim(target, target).min().item() == pytest.approx(1.0, abs=1e-12)


def test_ssim_y_matches_skimage_and_data_range_255():
    pred, target = _pair(3, (1, 3, 32, 32))
    ours = ssim(pred * 255, target * 255, data_range=255, y_channel=True)[0].item()
    yp, yt = (rgb2ycbcr(_np(x[0]))[..., 0] / 255.0 for x in (pred, target))
    ref = structural_similarity(yt, yp, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert ours == pytest.approx(ref, abs=1e-9)


def test_bad_inputs_are_refused():
    a = torch.rand(3, 16, 16)
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(a, torch.rand(3, 16, 17))
    with pytest.raises(ValueError, match="smaller than"):
        ssim(torch.rand(3, 8, 8), torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="3 channels"):
        psnr(torch.rand(1, 16, 16), torch.rand(1, 16, 16), y_channel=True)
    with pytest.raises(ValueError, match="shave"):
        psnr(a, a, shave=8)


def test_lpips_loads_local_files_and_behaves(tmp_path):
    from decodelab.eval.quality import LPIPS

    torch.manual_seed(0)
    backbone = {f"features.{k}": v for k, v in LPIPS().features.state_dict().items()}  # torchvision key layout
    path = tmp_path / "alexnet-random.pth"
    torch.save(backbone, path)
    with pytest.raises(ValueError, match="sha256"):
        load_lpips(path)  # random weights are not torchvision's file
    model = load_lpips(path, check_hash=False)  # heads: the installed lpips package's calibrated file
    assert model.heads[0].weight.abs().sum() > 0 and (model.heads[0].weight >= 0).all()
    pred, target = _pair(4, (2, 3, 64, 64))
    d = lpips_distance(pred, target, model=model)
    assert d.shape == (2,) and torch.isfinite(d).all() and (d > 0).all()
    assert lpips_distance(target, target, model=model).abs().max().item() < 1e-6
    worse = lpips_distance((target + 0.4 * torch.randn_like(target)).clamp(0, 1), target, model=model)
    assert (worse > d).all()  # more noise, larger distance
    with pytest.raises(FileNotFoundError, match="alexnet-owt-7be5be79.pth"):
        load_lpips(tmp_path / "missing.pth")
    torch.save({"classifier.1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not a torchvision AlexNet"):
        load_lpips(tmp_path / "bad.pth", check_hash=False)
