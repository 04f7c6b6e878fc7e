"""Tiled rendering: any output size from any input size within a fixed memory budget.

:meth:`~decodelab.vision.lsr.base.ContinuousImageModel.render` bounds the memory of the *query*
pass, but the encoder and the latent state still grow with the input (GB-LSR's SR state holds
``3 * 16^2`` coefficients per LR pixel: 0.9 GB for a 540x540 input). :func:`render_tiled` cuts the
input into ``tile x tile`` pieces, encodes each piece with a ``margin`` of context on every side
(clamped at the image border), and renders only the output pixels whose centres fall inside the
piece, so at most one piece's activations and state are alive at a time.

Exactness: every encoder here with stride 1 (EDSR-baseline, RDN) is a stack of convolutions, so a
feature depends only on inputs within its receptive radius; queries additionally read at most two
neighbouring cells (local ensemble, 3x3 unfolding) and one pixel of bilinear skip. With
``margin >= receptive_radius(model) + 3`` every value used by a query is computed from the same
pixels as in an untiled pass, so the output equals :meth:`render`'s up to floating-point rounding
(tested). Patch encoders (GB-LSR native) use GroupNorm, whose statistics span the whole image, so
they are never tiled.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from decodelab.vision.lsr.base import DEFAULT_CHUNK, ContinuousImageModel

__all__ = ["receptive_radius", "render_tiled"]


def receptive_radius(model: nn.Module) -> int:
    """An upper bound of the receptive radius (pixels) of the model's convolutions, in sequence."""
    r = 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            r += (m.kernel_size[0] // 2) * m.dilation[0]
    return r


def _rows(lo: int, hi: int, scale: float, n_out: int) -> tuple[int, int]:
    """Output pixels whose centres lie in input pixels ``[lo, hi)``: centre ``(i + .5) / scale``."""
    a = max(0, math.ceil(lo * scale - 0.5))
    b = n_out if hi is None else min(n_out, math.ceil(hi * scale - 0.5))
    return a, b


@torch.no_grad()
def render_tiled(
    model: ContinuousImageModel,
    image: Tensor,
    out_size: tuple[int, int],
    tile: int = 256,
    margin: int | None = None,
    chunk: int | None = DEFAULT_CHUNK,
    clamp: bool = True,
) -> Tensor:
    """Render ``image`` (``[1, 3, H, W]`` or ``[3, H, W]`` in ``[0, 1]``) at ``out_size`` tile by tile.

    Args:
        model: a continuous model whose encoder has stride 1 (others are rendered whole).
        out_size: ``(H', W')``.
        tile: input tile side.
        margin: context pixels around each tile (default ``receptive_radius(model) + 3``).
        chunk: queries per pass.
        clamp: clamp to ``[0, 1]``.

    Returns:
        ``[1, 3, H', W']``.
    """
    x = image.unsqueeze(0) if image.dim() == 3 else image
    if x.shape[0] != 1:
        raise ValueError(f"render_tiled renders one image at a time, got a batch of {x.shape[0]}")
    H, W = x.shape[-2:]
    Ho, Wo = int(out_size[0]), int(out_size[1])
    if Ho < 1 or Wo < 1:
        raise ValueError(f"out_size must be positive, got {out_size}")
    if tile < 1:
        raise ValueError(f"tile must be >= 1, got {tile}")
    if getattr(model.encoder, "stride", 1) != 1 or (H <= tile and W <= tile):
        return model.render(x, (Ho, Wo), chunk=chunk, clamp=clamp)
    m = receptive_radius(model) + 3 if margin is None else int(margin)
    sy, sx = Ho / H, Wo / W
    out = torch.empty(1, 3, Ho, Wo, device=x.device)
    for y0 in range(0, H, tile):
        y1 = min(H, y0 + tile)
        oy0, oy1 = _rows(y0, y1 if y1 < H else None, sy, Ho)
        if oy1 <= oy0:
            continue
        cy0, cy1 = max(0, y0 - m), min(H, y1 + m)
        for x0 in range(0, W, tile):
            x1 = min(W, x0 + tile)
            ox0, ox1 = _rows(x0, x1 if x1 < W else None, sx, Wo)
            if ox1 <= ox0:
                continue
            cx0, cx1 = max(0, x0 - m), min(W, x1 + m)
            state = model.encode(x[..., cy0:cy1, cx0:cx1])
            ch, cw = cy1 - cy0, cx1 - cx0
            # output pixel centres in input-pixel units, then in the crop's [-1, 1] coordinates
            ys = ((torch.arange(oy0, oy1, dtype=torch.float64) + 0.5) / sy - cy0) / ch * 2 - 1
            xs = ((torch.arange(ox0, ox1, dtype=torch.float64) + 0.5) / sx - cx0) / cw * 2 - 1
            coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(-1, 2).float()
            cell = torch.tensor([2.0 / Ho * H / ch, 2.0 / Wo * W / cw]).expand_as(coords)
            rgb = model.query(state, coords.to(x.device), cell.to(x.device), chunk=chunk)  # [1, q, 3]
            out[0, :, oy0:oy1, ox0:ox1] = rgb[0].t().reshape(3, oy1 - oy0, ox1 - ox0)
            del state
    return out.clamp(0, 1) if clamp else out
