"""MCW-Net: single-image deraining with multi-level connections and wide regional non-local blocks.

Park, Jeon, Lee and Kang, "MCW-Net: Single Image Deraining with Multi-level Connections and Wide
Regional Non-local Blocks", Signal Processing: Image Communication 105:116701 (2022), arXiv:2009.13990.
Architecture facts (layer order, widths, region grids, submodule names) were read from the authors'
code, github.com/yechanp/MCW-Net (``MCW_Net_small.py`` / ``MCW_Net_large.py``); every line here is
written for decodelab. The submodule attribute names are the upstream ones (``conv_i``,
``DCR_block11.0.conv_1``, ``NonLocalBlock2D12.non_local_block.g.0``, ``tran1to4.2.conv``,
``se_connect4.se_layer.fc.0``, ...), so an upstream state dict maps onto :class:`MCWNet` key for
key (see :mod:`decodelab.derain.importer`).

Structure (``oc`` = base width; levels 1-4 have ``oc, 2oc, 4oc, 8oc`` channels at ``1, 1/2, 1/4,
1/8`` resolution):

- head: 1x1 conv 3 -> oc + PReLU;
- each level body: two densely-connected residual (DCR) blocks and one wide regional non-local
  (WRNL) block; encoder features of every level are sent to every other level through chains of
  down blocks (Haar DWT + 1x1 conv + PReLU) and up blocks (1x1 conv + PReLU + inverse Haar);
- multi-level connection at each decoder level: concatenate the four same-size tensors, apply
  squeeze-excitation with a residual, 1x1 conv back to the level width + PReLU;
- tail: DCR, 1x1 conv oc -> 3, PReLU = the rain residual; output = input + residual.

Differences from upstream, all at sizes (or devices) upstream cannot process:

- inputs of any size are reflect-padded to a multiple of 8 and cropped back (upstream's Haar DWT
  needs sizes divisible by 8);
- the upstream IWT allocates on ``.cuda()``; this one is device-agnostic;
- a WRNL region one pixel high or wide keeps that single row/column as its key/value (upstream's
  2x2 max-pool raises "output size is too small" there).

Everything else is upstream's computation at every size it accepts: WRNL regions are the ones
``torch.chunk`` cuts (``ceil(n / parts)`` pixels each, the last one smaller, and fewer regions than
the grid asks for when the chunks run out: 6 rows in 4 parts are 3 regions of 2), and the key/value
2x2 max-pool floors, so a region with an odd side drops its last row/column from the keys and
values (its every pixel is still a query). E.g. a 96x96 input has 3x12 regions at level 4 and a
480x320 one 15x40.

Example:
    >>> import torch
    >>> from decodelab.derain import mcwnet_small
    >>> model = mcwnet_small().eval()
    >>> with torch.no_grad():
    ...     out = model(torch.rand(1, 3, 101, 77))  # any size; [1, 3, 101, 77]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from decodelab.config import register_to_config
from decodelab.hub import PretrainedMixin
from decodelab.registry import register_architecture, register_model

__all__ = [
    "DCRBlock",
    "DEFAULT_GRIDS",
    "Down",
    "KeyValuePool",
    "MCWNet",
    "NonLocalBlock2D",
    "RegionNonLocalBlock",
    "SELayer",
    "SEConcatConv",
    "Up",
    "dwt_haar",
    "iwt_haar",
    "mcwnet_large",
    "mcwnet_small",
    "region_bounds",
    "test_mcwnet",
]

#: WRNL grids (rows x columns of regions) at levels 1, 2, 3, 4: always H/16 x W/4 regions at full
#: resolution, i.e. horizontally wide because rain streaks run mostly vertically.
DEFAULT_GRIDS: tuple[tuple[int, int], ...] = ((16, 4), (8, 2), (4, 1), (4, 1))
#: Three Haar DWTs halve the resolution three times: sizes must be multiples of 8.
SIZE_MULTIPLE = 8


# ------------------------------------------------------------------------------------- Haar wavelet
def dwt_haar(x: Tensor) -> Tensor:
    """One-level 2-D Haar DWT ``[B, C, H, W] -> [B, 4C, H/2, W/2]`` with bands ``[LL, HL, LH, HH]``.

    The ``1/2`` scaling makes the transform orthonormal, so :func:`iwt_haar` is its exact inverse.

    Raises:
        ValueError: when ``H`` or ``W`` is odd.
    """
    h, w = x.shape[-2:]
    if h % 2 or w % 2:
        raise ValueError(f"the Haar DWT needs even height and width, got {h}x{w}")
    x = x / 2
    a = x[..., 0::2, 0::2]  # even row, even column
    b = x[..., 1::2, 0::2]  # odd row, even column
    c = x[..., 0::2, 1::2]  # even row, odd column
    d = x[..., 1::2, 1::2]  # odd row, odd column
    ll = a + b + c + d
    hl = -a - b + c + d
    lh = -a + b - c + d
    hh = a - b - c + d
    return torch.cat([ll, hl, lh, hh], dim=1)  # [B, 4C, H/2, W/2]


def iwt_haar(x: Tensor) -> Tensor:
    """Inverse of :func:`dwt_haar`: ``[B, 4C, H, W] -> [B, C, 2H, 2W]`` (any device and dtype).

    Raises:
        ValueError: when the channel count is not a multiple of 4.
    """
    bsz, c4, h, w = x.shape
    if c4 % 4:
        raise ValueError(f"the inverse Haar DWT needs a multiple of 4 channels, got {c4}")
    ll, hl, lh, hh = (x / 2).chunk(4, dim=1)  # each [B, C, H, W]
    a = ll - hl - lh + hh
    b = ll - hl + lh - hh
    c = ll + hl - lh - hh
    d = ll + hl + lh + hh
    even_rows = torch.stack([a, c], dim=-1)  # [B, C, H, W, 2]: columns 2j, 2j+1
    odd_rows = torch.stack([b, d], dim=-1)
    return torch.stack([even_rows, odd_rows], dim=3).reshape(bsz, c4 // 4, 2 * h, 2 * w)


class DWT(nn.Module):
    """Parameter-free module wrapper of :func:`dwt_haar`."""

    def forward(self, x: Tensor) -> Tensor:
        return dwt_haar(x)


class IWT(nn.Module):
    """Parameter-free module wrapper of :func:`iwt_haar`."""

    def forward(self, x: Tensor) -> Tensor:
        return iwt_haar(x)


# ------------------------------------------------------------------------------------------ blocks
class DCRBlock(nn.Module):
    """Densely-connected residual block: three 3x3 convs on growing concatenations, plus the input.

    Args:
        channels: input = output channels ``c`` (even): convs ``c -> c/2``, ``3c/2 -> c/2``, ``2c -> c``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels % 2:
            raise ValueError(f"a DCR block needs an even channel count, got {channels}")
        half = channels // 2
        self.conv_1 = nn.Conv2d(channels, half, 3, padding=1)
        self.relu1 = nn.PReLU()
        self.conv_2 = nn.Conv2d(channels + half, half, 3, padding=1)
        self.relu2 = nn.PReLU()
        self.conv_3 = nn.Conv2d(2 * channels, channels, 3, padding=1)
        self.relu3 = nn.PReLU()

    def forward(self, x: Tensor) -> Tensor:
        cat = torch.cat([x, self.relu1(self.conv_1(x))], dim=1)  # [B, 3c/2, H, W]
        cat = torch.cat([cat, self.relu2(self.conv_2(cat))], dim=1)  # [B, 2c, H, W]
        return self.relu3(self.conv_3(cat)) + x


class Down(nn.Module):
    """Haar DWT (channels x4, resolution /2), 1x1 conv ``4c -> 2c``, PReLU: ``[c, H, W] -> [2c, H/2, W/2]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.relu = nn.PReLU()
        self.dwt = DWT()
        self.conv = nn.Conv2d(4 * channels, 2 * channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.conv(self.dwt(x)))


class Up(nn.Module):
    """1x1 conv ``c -> 2c``, PReLU, inverse Haar (channels /4, resolution x2): ``[c, H, W] -> [c/2, 2H, 2W]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels % 2:
            raise ValueError(f"an up block needs an even channel count, got {channels}")
        self.relu = nn.PReLU()
        self.iwt = IWT()
        self.conv = nn.Conv2d(channels, 2 * channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.iwt(self.relu(self.conv(x)))


class SELayer(nn.Module):
    """Squeeze-excitation channel attention: ``x * sigmoid(fc2(relu(fc1(mean_hw(x)))))`` (no biases)."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = channels // reduction
        if hidden < 1:
            raise ValueError(f"SE reduction {reduction} leaves no hidden units for {channels} channels")
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        scale = self.fc(x.mean(dim=(2, 3)))  # [B, C]
        return x * scale[:, :, None, None]


class SEConcatConv(nn.Module):
    """Multi-level connection fuse: ``PReLU(conv1x1(SE(x) + x))``, ``c_in -> c_out`` channels."""

    def __init__(self, channels_in: int, channels_out: int, reduction: int) -> None:
        super().__init__()
        self.relu = nn.PReLU()
        self.se_layer = SELayer(channels_in, reduction)
        self.conv = nn.Conv2d(channels_in, channels_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.conv(self.se_layer(x) + x))


class KeyValuePool(nn.Module):
    """The 2x2 max-pool of the non-local keys and values, in upstream's floor mode.

    ``[N, C, h, w] -> [N, C, h // 2, w // 2]``: an odd last row/column is dropped, as
    ``nn.MaxPool2d(2)`` does. A side of one pixel, which upstream cannot pool (its pool output would be
    empty), keeps that single row/column: ``[N, C, 1, w] -> [N, C, 1, w // 2]``.
    """

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        return F.max_pool2d(x, kernel_size=(min(2, h), min(2, w)), stride=2)


class NonLocalBlock2D(nn.Module):
    """Embedded-Gaussian non-local block (Wang et al. 2018) with sub-sampled keys/values, no BN.

    ``z = x + W(softmax(theta(x)^T phi(x)) g(x))`` with ``theta, phi, g`` 1x1 convs ``c -> c/2``,
    a 2x2 max-pool after ``phi`` and ``g`` (:class:`KeyValuePool`), and ``W`` a zero-initialised
    1x1 conv ``c/2 -> c`` (so the block is the identity at initialisation). The dot products are not
    scaled, as upstream.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.inter_channels = max(channels // 2, 1)
        self.g = nn.Sequential(nn.Conv2d(channels, self.inter_channels, 1), KeyValuePool())
        self.W = nn.Conv2d(self.inter_channels, channels, 1)
        nn.init.zeros_(self.W.weight)
        nn.init.zeros_(self.W.bias)
        self.theta = nn.Conv2d(channels, self.inter_channels, 1)
        self.phi = nn.Sequential(nn.Conv2d(channels, self.inter_channels, 1), KeyValuePool())

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        # contiguous [N, 1, L, c'] inputs keep SDPA on its fused CPU kernel (no [L, L/4] matrix in memory)
        q = self.theta(x).flatten(2).transpose(1, 2)[:, None].contiguous()  # [N, 1, hw, c']
        k = self.phi(x).flatten(2).transpose(1, 2)[:, None].contiguous()  # [N, 1, (h//2)(w//2), c']
        v = self.g(x).flatten(2).transpose(1, 2)[:, None].contiguous()
        y = F.scaled_dot_product_attention(q, k, v, scale=1.0)[:, 0]  # [N, hw, c']
        y = y.transpose(1, 2).reshape(n, self.inter_channels, h, w)
        return x + self.W(y)


def region_bounds(size: int, parts: int) -> list[int]:
    """Edges of the regions ``torch.chunk(parts)`` cuts an axis of ``size`` pixels into (upstream's split).

    Every region has ``ceil(size / parts)`` pixels except the last, which holds the rest; when the
    chunks cover the axis early there are fewer than ``parts`` regions (``region_bounds(6, 4)`` is
    ``[0, 2, 4, 6]``), and a map smaller than ``parts`` gets one region per pixel.
    """
    if size < 1 or parts < 1:
        raise ValueError(f"cannot split {size} pixels into {parts} regions")
    step = -(-size // parts)  # ceil
    return [*range(0, size, step), size]


class RegionNonLocalBlock(nn.Module):
    """Wide regional non-local block: one shared :class:`NonLocalBlock2D` applied to each grid region.

    Args:
        channels: feature channels.
        grid: ``(rows, columns)`` of regions, cut as ``torch.chunk`` cuts them (:func:`region_bounds`).
    """

    def __init__(self, channels: int, grid: Sequence[int] = (8, 8)) -> None:
        super().__init__()
        if len(grid) != 2 or min(grid) < 1:
            raise ValueError(f"grid must be two positive ints (rows, columns), got {grid}")
        self.non_local_block = NonLocalBlock2D(channels)
        self.grid = (int(grid[0]), int(grid[1]))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        gh, gw = self.grid
        rh, rw = -(-h // gh), -(-w // gw)  # region size (ceil), as torch.chunk
        if h % rh == 0 and w % rw == 0:  # all regions alike: one batch
            nh, nw = h // rh, w // rw
            regions = x.reshape(b, c, nh, rh, nw, rw).permute(0, 2, 4, 1, 3, 5).reshape(b * nh * nw, c, rh, rw)
            out = self.non_local_block(regions).reshape(b, nh, nw, c, rh, rw)
            return out.permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)
        return self._uneven(x)

    def _uneven(self, x: Tensor) -> Tensor:
        """Regions of at most four shapes (full, short last row, narrow last column, corner); each
        shape group runs as one batch."""
        rows, cols = region_bounds(x.shape[2], self.grid[0]), region_bounds(x.shape[3], self.grid[1])
        cells = [(i, j) for i in range(len(rows) - 1) for j in range(len(cols) - 1)]
        groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for i, j in cells:
            groups.setdefault((rows[i + 1] - rows[i], cols[j + 1] - cols[j]), []).append((i, j))
        done: dict[tuple[int, int], Tensor] = {}
        for members in groups.values():
            crops = [x[:, :, rows[i] : rows[i + 1], cols[j] : cols[j + 1]] for i, j in members]
            out = self.non_local_block(torch.cat(crops, dim=0)).split(x.shape[0], dim=0)
            done.update(zip(members, out))
        return torch.cat(
            [torch.cat([done[(i, j)] for j in range(len(cols) - 1)], dim=3) for i in range(len(rows) - 1)], dim=2
        )


def _seq(*blocks: nn.Module) -> nn.Sequential:
    """Upstream wraps every block in ``nn.Sequential`` (``make_layer``), hence the ``.0.`` in its keys."""
    return nn.Sequential(*blocks)


# ------------------------------------------------------------------------------------------- model
@register_architecture
class MCWNet(nn.Module, PretrainedMixin):
    """MCW-Net deraining network; ``forward`` maps a rainy image in ``[0, 1]`` to the derained image.

    Args:
        oc: base width (16 for the small model, 128 for the large one); must be even.
        se_reduction: SE reduction of the multi-level connections (4 small, 16 large).
        grids: WRNL ``(rows, columns)`` at levels 1-4.
    """

    @register_to_config
    def __init__(
        self,
        oc: int = 16,
        se_reduction: int = 4,
        grids: Sequence[Sequence[int]] = DEFAULT_GRIDS,
    ) -> None:
        super().__init__()
        if oc < 2 or oc % 2:
            raise ValueError(f"oc must be an even width >= 2, got {oc}")
        if len(grids) != 4:
            raise ValueError(f"grids needs one (rows, columns) pair per level (4), got {len(grids)}")
        g1, g2, g3, g4 = (tuple(g) for g in grids)
        r = se_reduction
        # encoder, level 1 (oc)
        self.conv_i = nn.Conv2d(3, oc, 1)
        self.relu1 = nn.PReLU()
        self.DCR_block11, self.DCR_block12 = _seq(DCRBlock(oc)), _seq(DCRBlock(oc))
        self.NonLocalBlock2D12 = RegionNonLocalBlock(oc, g1)
        self.down1 = _seq(Down(oc))
        self.tran1to2 = _seq(Down(oc))
        self.tran1to3 = _seq(Down(oc), Down(2 * oc))
        self.tran1to4 = _seq(Down(oc), Down(2 * oc), Down(4 * oc))
        # level 2 (2oc)
        self.DCR_block21, self.DCR_block22 = _seq(DCRBlock(2 * oc)), _seq(DCRBlock(2 * oc))
        self.NonLocalBlock2D22 = RegionNonLocalBlock(2 * oc, g2)
        self.down2 = _seq(Down(2 * oc))
        self.tran2to1 = _seq(Up(2 * oc))
        self.tran2to3 = _seq(Down(2 * oc))
        self.tran2to4 = _seq(Down(2 * oc), Down(4 * oc))
        # level 3 (4oc)
        self.DCR_block31, self.DCR_block32 = _seq(DCRBlock(4 * oc)), _seq(DCRBlock(4 * oc))
        self.NonLocalBlock2D32 = RegionNonLocalBlock(4 * oc, g3)
        self.down3 = _seq(Down(4 * oc))
        self.tran3to1 = _seq(Up(4 * oc), Up(2 * oc))
        self.tran3to2 = _seq(Up(4 * oc))
        self.tran3to4 = _seq(Down(4 * oc))
        # level 4 / bottleneck (8oc)
        self.se_connect4 = SEConcatConv(32 * oc, 8 * oc, r)
        self.DCR_block41, self.DCR_block42 = _seq(DCRBlock(8 * oc)), _seq(DCRBlock(8 * oc))
        self.NonLocalBlock2D42 = RegionNonLocalBlock(8 * oc, g4)
        self.up3 = _seq(Up(8 * oc))
        # decoder, level 3
        self.se_connect3 = SEConcatConv(16 * oc, 4 * oc, r)
        self.DCR_block33, self.DCR_block34 = _seq(DCRBlock(4 * oc)), _seq(DCRBlock(4 * oc))
        self.NonLocalBlock2D34 = RegionNonLocalBlock(4 * oc, g3)
        # decoder, level 2
        self.up2 = _seq(Up(4 * oc))
        self.se_connect2 = SEConcatConv(8 * oc, 2 * oc, r)
        self.DCR_block23, self.DCR_block24 = _seq(DCRBlock(2 * oc)), _seq(DCRBlock(2 * oc))
        self.NonLocalBlock2D24 = RegionNonLocalBlock(2 * oc, g2)
        # decoder, level 1 and tail
        self.se_connect1 = SEConcatConv(4 * oc, oc, r)
        self.up1 = _seq(Up(2 * oc))
        self.DCR_block13, self.DCR_block14 = _seq(DCRBlock(oc)), _seq(DCRBlock(oc))
        self.NonLocalBlock2D15 = RegionNonLocalBlock(oc, g1)
        self.DCR_block16 = _seq(DCRBlock(oc))
        self.conv_f = nn.Conv2d(oc, 3, 1)
        self.relu2 = nn.PReLU()

    def rain_residual(self, x: Tensor) -> Tensor:
        """The residual ``R`` (upstream's "attention") of an input whose sizes are multiples of 8.

        The derained image is ``x + R``.

        Raises:
            ValueError: when ``x`` is not ``[B, 3, H, W]`` with ``H, W`` multiples of 8.
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected RGB images [B, 3, H, W], got shape {tuple(x.shape)}")
        if x.shape[2] % SIZE_MULTIPLE or x.shape[3] % SIZE_MULTIPLE:
            raise ValueError(f"rain_residual needs sizes that are multiples of 8, got {tuple(x.shape[2:])}; "
                             "call the model itself (it pads and crops)")  # fmt: skip
        # encoder
        out = self.DCR_block12(self.DCR_block11(self.relu1(self.conv_i(x))))
        out1 = self.NonLocalBlock2D12(out)  # [B, oc, H, W]
        out = self.DCR_block22(self.DCR_block21(self.down1(out1)))
        out2 = self.NonLocalBlock2D22(out)  # [B, 2oc, H/2, W/2]
        out = self.DCR_block32(self.DCR_block31(self.down2(out2)))
        out3 = self.NonLocalBlock2D32(out)  # [B, 4oc, H/4, W/4]
        # level 4: every encoder level resized to H/8 (8oc each) + the down path
        conc4 = self.se_connect4(
            torch.cat([self.tran1to4(out1), self.tran2to4(out2), self.tran3to4(out3), self.down3(out3)], dim=1)
        )  # [B, 8oc, H/8, W/8]
        out = self.NonLocalBlock2D42(self.DCR_block42(self.DCR_block41(conc4))) + conc4
        # decoder level 3
        mlc = torch.cat([self.tran1to3(out1), self.tran2to3(out2), out3, self.up3(out)], dim=1)  # [B, 16oc, .]
        out = self.NonLocalBlock2D34(self.DCR_block34(self.DCR_block33(self.se_connect3(mlc))))
        # decoder level 2
        mlc = torch.cat([self.tran1to2(out1), out2, self.tran3to2(out3), self.up2(out)], dim=1)  # [B, 8oc, .]
        out = self.NonLocalBlock2D24(self.DCR_block24(self.DCR_block23(self.se_connect2(mlc))))
        # decoder level 1
        mlc = torch.cat([out1, self.tran2to1(out2), self.tran3to1(out3), self.up1(out)], dim=1)  # [B, 4oc, H, W]
        out = self.NonLocalBlock2D15(self.DCR_block14(self.DCR_block13(self.se_connect1(mlc))))
        return self.relu2(self.conv_f(self.DCR_block16(out)))  # [B, 3, H, W]

    def forward(self, x: Tensor) -> Tensor:
        """Derain ``x`` ``[B, 3, H, W]`` (any size; reflect-padded to a multiple of 8 and cropped back)."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected RGB images [B, 3, H, W], got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        xp = pad_to_multiple(x, SIZE_MULTIPLE)
        return (xp + self.rain_residual(xp))[..., :h, :w]


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Pad the bottom/right of ``x`` ``[B, C, H, W]`` to multiples of ``multiple`` (reflect; replicate
    when the image is too small to reflect)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not ph and not pw:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


# -------------------------------------------------------------------------------- registered sizes
def _build(preset: dict[str, Any], kwargs: dict[str, Any]) -> MCWNet:
    return MCWNet(**{**preset, **kwargs})


@register_model("mcwnet_small", kind="derainer", family="mcwnet")
def mcwnet_small(**kwargs: Any) -> MCWNet:
    """MCW-Net small: oc 16, SE reduction 4 (~2.16M parameters; upstream ``MCW_Net_small.Net``)."""
    return _build(dict(oc=16, se_reduction=4), kwargs)


@register_model("mcwnet_large", kind="derainer", family="mcwnet")
def mcwnet_large(**kwargs: Any) -> MCWNet:
    """MCW-Net large: oc 128, SE reduction 16 (~129.5M parameters; upstream ``MCW_Net_large.Net``)."""
    return _build(dict(oc=128, se_reduction=16), kwargs)


@register_model("test_mcwnet", kind="derainer", family="mcwnet")
def test_mcwnet(**kwargs: Any) -> MCWNet:
    """Tiny MCW-Net for tests: oc 4, SE reduction 2, coarse grids (~35k parameters)."""
    return _build(dict(oc=4, se_reduction=2, grids=((4, 2), (2, 2), (2, 1), (1, 1))), kwargs)


test_mcwnet.__test__ = False  # type: ignore[attr-defined]  # not a pytest test despite the name
