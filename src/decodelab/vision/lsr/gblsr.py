"""GB-LSR: a local spectral image representation with a single global bandwidth.

Shad & Khoshnevis, "GB-LSR: A Fast Local Spectral Image Representation with a Single Global
Bandwidth for Continuous Reconstruction and Super-Resolution", arXiv:2606.19617 (2026); facts
(layer shapes, initialisations, bandwidth modes, key names) from github.com/KempnerInstitute/gblsr
(``models/{arms,basis}.py``, ``asr/{decoder,model}.py``, ``encoders/rdn.py``), code written here.

Two models share the basis of :mod:`decodelab.vision.lsr.basis`:

- :class:`GBLSRNative` (upstream ``LocalSpectralArm``): the image, reflect-padded to a multiple of
  ``P = 32``, is cut into ``P x P`` patches; the patch encoder gives one 128-d feature per patch;
  ``decoder.coeff_proj`` (Linear, init N(0, 0.01), bias 0) predicts ``3 x 16 x 16`` coefficients
  per patch; ``decoder.adaptivity.proj`` (zero-init Linear to 2) gives the per-patch soft order
  ``p_soft`` in ``[1, 16]`` (8.5 at init) and, in the per-patch modes, the bandwidth. Bandwidth
  modes: ``global_scalar`` (main: one trainable ``s_raw``, ``s = exp(log .25 + log 8 sigmoid(s_raw))``,
  0.7071 at init, shared by all patches and images), ``fixed_midpoint`` (``s = 1.125``),
  ``local_linear`` / ``local_logspace`` (per-patch head). 989,955 parameters at the paper's size.
  Local patch coordinates are ``linspace(-1, 1, P)``: pixel ``k`` of a patch sits at
  ``u = -1 + 2 k / (P - 1)``, and a continuous query at canvas pixel position ``p`` (pixel centres
  at integers) is answered by patch ``n = floor((p + 0.5) / P)`` at ``u = -1 + 2 (p - n P) / (P - 1)``,
  so querying the pixel centres reproduces :meth:`GBLSRNative.decode_grid` exactly.
- :class:`GBLSRSR` (upstream ``GBLSRScalarASR``): an RDN feature map, a 1x1 conv to ``3 x 16 x 16``
  coefficients per LR cell, LIIF's cell lookup (``rel = (q - centre) * (h, w)``, about ``[-1, 1]``
  in a cell), optional 4-corner local ensemble, one bandwidth ``s = softplus(log_s_e)`` initialised
  to exactly 1.0, no order mask, cell size ignored.

Each query costs a gather of ``3 p_max^2`` coefficients and two ``p_max``-term contractions,
whatever the image size.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from decodelab.config import register_to_config
from decodelab.registry import register_architecture, register_model
from decodelab.vision.lsr.base import (
    DEFAULT_CHUNK,
    ContinuousImageModel,
    LatentState,
    gather_cells,
    lookup_cells,
    sample_image,
)
from decodelab.vision.lsr.basis import (
    BASIS_FAMILIES,
    fourier_basis_1d,
    linear_sigmoid,
    logspace_sigmoid,
    soft_order_mask,
    softplus_inverse,
)
from decodelab.vision.lsr.encoders import (
    RDN_B,
    RDN_SMALL,
    RDN_TEST,
    PatchEncoder,
    build_encoder,
    encode_to_grid,
    pad_for_encoder,
)

__all__ = ["BANDWIDTH_MODES", "GBLSRNative", "GBLSRSR", "RDN_B", "RDN_SMALL", "RDN_TEST"]

BANDWIDTH_MODES = ("global_scalar", "fixed_midpoint", "local_linear", "local_logspace")
#: what :class:`GBLSRSR`'s head adds its prediction to (``None``: nothing, as upstream).
RESIDUALS = (None, "bicubic")


def spectral_eval(coef: Tensor, phi_y: Tensor, phi_x: Tensor) -> Tensor:
    """``sum_ij coef[..., c, i, j] phi_y[..., i] phi_x[..., j]``: ``[B, Q, 3, p, p]`` -> ``[B, Q, 3]``."""
    t = torch.einsum("bqcij,bqj->bqci", coef, phi_x)  # [B, Q, 3, p]
    return torch.einsum("bqci,bqi->bqc", t, phi_y)


class _Adaptivity(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, 2)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)


class _PatchSpectralHead(nn.Module):
    """``coeff_proj`` + ``adaptivity.proj`` (+ ``global_s_raw``): upstream ``LocalSpectralDecoder``'s keys."""

    def __init__(self, dim: int, p_max: int, bandwidth_mode: str) -> None:
        super().__init__()
        self.coeff_proj = nn.Linear(dim, 3 * p_max * p_max)
        nn.init.normal_(self.coeff_proj.weight, std=0.01)
        nn.init.zeros_(self.coeff_proj.bias)
        self.adaptivity = _Adaptivity(dim)
        if bandwidth_mode == "global_scalar":
            self.global_s_raw = nn.Parameter(torch.zeros(()))


@register_architecture
class GBLSRNative(ContinuousImageModel):
    """GB-LSR native continuous reconstruction (upstream ``LocalSpectralArm``, ``local_spectral`` arm).

    Args:
        patch_size: ``P`` (32), a power of two >= 2.
        dim: encoder width ``D`` (128).
        p_max: basis terms per axis (16).
        bandwidth_mode: one of :data:`BANDWIDTH_MODES`.
        s_range: bandwidth range ``(0.25, 2.0)``.
        p_soft_range: soft order range ``(1, 16)``.
        sharpness: slope of the soft order mask (4).
        adapt_order: use the soft order mask (upstream default); ``False`` pins ``p_soft`` to its max.
        family: ``fourier`` or ``cosine``.
        groups: GroupNorm groups of the encoder (8).
        data_norm: ``(sub, div)`` input normalisation (GB-LSR: none).
    """

    min_input_size = 1

    @register_to_config
    def __init__(
        self,
        patch_size: int = 32,
        dim: int = 128,
        p_max: int = 16,
        bandwidth_mode: str = "global_scalar",
        s_range: tuple[float, float] | list[float] = (0.25, 2.0),
        p_soft_range: tuple[float, float] | list[float] = (1.0, 16.0),
        sharpness: float = 4.0,
        adapt_order: bool = True,
        family: str = "fourier",
        groups: int = 8,
        data_norm: tuple[float, float] | list[float] = (0.0, 1.0),
    ) -> None:
        super().__init__(data_norm)
        if bandwidth_mode not in BANDWIDTH_MODES:
            raise ValueError(f"unknown bandwidth_mode {bandwidth_mode!r}; choose one of {', '.join(BANDWIDTH_MODES)}")
        if family not in BASIS_FAMILIES:
            raise ValueError(f"unknown basis family {family!r}; choose one of {', '.join(BASIS_FAMILIES)}")
        if patch_size < 2:
            raise ValueError(f"patch_size must be >= 2, got {patch_size}")
        self.patch_size, self.p_max, self.family = patch_size, p_max, family
        self.bandwidth_mode, self.adapt_order, self.sharpness = bandwidth_mode, adapt_order, sharpness
        self.s_range = (float(s_range[0]), float(s_range[1]))
        self.p_soft_range = (float(p_soft_range[0]), float(p_soft_range[1]))
        self.encoder = PatchEncoder(patch_size, dim, groups)
        self.decoder = _PatchSpectralHead(dim, p_max, bandwidth_mode)

    def bandwidth(self, raw: Tensor | None = None) -> Tensor:
        """The bandwidth ``s``: a scalar (global/fixed modes) or per patch from the head's ``raw`` output."""
        lo, hi = self.s_range
        if self.bandwidth_mode == "fixed_midpoint":
            return torch.tensor(0.5 * (lo + hi))
        if self.bandwidth_mode == "global_scalar":
            return logspace_sigmoid(self.decoder.global_s_raw, lo, hi)
        if raw is None:
            raise ValueError(f"the {self.bandwidth_mode} bandwidth is per patch: pass the head's raw output")
        return linear_sigmoid(raw, lo, hi) if self.bandwidth_mode == "local_linear" else logspace_sigmoid(raw, lo, hi)

    def _encode(self, x: Tensor) -> LatentState:
        feat, geo = encode_to_grid(self.encoder, x)  # [B, D, nH, nW]
        f = feat.permute(0, 2, 3, 1)  # [B, nH, nW, D]
        B, nH, nW, _ = f.shape
        p = self.p_max
        coef = self.decoder.coeff_proj(f).view(B, nH, nW, 3, p, p)
        raw = self.decoder.adaptivity.proj(f)  # [B, nH, nW, 2]
        s = self.bandwidth(raw[..., 0]).to(f).expand(B, nH, nW)
        if self.adapt_order:
            p_soft = linear_sigmoid(raw[..., 1], *self.p_soft_range)
        else:
            p_soft = torch.full_like(raw[..., 1], self.p_soft_range[1])
        coef = coef * soft_order_mask(p_soft, p, self.sharpness).unsqueeze(3)  # mask [B, nH, nW, 1, p, p]
        tensors = {"coef": coef.reshape(B, nH * nW, 3 * p * p), "s": s.reshape(B, nH * nW, 1)}
        return LatentState(tensors, geo, B, extras={"p_soft": p_soft})

    def _local(self, c: Tensor, size: int, n_cells: int) -> tuple[Tensor, Tensor]:
        """Canvas coordinate -> (patch index, local coordinate) along one axis."""
        P = self.patch_size
        pos = (c + 1) * 0.5 * size - 0.5  # pixel position, centres at integers
        n = torch.floor((pos + 0.5) / P).clamp_(0, n_cells - 1)
        return n.long(), -1 + 2 * (pos - n * P) / (P - 1)

    def _query(self, state: LatentState, coords: Tensor, cells: Tensor | None) -> Tensor:
        geo, p = state.geometry, self.p_max
        (hc, wc), (nH, nW) = geo.canvas_size, geo.grid
        ny, u = self._local(coords[..., 0], hc, nH)  # [B, Q]
        nx, v = self._local(coords[..., 1], wc, nW)
        idx = ny * nW + nx
        coef = gather_cells(state.tensors["coef"], idx).view(*idx.shape, 3, p, p)  # [B, Q, 3, p, p]
        s = gather_cells(state.tensors["s"], idx)[..., 0]  # [B, Q]
        phi_y = fourier_basis_1d(u, p, s, self.family)  # [B, Q, p]
        phi_x = fourier_basis_1d(v, p, s, self.family)
        return spectral_eval(coef, phi_y, phi_x)

    def decode_grid(self, state: LatentState, clamp: bool = False) -> Tensor:
        """The decoder's own output on the native pixel grid (upstream ``reconstruct_patch``), ``[B, 3, H, W]``."""
        geo, p, P = state.geometry, self.p_max, self.patch_size
        B, (nH, nW) = state.batch_size, geo.grid
        coef = state.tensors["coef"].view(B, nH * nW, 3, p, p)
        u = torch.linspace(-1.0, 1.0, P, device=coef.device, dtype=coef.dtype)  # [P]
        s = state.tensors["s"]  # [B, N, 1]
        phi = fourier_basis_1d(u.expand(B, nH * nW, P), p, s, self.family)  # [B, N, P, p]
        patches = torch.einsum("bncij,bnui,bnvj->bncuv", coef, phi, phi)  # [B, N, 3, P, P]
        img = patches.view(B, nH, nW, 3, P, P).permute(0, 3, 1, 4, 2, 5).reshape(B, 3, nH * P, nW * P)
        (t, l), (H, W) = geo.offset, geo.image_size
        img = img[..., t : t + H, l : l + W] * self.norm_div + self.norm_sub
        return img.clamp(0, 1) if clamp else img

    @torch.no_grad()
    def render(self, images, out_size, chunk=DEFAULT_CHUNK, clamp: bool = True) -> Tensor:
        """As :meth:`ContinuousImageModel.render`; at the encoded image's own size it evaluates the
        separable basis on the patch grid (:meth:`decode_grid`, equal to querying every pixel centre
        up to float rounding, and ~100x faster)."""
        state = images if isinstance(images, LatentState) else self.encode(images)
        if tuple(int(v) for v in out_size) == tuple(state.geometry.image_size):
            return self.decode_grid(state, clamp=clamp)
        return super().render(state, out_size, chunk=chunk, clamp=clamp)

    def reconstruct(self, images: Tensor, clamp: bool = True) -> Tensor:
        """Native reconstruction ``[B, 3, H, W]`` of images in ``[0, 1]`` (encode + :meth:`decode_grid`)."""
        return self.decode_grid(self.encode(images), clamp=clamp)


class _CellSpectralHead(nn.Module):
    """``coeff_proj`` (1x1 conv) + ``log_s_e``: upstream ``GBLSRScalarASRDecoder``'s keys."""

    def __init__(self, dim: int, p_max: int, bandwidth_init: float) -> None:
        super().__init__()
        self.coeff_proj = nn.Conv2d(dim, 3 * p_max * p_max, 1)
        nn.init.normal_(self.coeff_proj.weight, std=0.01)
        nn.init.zeros_(self.coeff_proj.bias)
        self.log_s_e = nn.Parameter(torch.tensor(softplus_inverse(bandwidth_init), dtype=torch.float32))


@register_architecture
class GBLSRSR(ContinuousImageModel):
    """GB-LSR's arbitrary-scale SR extension (upstream ``GBLSRScalarASR``).

    Args:
        encoder: encoder spec (default RDN config B: ``G0 = G = 64``, 16 blocks of 8 layers).
        p_max: basis terms per axis (16).
        bandwidth_init: initial ``s`` (1.0), reached exactly through ``softplus``.
        local_ensemble: LIIF's 4-corner ensemble (upstream default on; ``noLE`` variant off).
        family: ``fourier`` or ``cosine``.
        data_norm: ``(sub, div)``; upstream feeds ``[0, 1]`` images.
        residual: ``None`` (upstream: the spectral head predicts the colour) or ``"bicubic"``
            (decodelab's option, not in the paper): the head predicts a correction added to the
            bicubic interpolation of the input at the query point, so an untrained model starts
            at the bicubic baseline instead of far below it, which is what a small model trained
            for a few thousand CPU steps needs to beat that baseline (a plain model at 3000 steps
            was 1.5 dB under bicubic on RGB at x2). The interpolation is ``grid_sample``'s bicubic
            (Keys ``a = -0.75``, edge taps replicated), evaluated at the same continuous
            coordinates as the head, so the model stays resolution-free.
    """

    @register_to_config
    def __init__(
        self,
        encoder: dict[str, Any] | None = None,
        p_max: int = 16,
        bandwidth_init: float = 1.0,
        local_ensemble: bool = True,
        family: str = "fourier",
        data_norm: tuple[float, float] | list[float] = (0.0, 1.0),
        residual: str | None = None,
    ) -> None:
        super().__init__(data_norm)
        if family not in BASIS_FAMILIES:
            raise ValueError(f"unknown basis family {family!r}; choose one of {', '.join(BASIS_FAMILIES)}")
        if residual not in RESIDUALS:
            raise ValueError(f"unknown residual {residual!r}; choose one of {', '.join(map(str, RESIDUALS))}")
        self.residual = residual
        self.encoder = build_encoder(dict(encoder or RDN_B))
        self.decoder = _CellSpectralHead(self.encoder.out_dim, p_max, bandwidth_init)
        self.p_max, self.local_ensemble, self.family = p_max, local_ensemble, family

    def bandwidth(self) -> Tensor:
        return F.softplus(self.decoder.log_s_e)

    def _encode(self, x: Tensor) -> LatentState:
        feat, geo = encode_to_grid(self.encoder, x)
        coef = self.decoder.coeff_proj(feat)  # [B, 3 p^2, h, w]
        # the residual samples the canvas, i.e. the input padded like the encoder's input
        extras = {"image": pad_for_encoder(self.encoder, x)[0]} if self.residual == "bicubic" else {}
        return LatentState({"coef": coef.flatten(2).transpose(1, 2).contiguous()}, geo, x.shape[0], extras)

    def _query(self, state: LatentState, coords: Tensor, cells: Tensor | None) -> Tensor:
        p, s = self.p_max, self.bandwidth()
        out = 0
        if self.residual == "bicubic":
            out = sample_image(state.extras["image"], coords, "bicubic")  # [B, Q, 3]
        for corner in lookup_cells(coords, state.geometry.grid, self.local_ensemble):
            coef = gather_cells(state.tensors["coef"], corner.index).view(*corner.index.shape, 3, p, p)
            phi_y = fourier_basis_1d(corner.rel[..., 0], p, s, self.family)  # [B, Q, p]
            phi_x = fourier_basis_1d(corner.rel[..., 1], p, s, self.family)
            pred = spectral_eval(coef, phi_y, phi_x)  # [B, Q, 3]
            out = out + (pred if corner.weight is None else pred * corner.weight.unsqueeze(-1))
        return out


# --------------------------------------------------------------------------------- registered sizes
def _reg(name: str, family: str, doc: str):
    def deco(fn):
        fn.__doc__ = doc
        return register_model(name, kind="lsr", family=family)(fn)

    return deco


@_reg("gblsr_native", "gblsr", "GB-LSR native reconstruction, paper size (P32, D128, 16x16 terms, global scalar s).")
def gblsr_native(**kwargs: Any) -> GBLSRNative:
    return GBLSRNative(**kwargs)


@_reg("gblsr_native_fixed", "gblsr", "GB-LSR native, fixed bandwidth s = 1.125 (ablation).")
def gblsr_native_fixed(**kwargs: Any) -> GBLSRNative:
    return GBLSRNative(**{"bandwidth_mode": "fixed_midpoint", **kwargs})


@_reg("gblsr_native_local", "gblsr", "GB-LSR native, per-patch log-space bandwidth head (ablation).")
def gblsr_native_local(**kwargs: Any) -> GBLSRNative:
    return GBLSRNative(**{"bandwidth_mode": "local_logspace", **kwargs})


@_reg("gblsr_native_small", "gblsr", "GB-LSR native for CPU training (D64; any bandwidth_mode).")
def gblsr_native_small(**kwargs: Any) -> GBLSRNative:
    return GBLSRNative(**{"dim": 64, **kwargs})


@_reg("test_gblsr_native", "gblsr", "Tiny random GB-LSR native model for tests (P8, D16, 4x4 terms).")
def test_gblsr_native(**kwargs: Any) -> GBLSRNative:
    return GBLSRNative(**{"patch_size": 8, "dim": 16, "p_max": 4, "groups": 4, **kwargs})


@_reg("gblsr_sr_rdn", "gblsr_sr", "GB-LSR SR extension: RDN encoder, 16x16 terms, local ensemble.")
def gblsr_sr_rdn(**kwargs: Any) -> GBLSRSR:
    return GBLSRSR(**{"encoder": dict(RDN_B), **kwargs})


@_reg("gblsr_sr_rdn_nole", "gblsr_sr", "GB-LSR SR extension without the 4-corner local ensemble (noLE).")
def gblsr_sr_rdn_nole(**kwargs: Any) -> GBLSRSR:
    return GBLSRSR(**{"encoder": dict(RDN_B), "local_ensemble": False, **kwargs})


@_reg("gblsr_sr_small", "gblsr_sr", "GB-LSR SR for CPU training: small RDN (G0 32, G 16, 4x4), local ensemble.")
def gblsr_sr_small(**kwargs: Any) -> GBLSRSR:
    return GBLSRSR(**{"encoder": dict(RDN_SMALL), **kwargs})


@_reg("gblsr_sr_small_nole", "gblsr_sr", "GB-LSR SR for CPU training, small RDN, no local ensemble.")
def gblsr_sr_small_nole(**kwargs: Any) -> GBLSRSR:
    return GBLSRSR(**{"encoder": dict(RDN_SMALL), "local_ensemble": False, **kwargs})


@_reg("test_gblsr_sr", "gblsr_sr", "Tiny random GB-LSR SR model for tests.")
def test_gblsr_sr(**kwargs: Any) -> GBLSRSR:
    return GBLSRSR(**{"encoder": dict(RDN_TEST), "p_max": 4, **kwargs})
