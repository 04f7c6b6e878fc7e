"""LIIF: local implicit image functions (Chen, Liu, Wang, CVPR 2021).

Facts from github.com/yinboc/liif (``models/liif.py``, ``models/mlp.py``, configs), code written
here. An encoder (EDSR-baseline or RDN without upsampler) gives a latent grid; a query takes the
nearest latent cell, LIIF's **feature unfolding** (the 3x3 neighbourhood of the cell, zero padded,
concatenated in ``F.unfold`` order: channel-major, then the 9 offsets row-major), the relative
coordinate ``(q - centre) * (h, w)`` and, with **cell decoding**, the cell size ``cell * (h, w)``;
an MLP (``imnet``: ``[256] * 4``, ReLU) maps the ``9 C + 4`` inputs to RGB. The **local ensemble**
averages the predictions of the 4 surrounding cells, each weighted by the area of the diagonally
opposite rectangle (:func:`decodelab.vision.lsr.base.lookup_cells`). Data are normalised with
``(x - 0.5) / 0.5`` on input and output, as in LIIF's configs.

The 3x3 unfolding is done per query (9 gathers) instead of materialising the ``9 C``-channel map,
so memory does not grow by 9x with the image size. State-dict keys: ``encoder.*``,
``imnet.layers.{0,2,4,6,8}.{weight,bias}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from decodelab.config import register_to_config
from decodelab.registry import register_architecture, register_model
from decodelab.vision.lsr.base import ContinuousImageModel, LatentState, gather_cells, lookup_cells
from decodelab.vision.lsr.encoders import build_encoder, encode_to_grid

__all__ = ["EDSR_B", "EDSR_TEST", "LIIF", "MLP", "PATCH_SMALL", "gather_unfolded"]

EDSR_B = {"name": "edsr_baseline", "n_resblocks": 16, "n_feats": 64}
EDSR_TEST = {"name": "edsr_baseline", "n_resblocks": 1, "n_feats": 8}
#: GB-LSR's patch encoder at the CPU size: the shared encoder of the native matched-budget track.
PATCH_SMALL = {"name": "patch", "patch_size": 32, "dim": 64}


class MLP(nn.Module):
    """``Linear -> ReLU`` per hidden width, then a ``Linear`` to ``out_dim`` (keys ``layers.{2k}``)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        last = in_dim
        for width in hidden:
            layers += [nn.Linear(last, width), nn.ReLU()]
            last = width
        layers.append(nn.Linear(last, out_dim))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def padded_cells(feat: Tensor) -> Tensor:
    """``[B, C, h, w]`` -> zero-padded channel-last cells ``[B, (h + 2) * (w + 2), C]`` for :func:`gather_unfolded`."""
    return F.pad(feat, (1, 1, 1, 1)).flatten(2).transpose(1, 2).contiguous()


def gather_unfolded(cells: Tensor, index: Tensor, grid: tuple[int, int]) -> Tensor:
    """LIIF's 3x3 feature unfolding at the cells ``index``, without unfolding the whole map.

    Args:
        cells: ``[B, (h + 2) * (w + 2), C]`` from :func:`padded_cells`.
        index: ``[B, Q]`` flat indices into the unpadded ``h x w`` grid.
        grid: ``(h, w)``.

    Returns:
        ``[B, Q, 9 C]`` equal to ``F.unfold(feat, 3, padding=1)`` at those cells (channel-major).
    """
    h, w = grid
    iy, ix = index // w, index % w
    parts = []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            parts.append(gather_cells(cells, (iy + 1 + dy) * (w + 2) + (ix + 1 + dx)))  # [B, Q, C]
    return torch.stack(parts, dim=-1).flatten(2)  # [B, Q, C, 9] -> [B, Q, 9 C]


@register_architecture
class LIIF(ContinuousImageModel):
    """LIIF with an EDSR-baseline / RDN / patch encoder.

    Args:
        encoder: encoder spec (default EDSR-baseline, 16 blocks x 64).
        hidden: MLP hidden widths (``[256] * 4``).
        local_ensemble: 4-corner area-weighted ensemble.
        feat_unfold: 3x3 feature unfolding.
        cell_decode: feed the cell size.
        data_norm: ``(sub, div)`` normalisation of inputs and outputs (LIIF: ``(0.5, 0.5)``).
    """

    @register_to_config
    def __init__(
        self,
        encoder: dict[str, Any] | None = None,
        hidden: Sequence[int] = (256, 256, 256, 256),
        local_ensemble: bool = True,
        feat_unfold: bool = True,
        cell_decode: bool = True,
        data_norm: tuple[float, float] | list[float] = (0.5, 0.5),
    ) -> None:
        super().__init__(data_norm)
        self.encoder = build_encoder(dict(encoder or EDSR_B))
        c = self.encoder.out_dim
        in_dim = c * (9 if feat_unfold else 1) + 2 + (2 if cell_decode else 0)
        self.imnet = MLP(in_dim, 3, list(hidden))
        self.local_ensemble, self.feat_unfold, self.cell_decode = local_ensemble, feat_unfold, cell_decode
        self.uses_cells = cell_decode

    def _encode(self, x: Tensor) -> LatentState:
        feat, geo = encode_to_grid(self.encoder, x)  # [B, C, h, w]
        cells = padded_cells(feat) if self.feat_unfold else feat.flatten(2).transpose(1, 2).contiguous()
        return LatentState({"feat": cells}, geo, x.shape[0])

    def _query(self, state: LatentState, coords: Tensor, cells: Tensor | None) -> Tensor:
        grid = state.geometry.grid
        size = coords.new_tensor(grid)
        out = 0
        for corner in lookup_cells(coords, grid, self.local_ensemble):
            if self.feat_unfold:
                q = gather_unfolded(state.tensors["feat"], corner.index, grid)  # [B, Q, 9C]
            else:
                q = gather_cells(state.tensors["feat"], corner.index)  # [B, Q, C]
            parts = [q, corner.rel]
            if self.cell_decode:
                parts.append(cells * size)
            pred = self.imnet(torch.cat(parts, dim=-1))  # [B, Q, 3]
            out = out + (pred if corner.weight is None else pred * corner.weight.unsqueeze(-1))
        return out


# --------------------------------------------------------------------------------- registered sizes
def _reg(name: str, doc: str):
    def deco(fn):
        fn.__doc__ = doc
        return register_model(name, kind="lsr", family="liif")(fn)

    return deco


@_reg("liif_edsr_baseline", "LIIF with the EDSR-baseline encoder (16 blocks x 64), MLP 4x256: the paper's EDSR-b-LIIF.")
def liif_edsr_baseline(**kwargs: Any) -> LIIF:
    return LIIF(**{"encoder": dict(EDSR_B), **kwargs})


@_reg("liif_rdn", "LIIF with the RDN encoder (config B), MLP 4x256: the paper's RDN-LIIF.")
def liif_rdn(**kwargs: Any) -> LIIF:
    from decodelab.vision.lsr.encoders import RDN_B

    return LIIF(**{"encoder": dict(RDN_B), **kwargs})


@_reg("liif_small", "LIIF for CPU training: small RDN encoder (the SR matched-budget encoder), MLP 4x256.")
def liif_small(**kwargs: Any) -> LIIF:
    from decodelab.vision.lsr.encoders import RDN_SMALL

    return LIIF(**{"encoder": dict(RDN_SMALL), **kwargs})


@_reg("liif_native_small", "Amortized LIIF on GB-LSR's patch encoder (P32, D64): the native matched-budget track.")
def liif_native_small(**kwargs: Any) -> LIIF:
    return LIIF(**{"encoder": dict(PATCH_SMALL), **kwargs})


@_reg("test_liif", "Tiny random LIIF for tests.")
def test_liif(**kwargs: Any) -> LIIF:
    return LIIF(**{"encoder": dict(EDSR_TEST), "hidden": [16, 16], **kwargs})
