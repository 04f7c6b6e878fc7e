"""LTE: local texture estimator (Lee & Jin, "Local Texture Estimator for Implicit Representation
Function", CVPR 2022).

Facts from github.com/jaewon-lee-b/lte (``models/lte.py``, configs), code written here. On the
encoder's feature map, an **amplitude** estimator ``coef = Conv3x3(C -> 256)`` and a **frequency**
estimator ``freq = Conv3x3(C -> 256)`` (read as 128 two-dimensional frequencies: channels
``(2m, 2m + 1)`` are the ``(y, x)`` components of frequency ``m`` in ``lte.py``; the ``lte-fast``
variant, ``ltep.py``, reads channels ``(m, m + 128)`` instead), and a **phase** estimator
``phase = Linear(2 -> 128, no bias)`` of the relative cell ``cell * (h, w)``. For a query with
relative coordinate ``r`` to its latent cell: ``a_m = f_m . r + phase_m``, the sinusoidal encoding
``[cos(pi a), sin(pi a)]`` (256) is multiplied by the amplitudes, and an MLP ``[256] * 3`` gives RGB.
The 4-corner area-weighted local ensemble is as in LIIF, and a bilinear (border-padded) upsampling
of the normalised input is added as a skip. Data are normalised with ``(x - 0.5) / 0.5``. (For native
reconstruction the skip is switched off: at the input's own pixel centres it *is* the target.)

State-dict keys: ``encoder.*``, ``coef``, ``freq``, ``phase``, ``imnet.layers.{0,2,4,6}``. ``lte-fast``
is this model with ``freq_layout="halves"`` and its MLP written as 1x1 convolutions (``layers.{0,2,4,6}``,
``hidden_dim`` wide), which the importer reshapes into ``imnet``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from decodelab.config import register_to_config
from decodelab.registry import register_architecture, register_model
from decodelab.vision.lsr.base import ContinuousImageModel, LatentState, gather_cells, lookup_cells, sample_image
from decodelab.vision.lsr.encoders import build_encoder, encode_to_grid, pad_for_encoder
from decodelab.vision.lsr.liif import EDSR_B, EDSR_TEST, MLP, PATCH_SMALL

__all__ = ["FREQ_LAYOUTS", "LTE"]

#: How the frequency estimator's channels pair into (y, x) components: ``interleaved`` = channels
#: ``(2m, 2m + 1)`` (``lte.py``), ``halves`` = channels ``(m, m + K)`` (``ltep.py``, ``lte-fast``).
FREQ_LAYOUTS = ("interleaved", "halves")


@register_architecture
class LTE(ContinuousImageModel):
    """LTE with an EDSR-baseline / RDN / patch encoder.

    Args:
        encoder: encoder spec (default EDSR-baseline).
        hidden_dim: amplitude/frequency channels (256; half as many frequencies).
        hidden: MLP hidden widths (``[256] * 3``).
        local_ensemble: the 4-corner ensemble (always on upstream).
        skip: add the bilinear upsampling of the input (upstream: on).
        freq_layout: one of :data:`FREQ_LAYOUTS` (``interleaved`` for ``lte``, ``halves`` for ``lte-fast``).
        data_norm: ``(sub, div)`` (LTE: ``(0.5, 0.5)``).
    """

    uses_cells = True

    @register_to_config
    def __init__(
        self,
        encoder: dict[str, Any] | None = None,
        hidden_dim: int = 256,
        hidden: Sequence[int] = (256, 256, 256),
        local_ensemble: bool = True,
        skip: bool = True,
        freq_layout: str = "interleaved",
        data_norm: tuple[float, float] | list[float] = (0.5, 0.5),
    ) -> None:
        super().__init__(data_norm)
        if hidden_dim % 2:
            raise ValueError(f"hidden_dim must be even (pairs of frequency components), got {hidden_dim}")
        if freq_layout not in FREQ_LAYOUTS:
            raise ValueError(f"unknown freq_layout {freq_layout!r}; choose one of {', '.join(FREQ_LAYOUTS)}")
        self.encoder = build_encoder(dict(encoder or EDSR_B))
        c = self.encoder.out_dim
        self.coef = nn.Conv2d(c, hidden_dim, 3, padding=1)
        self.freq = nn.Conv2d(c, hidden_dim, 3, padding=1)
        self.phase = nn.Linear(2, hidden_dim // 2, bias=False)
        self.imnet = MLP(hidden_dim, 3, list(hidden))
        self.local_ensemble, self.skip, self.freq_layout = local_ensemble, skip, freq_layout

    def _encode(self, x: Tensor) -> LatentState:
        feat, geo = encode_to_grid(self.encoder, x)  # [B, C, h, w]
        tensors = {
            "coef": self.coef(feat).flatten(2).transpose(1, 2).contiguous(),  # [B, hw, 256]
            "freq": self.freq(feat).flatten(2).transpose(1, 2).contiguous(),  # [B, hw, 256]
        }
        extras = {}
        if self.skip:  # the skip samples the canvas, i.e. the input padded like the encoder's input
            extras["image"] = pad_for_encoder(self.encoder, x)[0]
        return LatentState(tensors, geo, x.shape[0], extras)

    def _query(self, state: LatentState, coords: Tensor, cells: Tensor | None) -> Tensor:
        grid = state.geometry.grid
        rel_cell = cells * coords.new_tensor(grid)  # [B, Q, 2]
        phase = self.phase(rel_cell)  # [B, Q, K]
        out = 0
        for corner in lookup_cells(coords, grid, self.local_ensemble):
            coef = gather_cells(state.tensors["coef"], corner.index)  # [B, Q, 2K]
            freq = gather_cells(state.tensors["freq"], corner.index)
            if self.freq_layout == "interleaved":
                freq = freq.view(*freq.shape[:2], -1, 2)  # [B, Q, K, 2]: (y, x) = channels (2m, 2m + 1)
            else:
                freq = freq.view(*freq.shape[:2], 2, -1).transpose(2, 3)  # (y, x) = channels (m, m + K)
            a = (freq * corner.rel.unsqueeze(2)).sum(-1) + phase  # [B, Q, K]
            basis = torch.cat([torch.cos(math.pi * a), torch.sin(math.pi * a)], dim=-1)  # [B, Q, 2K]
            pred = self.imnet(coef * basis)  # [B, Q, 3]
            out = out + (pred if corner.weight is None else pred * corner.weight.unsqueeze(-1))
        if self.skip:
            out = out + sample_image(state.extras["image"], coords, "bilinear")  # [B, Q, 3]
        return out


def _reg(name: str, doc: str):
    def deco(fn):
        fn.__doc__ = doc
        return register_model(name, kind="lsr", family="lte")(fn)

    return deco


@_reg("lte_edsr_baseline", "LTE with the EDSR-baseline encoder: the paper's EDSR-baseline-LTE.")
def lte_edsr_baseline(**kwargs: Any) -> LTE:
    return LTE(**{"encoder": dict(EDSR_B), **kwargs})


@_reg("lte_rdn", "LTE with the RDN encoder (config B): the paper's RDN-LTE.")
def lte_rdn(**kwargs: Any) -> LTE:
    from decodelab.vision.lsr.encoders import RDN_B

    return LTE(**{"encoder": dict(RDN_B), **kwargs})


@_reg("lte_small", "LTE for CPU training: small RDN encoder (the SR matched-budget encoder).")
def lte_small(**kwargs: Any) -> LTE:
    from decodelab.vision.lsr.encoders import RDN_SMALL

    return LTE(**{"encoder": dict(RDN_SMALL), **kwargs})


@_reg("lte_native_small", "Amortized LTE on GB-LSR's patch encoder (P32, D64), no skip: the native matched track.")
def lte_native_small(**kwargs: Any) -> LTE:
    # In native reconstruction the bilinear skip would pass the target straight through (sampling the
    # input at its own pixel centres is the identity), so the amortized native LTE has it off.
    return LTE(**{"encoder": dict(PATCH_SMALL), "skip": False, **kwargs})


@_reg("test_lte", "Tiny random LTE for tests.")
def test_lte(**kwargs: Any) -> LTE:
    return LTE(**{"encoder": dict(EDSR_TEST), "hidden_dim": 16, "hidden": [16], **kwargs})
