"""PSNR / SSIM / Y-channel / LPIPS against scikit-image and closed forms."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
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


@pytest.fixture(scope="module")
def alexnet_file(tmp_path_factory: pytest.TempPathFactory):
    """torchvision's AlexNet at random init, saved as a full state dict (the layout of alexnet-owt-7be5be79.pth)."""
    import torchvision

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("alexnet") / "alexnet-random.pth"
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), path)
    return path


def _lpips_first_principles(a: torch.Tensor, b: torch.Tensor, state: dict, heads: dict) -> torch.Tensor:
    """LPIPS-Alex v0.1 written out from the paper: decodelab's former implementation, kept as the reference.

    Inputs in [-1, 1] are shifted/scaled per channel, AlexNet's five ReLU outputs (torchvision
    ``features`` indices 1, 4, 7, 9, 11) are unit-normalised over channels, their squared differences
    weighted by the 1x1 heads, averaged over space and summed over layers.
    """
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    convs = {0: (4, 2), 3: (1, 2), 6: (1, 1), 8: (1, 1), 10: (1, 1)}  # index -> (stride, padding)

    def taps(x):
        x, out = (x - shift) / scale, []
        for i in range(12):
            if i in convs:
                x = F.conv2d(x, state[f"features.{i}.weight"], state[f"features.{i}.bias"], *convs[i])
            elif i in (2, 5):
                x = F.max_pool2d(x, 3, 2)
            else:
                x = F.relu(x)
                out.append(x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    total = torch.zeros(a.shape[0])
    for k, (fa, fb) in enumerate(zip(taps(a), taps(b))):
        total += F.conv2d((fa - fb).pow(2), heads[f"lin{k}.model.1.weight"]).mean(dim=(1, 2, 3))
    return total


def test_lpips_package_equals_first_principles_on_random_alexnet(alexnet_file):
    import lpips

    model = load_lpips(alexnet_file, check_hash=False)  # heads: the installed lpips package's calibrated file
    assert isinstance(model, lpips.LPIPS)
    state = torch.load(alexnet_file, weights_only=True)
    heads_file = Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth"
    heads = torch.load(heads_file, map_location="cpu", weights_only=True)
    assert all((w >= 0).all() and w.abs().sum() > 0 for w in heads.values())
    pred, target = _pair(4, (2, 3, 64, 64))
    d = lpips_distance(pred, target, model=model)
    ref = _lpips_first_principles(pred * 2 - 1, target * 2 - 1, state, heads)
    assert d.shape == (2,) and (d > 0).all()
    torch.testing.assert_close(d, ref, rtol=1e-5, atol=1e-7)
    one = lpips_distance(pred[1], target[1], model=model)
    assert one.ndim == 0 and one.item() == pytest.approx(d[1].item(), rel=1e-5)


def test_lpips_behaves_and_refuses_bad_files(alexnet_file, tmp_path):
    with pytest.raises(ValueError, match="sha256"):
        load_lpips(alexnet_file)  # random weights are not torchvision's file
    model = load_lpips(alexnet_file, check_hash=False)
    pred, target = _pair(5, (2, 3, 64, 64))
    d = lpips_distance(pred, target, model=model)
    assert lpips_distance(target, target, model=model).abs().max().item() < 1e-6
    worse = lpips_distance((target + 0.4 * torch.randn_like(target)).clamp(0, 1), target, model=model)
    assert (worse > d).all()  # more noise, larger distance
    # the features part alone is enough
    features_only = {k: v for k, v in torch.load(alexnet_file, weights_only=True).items() if k.startswith("features.")}
    torch.save(features_only, tmp_path / "features.pth")
    torch.testing.assert_close(lpips_distance(pred, target, model=load_lpips(tmp_path / "features.pth",
                                                                             check_hash=False)), d)  # fmt: skip
    with pytest.raises(FileNotFoundError, match="alexnet-owt-7be5be79.pth"):
        load_lpips(tmp_path / "missing.pth")
    torch.save({"classifier.1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not a torchvision AlexNet"):
        load_lpips(tmp_path / "bad.pth", check_hash=False)
    torch.save({"lin0.model.1.weight": torch.zeros(1, 64, 1, 1)}, tmp_path / "heads.pth")
    with pytest.raises(ValueError, match="heads file"):
        load_lpips(alexnet_file, heads_weights=tmp_path / "heads.pth", check_hash=False)
    with pytest.raises(ValueError, match="model=load_lpips"):
        lpips_distance(pred, target)
