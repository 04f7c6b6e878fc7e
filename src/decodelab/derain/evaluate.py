"""PSNR / SSIM of a derainer on paired data, next to the rainy-input baseline, under a named protocol.

Protocols (both come from :mod:`decodelab.eval.quality`):

- ``rgb``: PSNR and SSIM on the RGB channels of float images in ``[0, 1]`` (SSIM: 11x11 Gaussian
  window, sigma 1.5, population covariance = scikit-image's ``gaussian_weights=True,
  use_sample_covariance=False``), what the MCW-Net authors report;
- ``y``: the same on the luma of MATLAB's ``rgb2ycbcr``, what most later deraining tables report
  (Restormer / DRSformer / NeRD-Rain scripts).

The derained output is clamped to ``[0, 1]``; metrics are averaged over images (mean of per-image
values, as every deraining paper does).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from decodelab.derain.infer import DEFAULT_OVERLAP, DEFAULT_TILE, derain

__all__ = ["PROTOCOLS", "evaluate_derain", "image_metrics"]

PROTOCOLS = ("rgb", "y")


def image_metrics(pred: Tensor, target: Tensor, protocol: str, shave: int = 0) -> dict[str, float]:
    """PSNR and SSIM of one ``[3, H, W]`` image pair under ``protocol`` (``rgb`` or ``y``)."""
    from decodelab.eval.quality import psnr, ssim

    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    y = protocol == "y"
    return {
        "psnr": float(psnr(pred, target, data_range=1.0, y_channel=y, shave=shave)),
        "ssim": float(ssim(pred, target, data_range=1.0, y_channel=y, shave=shave)),
    }


@torch.no_grad()
def evaluate_derain(
    model: nn.Module,
    pairs: Iterable[tuple[str, Tensor, Tensor]],
    *,
    protocols: Iterable[str] = PROTOCOLS,
    self_ensemble: bool = True,
    tile: int | None = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    shave: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Derain every pair and score output and rainy input against the clean image.

    Args:
        model: the derainer.
        pairs: ``(name, rainy, clean)`` triples, float ``[3, H, W]`` in ``[0, 1]``.
        protocols: any of ``rgb`` and ``y``.
        self_ensemble, tile, overlap: passed to :func:`~decodelab.derain.infer.derain`.
        shave: border pixels ignored by the metrics (0 for deraining).
        progress: a progress bar over the images.

    Returns:
        ``{"metrics": {"psnr_rgb": ..., "ssim_rgb": ..., "psnr_rgb_rainy": ..., ...,
        "psnr_gain_rgb": ...}, "per_image": [...], "settings": {...}}``.
    """
    protocols = list(protocols)
    for p in protocols:
        if p not in PROTOCOLS:
            raise ValueError(f"unknown protocol {p!r}; use one of {', '.join(PROTOCOLS)}")
    items: Any = pairs
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(pairs, desc="derain eval")
    rows = []
    t0 = time.perf_counter()
    for name, rainy, clean in items:
        out = derain(model, rainy, tile=tile, overlap=overlap, self_ensemble=self_ensemble)
        row: dict[str, Any] = {"name": name, "size": list(clean.shape[1:])}
        for p in protocols:
            for k, v in image_metrics(out, clean, p, shave).items():
                row[f"{k}_{p}"] = v
            for k, v in image_metrics(rainy.clamp(0, 1), clean, p, shave).items():
                row[f"{k}_{p}_rainy"] = v
        rows.append(row)
    if not rows:
        raise ValueError("no image pairs to evaluate")
    keys = [k for k in rows[0] if k not in ("name", "size")]
    metrics = {k: sum(r[k] for r in rows) / len(rows) for k in keys}
    for p in protocols:
        metrics[f"psnr_gain_{p}"] = metrics[f"psnr_{p}"] - metrics[f"psnr_{p}_rainy"]
    return {
        "metrics": metrics,
        "per_image": rows,
        "settings": {
            "protocols": protocols,
            "protocol_notes": {
                "rgb": "PSNR/SSIM on RGB in [0,1]; SSIM Gaussian 11x11 sigma 1.5, population covariance "
                "(the MCW-Net authors' protocol)",
                "y": "PSNR/SSIM on the Y channel of MATLAB rgb2ycbcr (most later deraining papers)",
            },
            "self_ensemble": self_ensemble,
            "tile": tile,
            "overlap": overlap,
            "shave": shave,
            "output_clamped": True,
            "num_images": len(rows),
            "wall_time_s": round(time.perf_counter() - t0, 2),
        },
    }
