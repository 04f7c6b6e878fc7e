"""Pixel-centre coordinate grids in ``[-1, 1]`` (LIIF's convention), shared by the SR datasets and
the continuous image models (``decodelab.vision.lsr``): ``coords[..., 0]`` is **y** (rows) and
``coords[..., 1]`` is **x**, cell sizes are ``(2 / H, 2 / W)``."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["make_cell", "make_coord"]


def make_coord(shape: tuple[int, int], flatten: bool = True, device=None, dtype=torch.float32) -> Tensor:
    """Pixel-centre coordinates of an ``H x W`` grid in ``[-1, 1]``, ``(y, x)`` order.

    Returns:
        ``[H * W, 2]`` (row-major) or ``[H, W, 2]`` when ``flatten=False``.
    """
    h, w = int(shape[0]), int(shape[1])
    ys = -1 + (2 * torch.arange(h, device=device, dtype=torch.float64) + 1) / h
    xs = -1 + (2 * torch.arange(w, device=device, dtype=torch.float64) + 1) / w
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).to(dtype)  # [H, W, 2]
    return grid.reshape(-1, 2) if flatten else grid


def make_cell(shape: tuple[int, int], n: int, device=None, dtype=torch.float32) -> Tensor:
    """``[n, 2]`` cell sizes ``(2 / H, 2 / W)`` of an ``H x W`` output grid."""
    cell = torch.tensor([2.0 / shape[0], 2.0 / shape[1]], device=device, dtype=dtype)
    return cell.expand(n, 2).clone()
