"""MCW-Net: block shapes, exact Haar inverses, WRNL regions, residual identity, sizes, parameter counts."""

from __future__ import annotations

import copy
import functools
import math

import pytest
import torch

from decodelab.derain.model import (
    DEFAULT_GRIDS,
    DCRBlock,
    Down,
    KeyValuePool,
    MCWNet,
    NonLocalBlock2D,
    RegionNonLocalBlock,
    SEConcatConv,
    SELayer,
    Up,
    dwt_haar,
    iwt_haar,
    mcwnet_small,
    region_bounds,
    test_mcwnet,
)
from decodelab.registry import MODELS


def _randomize_w(module: torch.nn.Module, seed: int = 0) -> None:
    """Give every non-local output conv non-zero weights (they are zero-initialised)."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, NonLocalBlock2D):
            with torch.no_grad():
                m.W.weight.copy_(torch.randn(m.W.weight.shape, generator=g) * 0.5)


def test_block_shapes() -> None:
    x = torch.randn(2, 8, 16, 24)
    assert DCRBlock(8)(x).shape == (2, 8, 16, 24)
    assert Down(8)(x).shape == (2, 16, 8, 12)
    assert Up(8)(x).shape == (2, 4, 32, 48)
    assert SELayer(8, 4)(x).shape == x.shape
    assert SEConcatConv(8, 3, 2)(x).shape == (2, 3, 16, 24)
    assert NonLocalBlock2D(8)(x).shape == x.shape
    assert RegionNonLocalBlock(8, (4, 2))(x).shape == x.shape
    with pytest.raises(ValueError, match="even"):
        DCRBlock(5)


def test_dwt_iwt_are_exact_inverses() -> None:
    g = torch.Generator().manual_seed(0)
    ints = torch.randint(-50, 50, (2, 3, 8, 12), generator=g).float()  # dyadic arithmetic: exact
    assert dwt_haar(ints).shape == (2, 12, 4, 6)
    assert torch.equal(iwt_haar(dwt_haar(ints)), ints)
    bands = torch.randint(-50, 50, (2, 12, 4, 6), generator=g).float()
    assert torch.equal(dwt_haar(iwt_haar(bands)), bands)
    x = torch.randn(1, 4, 16, 10, generator=g, dtype=torch.float64)
    torch.testing.assert_close(iwt_haar(dwt_haar(x)), x, rtol=0, atol=1e-12)
    # orthonormal: energy preserved, LL of a constant image is 2x the constant
    torch.testing.assert_close(dwt_haar(x).pow(2).sum(), x.pow(2).sum())
    assert torch.equal(dwt_haar(torch.ones(1, 1, 2, 2)).flatten(), torch.tensor([2.0, 0.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="even"):
        dwt_haar(torch.zeros(1, 1, 3, 4))


def test_region_bounds_are_torch_chunks() -> None:
    assert region_bounds(64, 16) == list(range(0, 65, 4))
    assert region_bounds(6, 4) == [0, 2, 4, 6]  # chunks of ceil(6/4) = 2: three regions, not four
    assert region_bounds(40, 16) == [*range(0, 40, 3), 40]  # 13 regions of 3, then one of 1
    assert region_bounds(3, 16) == [0, 1, 2, 3]  # fewer pixels than regions: one per pixel
    for size in range(1, 70):
        for parts in (1, 2, 3, 4, 8, 16):
            lengths = [t.shape[0] for t in torch.arange(size).chunk(parts)]
            b = region_bounds(size, parts)
            assert [b[i + 1] - b[i] for i in range(len(b) - 1)] == lengths, (size, parts)


def test_key_value_pool_floors_like_upstream() -> None:
    x = torch.randn(2, 3, 7, 5)
    assert torch.equal(KeyValuePool()(x), torch.nn.MaxPool2d(2)(x))  # odd sides: last row/column dropped
    assert KeyValuePool()(x).shape == (2, 3, 3, 2)
    row = torch.randn(1, 3, 1, 6)  # upstream's pool raises here; the single row is kept
    torch.testing.assert_close(KeyValuePool()(row), row.view(1, 3, 1, 3, 2).amax(-1), rtol=0, atol=0)
    assert KeyValuePool()(torch.randn(1, 3, 1, 1)).shape == (1, 3, 1, 1)


def test_model_uses_the_documented_grids() -> None:
    m = test_mcwnet(grids=DEFAULT_GRIDS)
    grids = {n: blk.grid for n, blk in m.named_modules() if isinstance(blk, RegionNonLocalBlock)}
    assert grids == {
        "NonLocalBlock2D12": (16, 4), "NonLocalBlock2D15": (16, 4),
        "NonLocalBlock2D22": (8, 2), "NonLocalBlock2D24": (8, 2),
        "NonLocalBlock2D32": (4, 1), "NonLocalBlock2D34": (4, 1),
        "NonLocalBlock2D42": (4, 1),
    }  # fmt: skip


@pytest.mark.parametrize("size", [(64, 32), (37, 22)])
def test_wrnl_regions_are_independent_and_tile_the_map(size: tuple[int, int]) -> None:
    """Perturbing one key pixel changes exactly the output of the grid region that holds it."""
    h, w = size
    torch.manual_seed(0)  # fixed weights: the check below does not depend on the test order
    blk = RegionNonLocalBlock(8, (16, 4))
    _randomize_w(blk)
    x = torch.randn(1, 8, h, w, generator=torch.Generator().manual_seed(1))
    rows, cols = region_bounds(h, 16), region_bounds(w, 4)
    base = blk(x)
    for i, j in [(0, 0), (len(rows) // 2 - 1, 2), (len(rows) - 3, len(cols) - 2)]:
        y0, x0 = rows[i], cols[j]  # the first pixel of a region always enters its 2x2 key/value pool
        x2 = x.clone()
        x2[0, :, y0, x0] += 10.0 * torch.randn(8, generator=torch.Generator().manual_seed(i))
        changed = (blk(x2) - base).abs().sum(1)[0] > 0  # [H, W]
        expect = torch.zeros(h, w, dtype=torch.bool)
        expect[rows[i] : rows[i + 1], cols[j] : cols[j + 1]] = True
        assert torch.equal(changed, expect), (i, j)


def test_uneven_regions_match_a_per_region_loop() -> None:
    blk = RegionNonLocalBlock(6, (4, 3))
    _randomize_w(blk)
    x = torch.randn(2, 6, 10, 11, generator=torch.Generator().manual_seed(2))
    rows, cols = region_bounds(10, 4), region_bounds(11, 3)
    ref = torch.zeros_like(x)
    for i in range(len(rows) - 1):
        for j in range(len(cols) - 1):
            sl = (slice(None), slice(None), slice(rows[i], rows[i + 1]), slice(cols[j], cols[j + 1]))
            ref[sl] = blk.non_local_block(x[sl])
    torch.testing.assert_close(blk(x), ref)
    even = torch.randn(2, 6, 8, 9)  # 8 rows / 4 = 2 even, 9 columns / 3 = 3 even: batched fast path
    ref2 = torch.cat([torch.cat([blk.non_local_block(r) for r in row.split(3, 3)], 3) for row in even.split(2, 2)], 2)
    torch.testing.assert_close(blk(even), ref2)


def test_nonlocal_is_identity_at_init() -> None:
    x = torch.randn(1, 8, 6, 10)
    assert torch.equal(NonLocalBlock2D(8)(x), x)


def test_output_equals_input_when_residual_is_zeroed() -> None:
    m = test_mcwnet().eval()
    _randomize_w(m)
    with torch.no_grad():
        m.conv_f.weight.zero_()
        m.conv_f.bias.zero_()
    x = torch.rand(2, 3, 29, 45)
    assert torch.equal(m(x), x)
    with torch.no_grad():
        m.conv_f.bias.fill_(0.1)  # the check can fail: a non-zero residual moves the output
    assert not torch.equal(m(x), x)


@pytest.mark.parametrize("size", [(1, 1), (7, 5), (8, 8), (33, 17), (40, 64)])
def test_any_input_size(size: tuple[int, int]) -> None:
    m = test_mcwnet().eval()
    with torch.no_grad():
        y = m(torch.rand(1, 3, *size))
    assert y.shape == (1, 3, *size) and torch.isfinite(y).all()


def test_rain_residual_needs_multiples_of_8_and_rgb() -> None:
    m = test_mcwnet()
    with pytest.raises(ValueError, match="multiples of 8"):
        m.rain_residual(torch.rand(1, 3, 12, 16))
    with pytest.raises(ValueError, match="RGB"):
        m(torch.rand(1, 1, 16, 16))


def test_parameter_counts_match_upstream() -> None:
    small = sum(p.numel() for p in mcwnet_small().parameters())
    assert small == 2_158_586  # upstream MCW_Net_small.Net, counted from its layer shapes (~2.16M)
    with torch.device("meta"):
        large = MODELS.create("mcwnet_large")
    assert sum(p.numel() for p in large.parameters()) == 129_539_018  # ~129.5M
    assert len(large.state_dict()) == len(mcwnet_small().state_dict()) == 277


def test_upstream_key_names() -> None:
    keys = set(mcwnet_small().state_dict())
    for k in ("conv_i.weight", "relu1.weight", "DCR_block11.0.conv_1.weight", "DCR_block11.0.relu3.weight",
              "NonLocalBlock2D12.non_local_block.g.0.weight", "NonLocalBlock2D12.non_local_block.phi.0.bias",
              "NonLocalBlock2D12.non_local_block.theta.weight", "NonLocalBlock2D12.non_local_block.W.weight",
              "tran1to4.2.conv.weight", "tran3to1.1.relu.weight", "se_connect4.se_layer.fc.0.weight",
              "se_connect4.se_layer.fc.2.weight", "se_connect1.conv.bias", "up1.0.conv.weight", "conv_f.bias",
              "relu2.weight"):  # fmt: skip
        assert k in keys, k
    assert mcwnet_small().state_dict()["se_connect4.se_layer.fc.0.weight"].shape == (128, 512)  # 32oc -> 32oc/4


def _seeded_state(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k in sorted(state):
        v = state[k]
        if v.dim() > 1:
            out[k] = (torch.rand(v.shape, generator=g) * 2 - 1) / math.sqrt(v[0].numel())
        elif v.numel() == 1:
            out[k] = 0.25 + (torch.rand(v.shape, generator=g) - 0.5) * 0.1
        else:
            out[k] = (torch.rand(v.shape, generator=g) - 0.5) * 0.2
    return out


def test_matches_the_upstream_network_numerically() -> None:
    """Rain residual of the small model with seeded weights (non-local W included) on a 64x64 input.

    The reference values were computed once with the authors' ``MCW_Net_small.Net`` (github.com/
    yechanp/MCW-Net; its IWT's ``.cuda()`` bypassed) loaded with the same state dict.
    """
    m = mcwnet_small().eval()
    m.load_state_dict(_seeded_state(m.state_dict(), 0))
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        r = m.rain_residual(x)
    ref = torch.tensor([
        [-0.012084280140697956, -0.02522546425461769, -0.026437101885676384, -0.03606628626585007],
        [-0.02359607443213463, -0.013428191654384136, -0.014128793962299824, -0.03292487561702728],
        [-0.01570182479918003, -0.03416550159454346, -0.03358069434762001, -0.015527788549661636],
        [-0.003951036836951971, -0.014746306464076042, -0.012029931880533695, -0.014038365334272385],
    ])  # fmt: skip
    torch.testing.assert_close(r[0, 1, ::16, ::16], ref, rtol=0, atol=2e-6)
    ref_row = [-0.020852943882346153, 0.09445983916521072, -0.01882949285209179, 0.0857716053724289]
    torch.testing.assert_close(r[0, 1, 30, 40:44], torch.tensor(ref_row), rtol=0, atol=2e-6)


def _upstream_wrnl(blk: RegionNonLocalBlock, x: torch.Tensor, ceil_mode: bool = False) -> torch.Tensor:
    """The authors' ``RegionNONLocalBlock`` as their ``MCW_Net_*.py`` computes it, written out here:
    ``x.chunk(rows, dim=2)``, each row ``.chunk(cols, dim=3)``; per region the embedded-Gaussian
    non-local block with ``nn.MaxPool2d(2)`` (floor) after ``phi`` and ``g``, plain matmuls and softmax."""
    nl = blk.non_local_block
    out_rows = []
    for row in x.chunk(blk.grid[0], dim=2):
        out = []
        for r in row.chunk(blk.grid[1], dim=3):
            n, _, h, w = r.shape
            pool = torch.nn.MaxPool2d(2, ceil_mode=ceil_mode)
            g = pool(nl.g[0](r)).view(n, nl.inter_channels, -1).permute(0, 2, 1)  # [n, L/4, c']
            theta = nl.theta(r).view(n, nl.inter_channels, -1).permute(0, 2, 1)  # [n, L, c']
            phi = pool(nl.phi[0](r)).view(n, nl.inter_channels, -1)  # [n, c', L/4]
            y = torch.matmul(torch.softmax(torch.matmul(theta, phi), dim=-1), g)  # [n, L, c']
            y = y.permute(0, 2, 1).contiguous().view(n, nl.inter_channels, h, w)
            out.append(nl.W(y) + r)
        out_rows.append(torch.cat(out, dim=3))
    return torch.cat(out_rows, dim=2)


def _with_upstream_wrnl(model: MCWNet, ceil_mode: bool = False) -> MCWNet:
    ref = copy.deepcopy(model)
    for blk in ref.modules():
        if isinstance(blk, RegionNonLocalBlock):
            blk.forward = functools.partial(_upstream_wrnl, blk, ceil_mode=ceil_mode)  # type: ignore[method-assign]
    return ref


#: Region sizes (rows x columns, as torch.chunk cuts them) each WRNL level sees; odd sides marked *.
ODD_REGIONS = {
    (96, 96): {"NonLocalBlock2D12": (6, 24), "NonLocalBlock2D22": (6, 24), "NonLocalBlock2D32": (6, 24),
               "NonLocalBlock2D42": (3, 12)},  # * level 4: 3 rows
    (480, 320): {"NonLocalBlock2D12": (30, 80), "NonLocalBlock2D22": (30, 80), "NonLocalBlock2D32": (30, 80),
                 "NonLocalBlock2D42": (15, 40)},  # * level 4: 15 rows
}  # fmt: skip


@pytest.mark.parametrize(("size", "oc"), [((96, 96), 16), ((480, 320), 4)])
def test_matches_upstream_pooling_and_regions_at_odd_region_sizes(size: tuple[int, int], oc: int) -> None:
    """At 96x96 and 480x320 (H x W) the level-4 regions have an odd number of rows: upstream floors
    the key/value pool there. The whole model (the small one at 96x96; at 480x320 a 4-wide one with
    the same grids, to keep the test short) equals the upstream computation in float64."""
    torch.manual_seed(0)
    m = MCWNet(oc=oc, se_reduction=4 if oc == 16 else 2).double().eval()
    m.load_state_dict({k: v.double() for k, v in _seeded_state(m.state_dict(), 0).items()})
    seen: dict[str, tuple[int, int]] = {}

    def record(name: str):
        def hook(module: torch.nn.Module, args: tuple) -> None:
            seen.setdefault(name, tuple(args[0].shape[-2:]))

        return hook

    hooks = [blk.register_forward_pre_hook(record(name))
             for name, blk in m.named_modules() if isinstance(blk, RegionNonLocalBlock)]  # fmt: skip
    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        ours = m.rain_residual(x)
        for hk in hooks:
            hk.remove()
        ref = _with_upstream_wrnl(m).rain_residual(x)
        ceil_ref = _with_upstream_wrnl(m, ceil_mode=True).rain_residual(x)
    grids = {n: blk.grid for n, blk in m.named_modules() if isinstance(blk, RegionNonLocalBlock)}
    for name, expected in ODD_REGIONS[size].items():
        h, w = seen[name]
        region = (torch.zeros(h).chunk(grids[name][0])[0].numel(), torch.zeros(w).chunk(grids[name][1])[0].numel())
        assert region == expected, name
        rows = region_bounds(h, grids[name][0])
        assert rows[1] - rows[0] == expected[0] and all(b - a == expected[0] for a, b in zip(rows, rows[1:]))
    assert any(r % 2 for r in ODD_REGIONS[size]["NonLocalBlock2D42"])
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-10)
    assert (ceil_ref - ref).abs().max() > 1e-7  # the previous ceil-mode pooling fails this test (float64 noise ~1e-15)


def test_registry_and_save_load_round_trip(tmp_path) -> None:
    assert {"mcwnet_small", "mcwnet_large", "test_mcwnet"} <= set(MODELS.list(kind="derainer"))
    m = test_mcwnet().eval()
    _randomize_w(m)
    m.save_pretrained(tmp_path / "m")
    m2 = MCWNet.from_pretrained(tmp_path / "m")
    x = torch.rand(1, 3, 24, 16)
    with torch.no_grad():
        assert torch.equal(m(x), m2(x))
    assert m2.config["oc"] == 4 and m2.config["grids"] == [[4, 2], [2, 2], [2, 1], [1, 1]]


def test_backward_and_device_agnostic_iwt() -> None:
    m = test_mcwnet()
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    m(x).mean().backward()
    assert x.grad is not None and all(p.grad is not None for p in m.parameters() if p.requires_grad)
    y = iwt_haar(torch.randn(1, 4, 2, 2, dtype=torch.float64))
    assert y.dtype == torch.float64 and y.device.type == "cpu"


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="oc"):
        MCWNet(oc=3)
    with pytest.raises(ValueError, match="grids"):
        MCWNet(oc=4, grids=[(1, 1)])
    with pytest.raises(ValueError, match="grid"):
        RegionNonLocalBlock(4, (0, 2))
