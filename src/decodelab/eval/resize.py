"""How images are brought to a feature network's input size: the largest source of FID disagreement.

Every mode takes uint8-valued images ``[B, 3, H, W]`` (dtype uint8 or float holding 0..255) and
returns float32 ``[B, 3, S, S]`` still on the 0..255 scale; the network then normalises. The modes
and the implementations whose numbers they reproduce:

========================  =====================================================================
``tf1-bilinear``          TensorFlow-1 ``resize_bilinear`` (no half-pixel centres), as the TF
                          Inception graph of the ADM evaluator (LlamaGen's ImageNet numbers),
                          torch-fidelity and clean-fid ``legacy_tensorflow``. Implemented by
                          torch-fidelity's ``interpolate_bilinear_2d_like_tensorflow1x``.
``pytorch-bilinear``      ``F.interpolate(mode="bilinear", align_corners=False)`` without
                          antialiasing, as pytorch-fid (which also normalises with ``2x - 1`` on
                          [0, 1] instead of ``(x - 128) / 128``; the Inception extractor follows).
``pil-bicubic``           PIL bicubic (antialiased) on each channel as a float image (mode
                          ``"F"``, clipped to 0..255, no re-quantisation to uint8), as
                          clean-fid's default ``clean``.
``antialias-bilinear``    ``F.interpolate(mode="bilinear", antialias=True)``, torchmetrics'
                          default since 1.8.
========================  =====================================================================

Images already at the target size pass through unchanged in every mode. Generated images should
be stored losslessly (PNG), or JPEG artefacts add a further disagreement.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

__all__ = ["RESIZE_MODES", "check_resize_mode", "resize_images"]

#: name -> one-line description (shown by ``decodelab eval fid --help``).
RESIZE_MODES: dict[str, str] = {
    "tf1-bilinear": "TF1 bilinear, as the ADM evaluator / torch-fidelity / clean-fid legacy_tensorflow",
    "pytorch-bilinear": "torch bilinear without antialias, as pytorch-fid",
    "pil-bicubic": "PIL bicubic on float channels, as clean-fid 'clean'",
    "antialias-bilinear": "torch bilinear with antialias, as torchmetrics >= 1.8",
}


def check_resize_mode(mode: str) -> str:
    """Return ``mode`` if known, else raise a ``ValueError`` listing the modes."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {mode!r}; choose from {', '.join(RESIZE_MODES)}")
    return mode


def _pil_bicubic(x: Tensor, size: int) -> Tensor:
    out = np.empty((x.shape[0], x.shape[1], size, size), dtype=np.float32)
    arr = x.detach().cpu().float().numpy()
    for b in range(arr.shape[0]):
        for c in range(arr.shape[1]):
            im = Image.fromarray(arr[b, c], mode="F").resize((size, size), resample=Image.BICUBIC)
            out[b, c] = np.clip(np.asarray(im, dtype=np.float32), 0.0, 255.0)  # clean-fid clips overshoot
    return torch.from_numpy(out).to(x.device)


def resize_images(images: Tensor, size: int, mode: str) -> Tensor:
    """Resize ``[B, 3, H, W]`` images holding 0..255 values to ``[B, 3, size, size]`` (float32, 0..255 scale).

    Args:
        images: uint8 or float tensor with values on the 0..255 scale.
        size: target side length.
        mode: one of :data:`RESIZE_MODES`.

    Raises:
        ValueError: for an unknown mode or a malformed batch.
        ImportError: ``tf1-bilinear`` without torch-fidelity installed.
    """
    check_resize_mode(mode)
    if images.ndim != 4:
        raise ValueError(f"expected a batch [B, C, H, W], got shape {tuple(images.shape)}")
    x = images.float()
    if tuple(x.shape[-2:]) == (size, size):
        return x
    if mode == "tf1-bilinear":
        from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

        return interpolate_bilinear_2d_like_tensorflow1x(x, size=(size, size), align_corners=False)
    if mode == "pytorch-bilinear":
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    if mode == "antialias-bilinear":
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return _pil_bicubic(x, size)
