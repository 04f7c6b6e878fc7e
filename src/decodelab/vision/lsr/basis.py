"""The truncated separable Fourier basis of GB-LSR, its soft order mask and bandwidth maps.

Facts from the authors' code (github.com/KempnerInstitute/gblsr, ``src/gblsr/models/basis.py`` and
``src/gblsr/asr/decoder.py``), re-written here:

- 1-D basis on a local coordinate ``u`` (``[-1, 1]`` across one patch / one LR cell) with a
  bandwidth ``s``: ``phi_0 = 1``, then ``cos(j pi u s)``, ``sin(j pi u s)`` for ``j = 1, 2, ...``,
  cut at ``p_max`` terms. For ``p_max = 16``: the constant, cos/sin pairs ``j = 1..7`` and a last,
  unpaired ``cos(8 pi u s)``. The ``cosine`` family is ``cos(k pi s (u + 1) / 2)``, ``k < p_max``.
- 2-D value of channel ``c``: ``sum_ij coef[c, i, j] * w[i, j] * phi_i(u_y) * phi_j(u_x)`` where the
  first basis index runs along rows (y) and the second along columns (x).
- Soft order mask: ``w[i, j] = sigmoid(sharpness * (p_soft - max(i, j)))`` (sharpness 4).
- Bandwidth maps: log-space sigmoid ``exp(log lo + (log hi - log lo) sigmoid(r))`` (``r = 0`` gives
  the geometric midpoint ``sqrt(lo hi)``, 0.7071 for ``(0.25, 2)``), linear sigmoid
  ``lo + (hi - lo) sigmoid(r)``, and ``softplus`` for the SR extension.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "BASIS_FAMILIES",
    "basis_frequencies",
    "fourier_basis_1d",
    "linear_sigmoid",
    "logspace_sigmoid",
    "soft_order_mask",
    "softplus_inverse",
]

BASIS_FAMILIES = ("fourier", "cosine")


def basis_frequencies(p_max: int) -> list[tuple[str, int]]:
    """The documented 1-D mode list: ``[("const", 0), ("cos", 1), ("sin", 1), ("cos", 2), ...]``.

    Args:
        p_max: number of modes per axis.

    Returns:
        ``p_max`` pairs ``(kind, j)``; mode ``k`` evaluates ``kind(j * pi * u * s)`` (``const`` = 1).
    """
    if p_max < 1:
        raise ValueError(f"p_max must be >= 1, got {p_max}")
    modes: list[tuple[str, int]] = [("const", 0)]
    j = 1
    while len(modes) < p_max:
        modes.append(("cos", j))
        if len(modes) < p_max:
            modes.append(("sin", j))
        j += 1
    return modes


def fourier_basis_1d(u: Tensor, p_max: int, s: Tensor | float, family: str = "fourier") -> Tensor:
    """Evaluate the 1-D basis at local coordinates ``u`` with bandwidth ``s``.

    Args:
        u: local coordinates, any shape ``[...]`` (``[-1, 1]`` spans one patch or LR cell).
        p_max: modes per axis.
        s: bandwidth, a scalar or a tensor broadcastable to ``u``.
        family: ``fourier`` (the paper's) or ``cosine``.

    Returns:
        ``[..., p_max]`` basis values, mode order as in :func:`basis_frequencies`.
    """
    if family == "fourier":
        j = torch.tensor([j for _, j in basis_frequencies(p_max)], dtype=u.dtype, device=u.device)  # [p]
        is_sin = torch.tensor([k == "sin" for k, _ in basis_frequencies(p_max)], device=u.device)  # [p]
        ang = (math.pi * u * s).unsqueeze(-1) * j  # [..., p]
        # sin(x) = cos(x - pi/2); written with where() to keep cos exact for the cosine modes.
        return torch.where(is_sin, torch.sin(ang), torch.cos(ang))
    if family == "cosine":
        k = torch.arange(p_max, dtype=u.dtype, device=u.device)  # [p]
        return torch.cos((math.pi * s * (u + 1.0) * 0.5).unsqueeze(-1) * k)
    raise ValueError(f"unknown basis family {family!r}; use one of {', '.join(BASIS_FAMILIES)}")


def soft_order_mask(p_soft: Tensor, p_max: int, sharpness: float = 4.0) -> Tensor:
    """Per-mode weights ``sigmoid(sharpness * (p_soft - max(i, j)))``.

    Args:
        p_soft: ``[...]`` soft effective order per patch.
        p_max: modes per axis.
        sharpness: slope of the cut-off.

    Returns:
        ``[..., p_max, p_max]`` weights.
    """
    k = torch.arange(p_max, dtype=p_soft.dtype, device=p_soft.device)
    kmax = torch.maximum(k[:, None], k[None, :])  # [p, p]
    return torch.sigmoid(sharpness * (p_soft[..., None, None] - kmax))


def logspace_sigmoid(raw: Tensor, lo: float, hi: float) -> Tensor:
    """``exp(log lo + (log hi - log lo) * sigmoid(raw))``: geometric interpolation of ``[lo, hi]``."""
    return torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * torch.sigmoid(raw))


def linear_sigmoid(raw: Tensor, lo: float, hi: float) -> Tensor:
    """``lo + (hi - lo) * sigmoid(raw)``."""
    return lo + (hi - lo) * torch.sigmoid(raw)


def softplus_inverse(y: float) -> float:
    """``x`` with ``softplus(x) = y`` (``log(expm1(y))``), for an exact initial bandwidth.

    Raises:
        ValueError: for ``y <= 0``.
    """
    if y <= 0:
        raise ValueError(f"softplus only reaches positive values, got {y}")
    return math.log(math.expm1(y))
