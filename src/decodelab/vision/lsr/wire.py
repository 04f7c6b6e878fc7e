"""An amortized, encoder-conditioned WIRE decoder.

WIRE (Saragadam et al., "WIRE: Wavelet Implicit Neural Representations", CVPR 2023;
github.com/vishwa91/wire ``modules/wire.py``) is a *per-image* coordinate MLP whose activation is
the complex Gabor wavelet ``exp(j w0 z - |s0 z|^2)`` applied to ``z = W x + b``: the first layer is
real (real coordinates in, complex activations out), the hidden layers are complex, the last layer
is a complex linear map whose real part is the output, and the hidden width is divided by
``sqrt(2)`` so the real parameter count matches a real MLP of the nominal width.

GB-LSR compares against an "amortized WIRE" whose code is not public. The amortization written
here (our design, documented so it can be compared): WIRE's Gabor network becomes the decoder of a
LIIF-style local implicit function. An encoder gives a latent grid; each query takes its nearest
cell's latent vector ``f`` (optionally the 3x3 unfolding), the relative coordinate ``r`` and the
relative cell size ``c`` (both as in LIIF), and evaluates

    h1 = gabor(W1 [f, r, c] + b1)               (real linear layer, complex activation)
    hk = gabor(Wk h(k-1) + bk)                  (complex linear layers)
    rgb = Re(Wout h_L + bout)

with the 4-corner area-weighted local ensemble. So the latent code conditions every wavelet
through the first layer's input (equivalently, it shifts each first-layer pre-activation by
``W1_f f``, i.e. it moves and re-scales the wavelets per cell), and one set of weights serves all
images. ``w0`` and ``s0`` are fixed, as in WIRE; the defaults (``w0 = 10``, ``s0 = 4``) are ours,
chosen so that the first-layer Gaussians do not vanish for ~70-dimensional inputs (WIRE's image
fitting uses 20/10-30 on 2-d coordinates). Complex weights are stored as separate real and
imaginary tensors (``weight_re``/``weight_im``) so checkpoints stay plain float safetensors.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from decodelab.config import register_to_config
from decodelab.registry import register_architecture, register_model
from decodelab.vision.lsr.base import ContinuousImageModel, LatentState, gather_cells, lookup_cells
from decodelab.vision.lsr.encoders import build_encoder, encode_to_grid
from decodelab.vision.lsr.liif import EDSR_TEST, PATCH_SMALL, gather_unfolded, padded_cells

__all__ = ["AmortizedWIRE", "ComplexLinear", "gabor"]


def gabor(re: Tensor, im: Tensor, omega0: float, sigma0: float) -> tuple[Tensor, Tensor]:
    """``exp(j w0 z - |s0 z|^2)`` of ``z = re + j im``, returned as (real, imaginary) parts.

    ``j w0 z = -w0 im + j w0 re``, so the modulus is ``exp(-w0 im - s0^2 |z|^2)`` and the phase
    ``w0 re``. For a real ``z`` (``im = 0``) this is ``exp(-(s0 z)^2) (cos w0 z + j sin w0 z)``.
    """
    mod = torch.exp(-omega0 * im - sigma0**2 * (re * re + im * im))
    phase = omega0 * re
    return mod * torch.cos(phase), mod * torch.sin(phase)


class ComplexLinear(nn.Module):
    """``W z + b`` with complex ``W, b`` held as real tensors; ``U(-1/sqrt(n), 1/sqrt(n))`` init per part."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        bound = 1 / math.sqrt(in_features)
        self.weight_re = nn.Parameter(torch.empty(out_features, in_features).uniform_(-bound, bound))
        self.weight_im = nn.Parameter(torch.empty(out_features, in_features).uniform_(-bound, bound))
        self.bias_re = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))
        self.bias_im = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))

    def forward(self, re: Tensor, im: Tensor) -> tuple[Tensor, Tensor]:
        wr, wi = self.weight_re, self.weight_im
        out_re = re @ wr.t() - im @ wi.t() + self.bias_re
        out_im = re @ wi.t() + im @ wr.t() + self.bias_im
        return out_re, out_im


@register_architecture
class AmortizedWIRE(ContinuousImageModel):
    """Encoder-conditioned WIRE (see the module docstring for the amortization).

    Args:
        encoder: encoder spec.
        hidden: nominal hidden width (complex width ``int(hidden / sqrt(2))``, as in WIRE).
        hidden_layers: complex Gabor layers after the first (WIRE scripts: 2).
        omega0: Gabor frequency ``w0``.
        sigma0: Gabor scale ``s0``.
        local_ensemble: LIIF's 4-corner ensemble.
        feat_unfold: LIIF's 3x3 feature unfolding of the latent input.
        cell_decode: feed the relative cell size.
        data_norm: ``(sub, div)`` (as LIIF: ``(0.5, 0.5)``).
    """

    @register_to_config
    def __init__(
        self,
        encoder: dict[str, Any] | None = None,
        hidden: int = 256,
        hidden_layers: int = 2,
        omega0: float = 10.0,
        sigma0: float = 4.0,
        local_ensemble: bool = True,
        feat_unfold: bool = False,
        cell_decode: bool = True,
        data_norm: tuple[float, float] | list[float] = (0.5, 0.5),
    ) -> None:
        super().__init__(data_norm)
        self.encoder = build_encoder(dict(encoder or PATCH_SMALL))
        width = int(hidden / math.sqrt(2))
        in_dim = self.encoder.out_dim * (9 if feat_unfold else 1) + 2 + (2 if cell_decode else 0)
        self.first = nn.Linear(in_dim, width)
        self.hidden = nn.ModuleList([ComplexLinear(width, width) for _ in range(hidden_layers)])
        self.out = ComplexLinear(width, 3)
        self.omega0, self.sigma0 = float(omega0), float(sigma0)
        self.local_ensemble, self.feat_unfold, self.cell_decode = local_ensemble, feat_unfold, cell_decode
        self.uses_cells = cell_decode

    def _encode(self, x: Tensor) -> LatentState:
        feat, geo = encode_to_grid(self.encoder, x)
        cells = padded_cells(feat) if self.feat_unfold else feat.flatten(2).transpose(1, 2).contiguous()
        return LatentState({"feat": cells}, geo, x.shape[0])

    def decode(self, inp: Tensor) -> Tensor:
        """The Gabor network on per-query inputs ``[..., in_dim]`` -> ``[..., 3]``."""
        z = self.first(inp)
        re, im = gabor(z, torch.zeros_like(z), self.omega0, self.sigma0)
        for layer in self.hidden:
            re, im = gabor(*layer(re, im), self.omega0, self.sigma0)
        return self.out(re, im)[0]

    def _query(self, state: LatentState, coords: Tensor, cells: Tensor | None) -> Tensor:
        grid = state.geometry.grid
        out = 0
        for corner in lookup_cells(coords, grid, self.local_ensemble):
            if self.feat_unfold:
                q = gather_unfolded(state.tensors["feat"], corner.index, grid)
            else:
                q = gather_cells(state.tensors["feat"], corner.index)
            parts = [q, corner.rel] + ([cells * coords.new_tensor(grid)] if self.cell_decode else [])
            pred = self.decode(torch.cat(parts, dim=-1))
            out = out + (pred if corner.weight is None else pred * corner.weight.unsqueeze(-1))
        return out


def _reg(name: str, doc: str):
    def deco(fn):
        fn.__doc__ = doc
        return register_model(name, kind="lsr", family="wire")(fn)

    return deco


@_reg("wire_small", "Amortized WIRE for CPU training: small RDN encoder (the SR matched-budget encoder).")
def wire_small(**kwargs: Any) -> AmortizedWIRE:
    from decodelab.vision.lsr.encoders import RDN_SMALL

    return AmortizedWIRE(**{"encoder": dict(RDN_SMALL), **kwargs})


@_reg("wire_native_small", "Amortized WIRE on GB-LSR's patch encoder (P32, D64): the native matched-budget track.")
def wire_native_small(**kwargs: Any) -> AmortizedWIRE:
    return AmortizedWIRE(**{"encoder": dict(PATCH_SMALL), **kwargs})


@_reg("wire_edsr_baseline", "Amortized WIRE with the EDSR-baseline encoder (16 x 64), 2 complex Gabor layers.")
def wire_edsr_baseline(**kwargs: Any) -> AmortizedWIRE:
    from decodelab.vision.lsr.liif import EDSR_B

    return AmortizedWIRE(**{"encoder": dict(EDSR_B), **kwargs})


@_reg("test_wire", "Tiny random amortized WIRE for tests.")
def test_wire(**kwargs: Any) -> AmortizedWIRE:
    return AmortizedWIRE(**{"encoder": dict(EDSR_TEST), "hidden": 16, "hidden_layers": 1, **kwargs})
