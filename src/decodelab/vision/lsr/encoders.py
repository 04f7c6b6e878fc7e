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
- ``swinir`` (SwinIR, Liang et al. 2021, as LTE's repository builds it for SwinIR-LIIF / SwinIR-LTE
  with ``upsampler='none'``; github.com/jaewon-lee-b/lte ``models/swinir.py``): ``conv_first``,
  ``patch_embed.norm``, ``layers.i.residual_group.blocks.j.{norm1, attn.{qkv, proj,
  relative_position_bias_table}, norm2, mlp.{fc1, fc2}}``, ``layers.i.conv``, ``norm``,
  ``conv_after_body``, ``conv_before_upsample.0``. ``stride = 1``; the input is reflect-padded at
  the bottom/right to a multiple of the window size (upstream's ``check_image_size``) and the grid
  covers that padded canvas.

An encoder may define ``pad_input(x) -> (padded, (top, left))``; otherwise inputs are padded to a
multiple of ``stride`` (:func:`pad_to_multiple`). :func:`pad_for_encoder` applies the rule.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from decodelab.vision.lsr.base import Geometry

__all__ = [
    "ENCODERS", "EDSRBaseline", "PatchEncoder", "RDN", "RDN_B", "RDN_SMALL", "RDN_TEST", "SWINIR", "SWINIR_TEST",
    "SwinIR", "build_encoder", "encode_to_grid", "pad_for_encoder", "pad_to_multiple", "shifted_window_mask",
]  # fmt: skip

# RDN encoder specs shared by every continuous model: LIIF's config B (the papers' RDN), a small one
# for CPU training and a tiny one for tests.
RDN_B = {"name": "rdn", "num_features": 64, "growth_rate": 64, "num_rdbs": 16, "num_layers_per_rdb": 8}
RDN_SMALL = {"name": "rdn", "num_features": 32, "growth_rate": 16, "num_rdbs": 4, "num_layers_per_rdb": 4}
RDN_TEST = {"name": "rdn", "num_features": 8, "growth_rate": 8, "num_rdbs": 2, "num_layers_per_rdb": 2}
#: SwinIR as LTE's ``make_swinir`` builds it (the only size its SwinIR-LIIF / SwinIR-LTE use), and a tiny one.
SWINIR = {"name": "swinir", "embed_dim": 180, "depths": [6] * 6, "num_heads": [6] * 6, "window_size": 8,
          "mlp_ratio": 2.0, "num_feat": 64}  # fmt: skip
SWINIR_TEST = {"name": "swinir", "embed_dim": 12, "depths": [2, 2], "num_heads": [2, 3], "window_size": 4,
               "mlp_ratio": 2.0, "num_feat": 8}  # fmt: skip


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


# ------------------------------------------------------------------------------------------ SwinIR
def shifted_window_mask(h: int, w: int, window: int, shift: int, device: torch.device | None = None) -> Tensor:
    """Attention mask of the shifted windows of an ``h x w`` map (Swin's SW-MSA), ``[nW, N, N]``.

    After the cyclic shift by ``-shift``, a window at the bottom/right edge holds pixels from
    different sides of the map; pixels from different bands (``< n - window``, ``[n - window,
    n - shift)``, ``>= n - shift`` along each axis) must not attend to each other: their entry is
    ``-100`` (as upstream), ``0`` otherwise. ``nW = (h / window) (w / window)``, ``N = window^2``.
    """

    def bands(n: int) -> Tensor:
        i = torch.arange(n, device=device)
        return (i >= n - window).long() + (i >= n - shift).long()  # 0, 1, 2

    label = bands(h)[:, None] * 3 + bands(w)[None, :]  # [h, w]
    windows = label.view(h // window, window, w // window, window).permute(0, 2, 1, 3).reshape(-1, window * window)
    differ = windows[:, None, :] != windows[:, :, None]  # [nW, N, N]
    return torch.zeros(differ.shape, device=device).masked_fill(differ, -100.0)


def relative_position_index(window: int) -> Tensor:
    """``[N, N]`` index into the ``(2 window - 1)^2`` relative position bias table (Swin's layout)."""
    yy, xx = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    coords = torch.stack([yy.flatten(), xx.flatten()])  # [2, N]
    rel = coords[:, :, None] - coords[:, None, :] + (window - 1)  # [2, N, N] in [0, 2 window - 2]
    return rel[0] * (2 * window - 1) + rel[1]


class _WindowAttention(nn.Module):
    """Multi-head self-attention inside ``window x window`` windows with a learned relative position bias."""

    def __init__(self, dim: int, window: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"embed_dim {dim} is not divisible by {heads} heads")
        self.heads, self.window = heads, window
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        # deterministic; upstream stores it in the state dict, the importer checks and drops it
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """``x [B, nW, N, C]`` (tokens of each window), ``mask [nW, N, N]`` or ``None`` -> ``[B, nW, N, C]``."""
        B, nW, N, C = x.shape
        qkv = self.qkv(x).view(B, nW, N, 3, self.heads, C // self.heads).permute(3, 0, 1, 4, 2, 5)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [B, nW, heads, N, d]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]  # [N N, heads]
        bias = bias.view(N, N, self.heads).permute(2, 0, 1)  # [heads, N, N]
        if mask is not None:
            bias = bias + mask[:, None]  # [nW, heads, N, N]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=(C // self.heads) ** -0.5)
        return self.proj(out.transpose(2, 3).reshape(B, nW, N, C))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _SwinBlock(nn.Module):
    """Pre-norm (shifted-)window attention + MLP, both residual; tokens ``[B, H W, C]``."""

    def __init__(self, dim: int, heads: int, window: int, shift: int, mlp_ratio: float) -> None:
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _WindowAttention(dim, window, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))

    def forward(self, t: Tensor, size: tuple[int, int], mask: Tensor | None) -> Tensor:
        (H, W), ws, s = size, self.window, self.shift
        B, _, C = t.shape
        x = self.norm1(t).view(B, H, W, C)
        if s:
            x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
        win = x.view(B, H // ws, ws, W // ws, ws, C).permute(0, 1, 3, 2, 4, 5).reshape(B, -1, ws * ws, C)
        win = self.attn(win, mask if s else None)  # [B, nW, N, C]
        x = win.view(B, H // ws, W // ws, ws, ws, C).permute(0, 1, 3, 2, 4, 5).reshape(B, H, W, C)
        if s:
            x = torch.roll(x, shifts=(s, s), dims=(1, 2))
        t = t + x.reshape(B, H * W, C)
        return t + self.mlp(self.norm2(t))


class _BlockGroup(nn.Module):
    def __init__(self, blocks: list[_SwinBlock]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)


class _RSTB(nn.Module):
    """Residual Swin Transformer block: Swin blocks, a 3x3 conv on the map, plus the input."""

    def __init__(self, dim: int, depth: int, heads: int, window: int, mlp_ratio: float) -> None:
        super().__init__()
        self.residual_group = _BlockGroup(
            [_SwinBlock(dim, heads, window, 0 if i % 2 == 0 else window // 2, mlp_ratio) for i in range(depth)]
        )
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, t: Tensor, size: tuple[int, int], mask: Tensor) -> Tensor:
        y = t
        for block in self.residual_group.blocks:
            y = block(y, size, mask)
        B, _, C = y.shape
        y = self.conv(y.transpose(1, 2).reshape(B, C, *size))
        return y.flatten(2).transpose(1, 2) + t


class _TokenNorm(nn.Module):
    """Holds ``norm`` (upstream's ``patch_embed`` with ``patch_norm=True``: a LayerNorm on the tokens)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)


class SwinIR(nn.Module):
    """SwinIR without upsampler, as LTE's repository uses it for SwinIR-LIIF / SwinIR-LTE.

    ``conv_first`` (3x3, ``3 -> E``), token LayerNorm, residual Swin Transformer blocks (each: Swin
    blocks alternating plain and shifted windows, then a 3x3 conv, plus its input), LayerNorm,
    ``conv_after_body`` plus the shallow features, ``conv_before_upsample`` (3x3 ``E -> num_feat``
    + LeakyReLU 0.01). Patch size 1, no absolute position embedding, ``resi_connection='1conv'``;
    like upstream's ``forward`` the input is not mean-shifted. Upstream's ``img_size`` (48) only
    sizes a stored copy of the shifted-window mask, which is computed here for each input size.

    Not a stack of convolutions: windowed attention reaches beyond any conv receptive radius, so a
    tiled encoding (:func:`decodelab.vision.lsr.render.render_tiled`) is not exact for it.

    Args:
        embed_dim: token width ``E`` (180).
        depths: Swin blocks per residual group (``[6] * 6``).
        num_heads: attention heads per residual group (``[6] * 6``).
        window_size: attention window side (8).
        mlp_ratio: MLP hidden width / ``E`` (2).
        num_feat: output channels (64).
    """

    def __init__(
        self,
        embed_dim: int = 180,
        depths: list[int] | tuple[int, ...] = (6, 6, 6, 6, 6, 6),
        num_heads: list[int] | tuple[int, ...] = (6, 6, 6, 6, 6, 6),
        window_size: int = 8,
        mlp_ratio: float = 2.0,
        num_feat: int = 64,
    ) -> None:
        super().__init__()
        if len(depths) != len(num_heads) or not depths:
            raise ValueError(f"depths {list(depths)} and num_heads {list(num_heads)} need one entry per group")
        if window_size < 2:
            raise ValueError(f"window_size must be >= 2, got {window_size}")
        self.window_size = int(window_size)
        self.conv_first = nn.Conv2d(3, embed_dim, 3, padding=1)
        self.patch_embed = _TokenNorm(embed_dim)
        self.layers = nn.ModuleList(
            [_RSTB(embed_dim, int(d), int(h), self.window_size, float(mlp_ratio)) for d, h in zip(depths, num_heads)]
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, padding=1)
        self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, padding=1), nn.LeakyReLU(0.01))
        self.out_dim, self.stride = num_feat, 1
        for m in self.modules():  # upstream's _init_weights
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def pad_input(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Reflect-pad the bottom/right to a multiple of the window (replicate when too small to reflect)."""
        H, W = x.shape[-2:]
        ph, pw = (-H) % self.window_size, (-W) % self.window_size
        if not ph and not pw:
            return x, (0, 0)
        mode = "reflect" if ph < H and pw < W else "replicate"
        return F.pad(x, (0, pw, 0, ph), mode=mode), (0, 0)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pad_input(x)[0]
        B, _, H, W = x.shape
        shallow = self.conv_first(x)  # [B, E, H, W]
        t = self.patch_embed.norm(shallow.flatten(2).transpose(1, 2))  # [B, H W, E]
        ws = self.window_size
        mask = shifted_window_mask(H, W, ws, ws // 2, x.device).to(t.dtype)
        for layer in self.layers:
            t = layer(t, (H, W), mask)
        body = self.norm(t).transpose(1, 2).reshape(B, -1, H, W)
        return self.conv_before_upsample(self.conv_after_body(body) + shallow)  # [B, num_feat, H, W]


ENCODERS: dict[str, type[nn.Module]] = {
    "patch": PatchEncoder,
    "edsr_baseline": EDSRBaseline,
    "rdn": RDN,
    "swinir": SwinIR,
}


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


def pad_for_encoder(encoder: nn.Module, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
    """The canvas ``encoder`` sees: its own ``pad_input`` rule, else padded to a multiple of its stride."""
    pad = getattr(encoder, "pad_input", None)
    if pad is not None:
        return pad(x)
    return pad_to_multiple(x, encoder.stride) if encoder.stride > 1 else (x, (0, 0))


def encode_to_grid(encoder: nn.Module, x: Tensor) -> tuple[Tensor, Geometry]:
    """Run ``encoder`` on ``x`` padded to its canvas (:func:`pad_for_encoder`) and describe the grid."""
    H, W = x.shape[-2:]
    xp, offset = pad_for_encoder(encoder, x)
    feat = encoder(xp)  # [B, C, h, w]
    geo = Geometry((H, W), tuple(xp.shape[-2:]), offset, tuple(feat.shape[-2:]))
    return feat, geo
