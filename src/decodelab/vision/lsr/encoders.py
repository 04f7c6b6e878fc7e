"""Image encoders of the continuous models: GB-LSR's patch encoder, EDSR-baseline and RDN.

Each encoder maps ``[B, 3, H, W]`` to a feature grid ``[B, out_dim, H / stride, W / stride]``.
Module names follow the upstream state-dict layouts so released weights load by renaming at most
a prefix (see :mod:`decodelab.vision.lsr.importers`):

- ``patch`` (GB-LSR ``Encoder``, github.com/KempnerInstitute/gblsr ``models/arms.py``):
  ``net = [conv3x3(3->D), GN(8), SiLU] + log2(P) x [conv3x3 stride 2, GN(8), SiLU] + [conv3x3]``,
  one ``D``-vector per ``P x P`` patch (``stride = P``).
- ``edsr_baseline`` (EDSR, Lim et al. 2017, as LIIF uses it with ``no_upsampling``;
  github.com/yinboc/liif ``models/edsr.py``): ``head.0`` conv, ``body.i.body.{0,2}`` residual
  blocks, ``body.{n}`` conv, global residual. ``stride = 1``.
- ``rdn`` (RDN, Zhang et al. 2018, no upsampler; key names as in GB-LSR's ``encoders/rdn.py``:
  ``sfe_1``, ``sfe_2``, ``rdbs.i.dense_layers.j.conv``, ``rdbs.i.local_feature_fusion``,
  ``gff_1x1``, ``gff_3x3``). ``stride = 1``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from decodelab.vision.lsr.base import Geometry

__all__ = [
    "ENCODERS", "EDSRBaseline", "PatchEncoder", "RDN", "RDN_B", "RDN_SMALL", "RDN_TEST", "build_encoder",
    "encode_to_grid", "pad_to_multiple",
]  # fmt: skip

# RDN encoder specs shared by every continuous model: LIIF's config B (the papers' RDN), a small one
# for CPU training and a tiny one for tests.
RDN_B = {"name": "rdn", "num_features": 64, "growth_rate": 64, "num_rdbs": 16, "num_layers_per_rdb": 8}
RDN_SMALL = {"name": "rdn", "num_features": 32, "growth_rate": 16, "num_rdbs": 4, "num_layers_per_rdb": 4}
RDN_TEST = {"name": "rdn", "num_features": 8, "growth_rate": 8, "num_rdbs": 2, "num_layers_per_rdb": 2}


class PatchEncoder(nn.Module):
    """GB-LSR's encoder: one ``dim``-vector per ``patch_size x patch_size`` patch.

    Args:
        patch_size: ``P``, a power of two (``log2(P)`` stride-2 stages).
        dim: feature width ``D`` (128 in the paper).
        groups: GroupNorm groups.
    """

    def __init__(self, patch_size: int = 32, dim: int = 128, groups: int = 8) -> None:
        super().__init__()
        if patch_size < 1 or patch_size & (patch_size - 1):
            raise ValueError(f"patch_size must be a power of two, got {patch_size}")
        if dim % groups:
            raise ValueError(f"dim ({dim}) must be divisible by groups ({groups})")
        layers: list[nn.Module] = [nn.Conv2d(3, dim, 3, padding=1), nn.GroupNorm(groups, dim), nn.SiLU()]
        for _ in range(int(math.log2(patch_size))):
            layers += [nn.Conv2d(dim, dim, 3, stride=2, padding=1), nn.GroupNorm(groups, dim), nn.SiLU()]
        layers.append(nn.Conv2d(dim, dim, 3, padding=1))
        self.net = nn.Sequential(*layers)
        self.out_dim, self.stride = dim, patch_size

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # [B, D, H/P, W/P]


class _ResBlock(nn.Module):
    def __init__(self, n_feats: int, res_scale: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(n_feats, n_feats, 3, padding=1), nn.ReLU(True), nn.Conv2d(n_feats, n_feats, 3, padding=1)
        )
        self.res_scale = res_scale

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x) * self.res_scale


class EDSRBaseline(nn.Module):
    """EDSR without its upsampler (LIIF's ``edsr-baseline`` with ``no_upsampling=True``).

    Args:
        n_resblocks: residual blocks (16 in EDSR-baseline).
        n_feats: width (64).
        res_scale: residual scaling (1 for the baseline).
    """

    def __init__(self, n_resblocks: int = 16, n_feats: int = 64, res_scale: float = 1.0) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.Conv2d(3, n_feats, 3, padding=1))
        blocks: list[nn.Module] = [_ResBlock(n_feats, res_scale) for _ in range(n_resblocks)]
        blocks.append(nn.Conv2d(n_feats, n_feats, 3, padding=1))
        self.body = nn.Sequential(*blocks)
        self.out_dim, self.stride = n_feats, 1

    def forward(self, x: Tensor) -> Tensor:
        x = self.head(x)
        return self.body(x) + x  # [B, n_feats, H, W]


class _DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, growth, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, torch.relu(self.conv(x))], dim=1)


class _RDB(nn.Module):
    def __init__(self, g0: int, growth: int, n_layers: int) -> None:
        super().__init__()
        self.dense_layers = nn.Sequential(*[_DenseLayer(g0 + i * growth, growth) for i in range(n_layers)])
        self.local_feature_fusion = nn.Conv2d(g0 + n_layers * growth, g0, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.local_feature_fusion(self.dense_layers(x)) + x


class RDN(nn.Module):
    """Residual Dense Network without its upsampler.

    Args:
        num_features: ``G0`` (64).
        growth_rate: ``G`` (64 in config B, 32 in config A).
        num_rdbs: ``D`` blocks (16 in config B).
        num_layers_per_rdb: ``C`` dense layers per block (8 in config B).
    """

    def __init__(
        self, num_features: int = 64, growth_rate: int = 64, num_rdbs: int = 16, num_layers_per_rdb: int = 8
    ) -> None:
        super().__init__()
        g0 = num_features
        self.sfe_1 = nn.Conv2d(3, g0, 3, padding=1)
        self.sfe_2 = nn.Conv2d(g0, g0, 3, padding=1)
        self.rdbs = nn.ModuleList([_RDB(g0, growth_rate, num_layers_per_rdb) for _ in range(num_rdbs)])
        self.gff_1x1 = nn.Conv2d(num_rdbs * g0, g0, 1)
        self.gff_3x3 = nn.Conv2d(g0, g0, 3, padding=1)
        self.out_dim, self.stride = g0, 1

    def forward(self, x: Tensor) -> Tensor:
        shallow = self.sfe_1(x)
        h = self.sfe_2(shallow)
        outs = []
        for block in self.rdbs:
            h = block(h)
            outs.append(h)
        return self.gff_3x3(self.gff_1x1(torch.cat(outs, dim=1))) + shallow  # [B, G0, H, W]


ENCODERS: dict[str, type[nn.Module]] = {"patch": PatchEncoder, "edsr_baseline": EDSRBaseline, "rdn": RDN}


def build_encoder(spec: dict[str, Any]) -> nn.Module:
    """Build an encoder from ``{"name": ..., **kwargs}``.

    Raises:
        ValueError: for an unknown name or arguments the encoder does not take.
    """
    if not isinstance(spec, dict) or "name" not in spec:
        raise ValueError(f"an encoder spec is a mapping with a 'name' (one of {', '.join(ENCODERS)}), got {spec!r}")
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    cls = ENCODERS.get(spec["name"])
    if cls is None:
        raise ValueError(f"unknown encoder {spec['name']!r}; choose one of {', '.join(ENCODERS)}")
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ValueError(f"bad arguments for the {spec['name']} encoder: {e}") from e


def pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int]]:
    """Pad ``[B, C, H, W]`` so both sides are multiples of ``multiple``.

    The total pad of each axis is split evenly, the odd pixel going to the bottom / right
    (GB-LSR's ``pad_to_multiple``); reflection padding, or edge replication when the image is too
    small to reflect.

    Returns:
        The padded tensor and the ``(top, left)`` offset of the image in it.
    """
    H, W = x.shape[-2:]
    ph, pw = (-H) % multiple, (-W) % multiple
    if ph == 0 and pw == 0:
        return x, (0, 0)
    top, left = ph // 2, pw // 2
    pads = (left, pw - left, top, ph - top)
    mode = "reflect" if max(top, ph - top) < H and max(left, pw - left) < W else "replicate"
    return F.pad(x, pads, mode=mode), (top, left)


def encode_to_grid(encoder: nn.Module, x: Tensor) -> tuple[Tensor, Geometry]:
    """Run ``encoder`` on ``x`` (padded to its stride) and describe the resulting grid."""
    H, W = x.shape[-2:]
    xp, offset = pad_to_multiple(x, encoder.stride) if encoder.stride > 1 else (x, (0, 0))
    feat = encoder(xp)  # [B, C, h, w]
    geo = Geometry((H, W), tuple(xp.shape[-2:]), offset, tuple(feat.shape[-2:]))
    return feat, geo
