"""Full-reference image quality: PSNR, SSIM (RGB or Y channel, border shave) and LPIPS.

Two protocols matter in restoration papers and both are supported here:

- **RGB** (``y_channel=False``): the metric on every colour channel of float images in
  ``[0, data_range]``, SSIM averaged over channels. MCW-Net and GB-LSR report this.
- **Y** (``y_channel=True``): the luma of MATLAB's ``rgb2ycbcr`` (ITU-R BT.601, studio swing:
  ``Y = 16/255 + (65.481 R + 128.553 G + 24.966 B) / 255``), used by most deraining and SR tables
  (Restormer's and LIIF's evaluation scripts).

SSIM follows Wang et al. (2004) with an 11x11 Gaussian window (sigma 1.5), ``K1=0.01``, ``K2=0.03``
and population (not sample) covariances, averaged over the "valid" region where the window fits.
That is exactly scikit-image's ``structural_similarity(..., gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=...)`` (which filters with reflection and then crops the
5-pixel border, so the border never matters) and MATLAB's ``ssim_index``. It is written here with
``conv2d`` so it runs batched on tensors and on any device; the tests compare it with scikit-image.
Why not torchmetrics' ``structural_similarity_index_measure`` (1.9, Gaussian 11x11, sigma 1.5): it
keeps the reflection-padded border, so on random 64x48 RGB pairs it differs from scikit-image and
MATLAB by up to 1.6e-3, while this function agrees with scikit-image to 2e-16 (measured; the
restoration tables are MATLAB numbers). torchmetrics also has no Y-channel/shave protocol.

LPIPS is the ``lpips`` package's network (:func:`load_lpips`) with torchvision's AlexNet weights
read from a local file.

All functions take float tensors ``[B, C, H, W]`` or ``[C, H, W]`` and return one value per image
(``[B]``; a 0-d tensor for an unbatched input).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from decodelab.eval.assets import resolve_asset
from decodelab.hub import read_torch_checkpoint

__all__ = ["ALEXNET_FILE", "load_lpips", "lpips_distance", "psnr", "psnr_from_mse", "rgb_to_y", "ssim"]

_Y_WEIGHTS = (65.481, 128.553, 24.966)


def _prepare(
    pred: Tensor, target: Tensor, y_channel: bool, shave: int, data_range: float
) -> tuple[Tensor, Tensor, bool]:
    if not isinstance(pred, Tensor) or not isinstance(target, Tensor):
        raise TypeError("pred and target must be torch tensors")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    if pred.ndim not in (3, 4):
        raise ValueError(f"expected [C, H, W] or [B, C, H, W] images, got shape {tuple(pred.shape)}")
    if data_range <= 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    if shave < 0:
        raise ValueError(f"shave must be >= 0, got {shave}")
    single = pred.ndim == 3
    if single:
        pred, target = pred[None], target[None]
    pred, target = pred.double() / data_range, target.double() / data_range
    if y_channel:
        pred, target = rgb_to_y(pred), rgb_to_y(target)
    if shave:
        h, w = pred.shape[-2:]
        if 2 * shave >= min(h, w):
            raise ValueError(f"shave={shave} leaves nothing of a {h}x{w} image")
        pred = pred[..., shave:-shave, shave:-shave]
        target = target[..., shave:-shave, shave:-shave]
    return pred, target, single


def rgb_to_y(x: Tensor) -> Tensor:
    """Luma of MATLAB's ``rgb2ycbcr`` for RGB in ``[0, 1]``: ``[..., 3, H, W] -> [..., 1, H, W]``.

    The result lies in ``[16/255, 235/255]`` (studio swing), as in MATLAB and scikit-image.
    """
    if x.ndim < 3 or x.shape[-3] != 3:
        raise ValueError(f"rgb_to_y needs 3 channels at dim -3, got shape {tuple(x.shape)}")
    r, g, b = x.unbind(-3)
    y = (16.0 + _Y_WEIGHTS[0] * r + _Y_WEIGHTS[1] * g + _Y_WEIGHTS[2] * b) / 255.0
    return y.unsqueeze(-3)


def psnr(pred: Tensor, target: Tensor, data_range: float = 1.0, y_channel: bool = False, shave: int = 0) -> Tensor:
    """Peak signal-to-noise ratio in dB per image, ``10 log10(1 / MSE)`` on the ``[0, 1]`` scale.

    Args:
        pred, target: images in ``[0, data_range]``, same shape.
        data_range: the value of a full-scale pixel (1.0 for float images, 255 for uint8 values).
        y_channel: compare the MATLAB-``rgb2ycbcr`` luma instead of RGB (needs 3 channels).
        shave: pixels removed from every border first (SR convention: the scale; LIIF's DIV2K: scale + 6).

    Returns:
        ``[B]`` (or a 0-d tensor for one ``[C, H, W]`` image), float64; ``inf`` for identical images.
    """
    p, t, single = _prepare(pred, target, y_channel, shave, data_range)
    mse = (p - t).pow(2).flatten(1).mean(1)
    out = 10.0 * torch.log10(1.0 / mse)
    return out[0] if single else out


def _gaussian_window(sigma: float, radius: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    x = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(
    pred: Tensor,
    target: Tensor,
    data_range: float = 1.0,
    y_channel: bool = False,
    shave: int = 0,
    sigma: float = 1.5,
) -> Tensor:
    """Structural similarity per image (Gaussian window, valid region, mean over channels).

    Args:
        pred, target: images in ``[0, data_range]``, same shape, at least 11x11 after shaving.
        data_range: the value of a full-scale pixel.
        y_channel: compare the MATLAB-``rgb2ycbcr`` luma instead of RGB.
        shave: pixels removed from every border first.
        sigma: Gaussian window width; the window radius is ``int(3.5 sigma + 0.5)`` (5 for 1.5) as
            in scikit-image's default ``truncate=3.5``.

    Returns:
        ``[B]`` float64 (0-d for one image).
    """
    p, t, single = _prepare(pred, target, y_channel, shave, data_range)
    radius = int(3.5 * sigma + 0.5)
    if min(p.shape[-2:]) < 2 * radius + 1:
        raise ValueError(f"images of {tuple(p.shape[-2:])} are smaller than the {2 * radius + 1}px SSIM window")
    b, c, h, w = p.shape
    win = _gaussian_window(sigma, radius, p.dtype, p.device)[None, None]  # [1, 1, k, k]

    def filt(x: Tensor) -> Tensor:  # valid Gaussian filter per channel: [B*C, 1, H', W']
        return F.conv2d(x.reshape(b * c, 1, h, w), win)

    mu_p, mu_t = filt(p), filt(t)
    var_p = filt(p * p) - mu_p**2
    var_t = filt(t * t) - mu_t**2
    cov = filt(p * t) - mu_p * mu_t
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_t**2 + c1) * (var_p + var_t + c2))
    out = s.reshape(b, c, -1).mean(-1).mean(-1)
    return out[0] if single else out


# ----------------------------------------------------------------------------------------- LPIPS
#: torchvision's AlexNet ImageNet weights, the backbone LPIPS-Alex was calibrated with.
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"


def _lpips_package() -> Any:
    try:
        import lpips
    except ImportError as err:
        raise ImportError(f"LPIPS needs the lpips package: pip install 'decodelab[eval]' ({err})") from None
    return lpips


def load_lpips(backbone_weights: str | Path | None = None, heads_weights: str | Path | None = None,
               check_hash: bool = True) -> torch.nn.Module:  # fmt: skip
    """LPIPS-Alex v0.1 (Zhang et al. 2018) from the ``lpips`` package, every weight read from local files.

    The ``lpips`` wheel ships only the calibrated linear heads; its AlexNet backbone normally comes
    from torchvision's download. Here the package builds the network with a random backbone
    (``pnet_rand=True``: nothing is downloaded) and the AlexNet ``features`` weights are loaded from
    the file the user gives. The heads are read here too (``weights_only``, all five keys required):
    the package itself loads them with ``strict=False``, which would accept a wrong file silently.

    Args:
        backbone_weights: torchvision's ``alexnet-owt-7be5be79.pth`` (a full AlexNet state dict, or its
            ``features.*`` part); ``None`` looks in the weights cache. Its sha256 starts with the 8 hex
            digits in the name, checked unless ``check_hash=False``.
        heads_weights: the calibrated heads ``alex.pth`` (v0.1); default: the installed ``lpips`` package's.
        check_hash: verify the backbone file's sha256 prefix.

    Returns:
        An ``lpips.LPIPS`` module in eval mode; call it on images in ``[-1, 1]`` (see :func:`lpips_distance`).

    Raises:
        FileNotFoundError: when a weights file is missing (names where to get it).
        ValueError: for a hash or key mismatch.
    """
    lpips = _lpips_package()
    path = resolve_asset("alexnet", backbone_weights, check_hash=check_hash)
    heads_path = (Path(heads_weights).expanduser() if heads_weights is not None
                  else Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth")  # fmt: skip
    if not heads_path.is_file():
        raise FileNotFoundError(
            f"LPIPS heads file not found at {heads_path}: pass heads_weights=PATH to the lpips package's "
            "weights/v0.1/alex.pth (pip install lpips)"
        )
    with warnings.catch_warnings():  # lpips asks torchvision for alexnet(pretrained=False): a deprecation notice
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(pretrained=False, net="alex", version="0.1", pnet_rand=True, verbose=False)
    state = read_torch_checkpoint(path)
    feats = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
    own = model.net.state_dict()  # slice{n}.{torchvision index}.{weight|bias}
    expected = {k.split(".", 1)[1]: k for k in own}
    if feats.keys() != expected.keys() or any(feats[i].shape != own[k].shape for i, k in expected.items()):
        missing, extra = sorted(expected.keys() - feats.keys()), sorted(feats.keys() - expected.keys())
        raise ValueError(
            f"{path} is not a torchvision AlexNet state dict: features.* keys missing {missing}, unexpected {extra} "
            "or shapes differ; pass torchvision's alexnet-owt-7be5be79.pth"
        )
    model.net.load_state_dict({k: feats[i] for i, k in expected.items()}, strict=True)
    heads = read_torch_checkpoint(heads_path)
    head_keys = [f"lin{k}.model.1.weight" for k in range(len(model.lins))]
    if sorted(heads) != sorted(head_keys):
        raise ValueError(f"{heads_path} is not an LPIPS v0.1 alex heads file: keys {sorted(heads)[:8]}")
    try:
        model.load_state_dict(heads, strict=False)  # the heads only: the backbone was loaded above
    except RuntimeError as e:
        raise ValueError(f"{heads_path} is not an LPIPS v0.1 alex heads file: {e}") from e
    return model.eval().requires_grad_(False)


@torch.no_grad()
def lpips_distance(pred: Tensor, target: Tensor, model: torch.nn.Module | None = None,
                   weights: str | Path | None = None) -> Tensor:  # fmt: skip
    """LPIPS-Alex distance per image for RGB images in ``[0, 1]`` (lower is more similar).

    Pass a model from :func:`load_lpips` (reuse it across calls) or ``weights`` (the AlexNet file).
    """
    if model is None:
        if weights is None:
            raise ValueError("lpips_distance needs model=load_lpips(PATH) or weights=PATH to the AlexNet backbone")
        model = load_lpips(weights)
    if pred.shape != target.shape or pred.ndim not in (3, 4) or pred.shape[-3] != 3:
        raise ValueError(
            f"expected matching RGB images [B, 3, H, W], got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    single = pred.ndim == 3
    p, t = (pred[None], target[None]) if single else (pred, target)
    device = next(model.parameters()).device
    d = model(p.float().to(device) * 2 - 1, t.float().to(device) * 2 - 1).flatten()  # [B, 1, 1, 1] -> [B]
    return d[0] if single else d


def psnr_from_mse(mse: float) -> float:
    """PSNR in dB of a mean squared error on the ``[0, 1]`` scale."""
    return math.inf if mse <= 0 else 10.0 * math.log10(1.0 / mse)
