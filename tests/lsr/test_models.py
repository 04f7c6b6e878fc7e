"""The shared coordinate-query contract of every continuous model, and model-specific maths."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from decodelab.vision.lsr import create_lsr_model, list_lsr_models, load_lsr_model, make_cell, make_coord
from decodelab.vision.lsr.base import lookup_cells
from decodelab.vision.lsr.basis import basis_frequencies, fourier_basis_1d, soft_order_mask
from decodelab.vision.lsr.encoders import SWINIR_TEST, _SwinBlock, build_encoder, shifted_window_mask
from decodelab.vision.lsr.liif import gather_unfolded, padded_cells
from decodelab.vision.lsr.wire import gabor

# every tiny variant, plus the bandwidth / ensemble variants of the GB-LSR ones
VARIANTS = [(n, {}) for n in list_lsr_models("test_*")] + [
    ("test_gblsr_native", {"bandwidth_mode": "fixed_midpoint"}),
    ("test_gblsr_native", {"bandwidth_mode": "local_logspace"}),
    ("test_gblsr_native", {"bandwidth_mode": "local_linear"}),
    ("test_gblsr_sr", {"local_ensemble": False}),
    ("test_gblsr_sr", {"residual": "bicubic"}),
    ("test_lte", {"freq_layout": "halves"}),  # lte-fast
    ("test_lte", {"encoder": SWINIR_TEST}),  # SwinIR-LTE
    ("test_liif", {"encoder": SWINIR_TEST}),  # SwinIR-LIIF
]
IDS = [n + "".join(f"-{v['name'] if isinstance(v, dict) else v}" for v in kw.values()) for n, kw in VARIANTS]


def _model(name: str, kwargs: dict, seed: int = 0):
    torch.manual_seed(seed)
    model = create_lsr_model(name, **kwargs).eval()
    # zero-initialised heads (GB-LSR's adaptivity) would hide per-patch behaviour: randomise them
    for p in model.parameters():
        if p.dim() >= 1 and torch.count_nonzero(p) == 0:
            torch.nn.init.normal_(p, std=0.3)
    return model


def _image(b: int, h: int, w: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _coords(b: int, q: int, seed: int = 2) -> torch.Tensor:
    return torch.rand(b, q, 2, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_every_family_has_a_tiny_variant() -> None:
    names = list_lsr_models("test_*")
    for family in ("gblsr_native", "gblsr_sr", "liif", "lte", "wire"):
        assert f"test_{family}" in names


@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=IDS)
def test_query_contract(name: str, kwargs: dict) -> None:
    model = _model(name, kwargs)
    x = _image(2, 19, 26)
    coords = _coords(2, 37)
    cells = make_cell((40, 50), 37).expand(2, -1, -1)
    with torch.no_grad():
        state = model.encode(x)
        full = model.query(state, coords, cells, chunk=None)
        chunked = model.query(state, coords, cells, chunk=5)
        shared = model.query(state, coords[0], cells[0], chunk=8)  # [Q, 2] broadcast over the batch
        single = model.query(model.encode(x[1:]), coords[1:], cells[1:], chunk=None)
        img = model.render(x, (23, 41), chunk=50)
    assert full.shape == (2, 37, 3) and torch.isfinite(full).all()
    torch.testing.assert_close(chunked, full, rtol=0, atol=1e-6)
    assert shared.shape == (2, 37, 3)
    torch.testing.assert_close(shared[0], full[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(single[0], full[1], rtol=0, atol=1e-5)  # batch rows are independent
    assert img.shape == (2, 3, 23, 41) and 0 <= img.min() and img.max() <= 1
    # render == query at the pixel centres of the output grid
    with torch.no_grad():
        ref = model.query(state, make_coord((23, 41)), make_cell((23, 41), 23 * 41)).clamp(0, 1)
    torch.testing.assert_close(img, ref.view(2, 23, 41, 3).permute(0, 3, 1, 2), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=IDS)
def test_save_load_round_trip(name: str, kwargs: dict, tmp_path) -> None:
    model = _model(name, kwargs)
    model.save_pretrained(tmp_path / "m")
    loaded = load_lsr_model(str(tmp_path / "m"))
    assert type(loaded) is type(model) and loaded.config == model.config
    x, coords = _image(1, 17, 21), _coords(1, 20)
    with torch.no_grad():
        a = model.query(model.encode(x), coords)
        b = loaded.query(loaded.encode(x), coords)
    assert torch.equal(a, b)


class _OpCounter(TorchDispatchMode):
    """Counts aten calls and the elements they produce."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.calls += 1
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.elements += t.numel()
        return out


def _query_cost(model, x: torch.Tensor, q: int) -> tuple[int, int, int]:
    coords = _coords(1, q, seed=5) * 0.9
    cells = make_cell((64, 64), q).unsqueeze(0)
    with torch.no_grad():
        state = model.encode(x)
        with FlopCounterMode(display=False) as fc:
            model.query(state, coords, cells, chunk=None)
        with _OpCounter() as ops:
            model.query(state, coords, cells, chunk=None)
    return fc.get_total_flops(), ops.calls, ops.elements


@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=IDS)
def test_per_query_cost_does_not_grow_with_image_size(name: str, kwargs: dict) -> None:
    model = _model(name, kwargs)
    small = _query_cost(model, _image(1, 20, 27), 64)
    large = _query_cost(model, _image(1, 70, 93), 64)
    assert small[0] > 0
    assert small == large  # same FLOPs, same aten calls, same elements produced
    double = _query_cost(model, _image(1, 20, 27), 128)
    assert double[0] == 2 * small[0]  # the counted work is per query


# ------------------------------------------------------------------------------------------ GB-LSR
def test_fourier_basis_has_the_documented_form() -> None:
    u = torch.linspace(-1, 1, 9, dtype=torch.float64)
    s = 0.8
    phi = fourier_basis_1d(u, 16, s)
    expected = [torch.ones_like(u)]
    for j in range(1, 8):
        expected += [torch.cos(j * math.pi * u * s), torch.sin(j * math.pi * u * s)]
    expected.append(torch.cos(8 * math.pi * u * s))  # p_max = 16: the last cosine is unpaired
    torch.testing.assert_close(phi, torch.stack(expected, -1), rtol=0, atol=1e-12)
    assert basis_frequencies(5) == [("const", 0), ("cos", 1), ("sin", 1), ("cos", 2), ("sin", 2)]
    cos = fourier_basis_1d(u, 4, s, family="cosine")
    ks = torch.arange(4, dtype=torch.float64)
    torch.testing.assert_close(cos, torch.cos(ks * math.pi * s * (u[:, None] + 1) / 2), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="unknown basis family"):
        fourier_basis_1d(u, 4, s, family="wavelet")


def test_soft_order_mask() -> None:
    m = soft_order_mask(torch.tensor([8.5]), 16, 4.0)[0]
    assert m.shape == (16, 16)
    assert float(m[2, 5]) == pytest.approx(torch.sigmoid(torch.tensor(4 * (8.5 - 5))).item())
    assert float(m[15, 0]) == pytest.approx(torch.sigmoid(torch.tensor(4 * (8.5 - 15))).item())


def test_gblsr_paper_size_and_initial_bandwidths() -> None:
    assert create_lsr_model("gblsr_native").num_parameters() == 989_955  # "0.99M" (HF card)
    init = {mode: float(create_lsr_model("test_gblsr_native", bandwidth_mode=mode).bandwidth(torch.zeros(())).detach())
            for mode in ("global_scalar", "fixed_midpoint", "local_logspace", "local_linear")}  # fmt: skip
    assert init["global_scalar"] == pytest.approx(math.sqrt(0.25 * 2.0), abs=1e-6)  # geometric midpoint 0.7071
    assert init["fixed_midpoint"] == pytest.approx(1.125)
    assert init["local_logspace"] == pytest.approx(math.sqrt(0.5), abs=1e-6)
    assert init["local_linear"] == pytest.approx(1.125)
    assert float(create_lsr_model("test_gblsr_sr").bandwidth().detach()) == pytest.approx(1.0, abs=1e-6)
    s04 = float(create_lsr_model("test_gblsr_sr", bandwidth_init=0.4).bandwidth().detach())
    assert s04 == pytest.approx(0.4, abs=1e-6)
    with pytest.raises(ValueError, match="bandwidth_mode"):
        create_lsr_model("test_gblsr_native", bandwidth_mode="per_pixel")


@pytest.mark.parametrize("mode", ["global_scalar", "fixed_midpoint", "local_logspace"])
def test_native_pixel_centres_reproduce_the_decoder_grid(mode: str) -> None:
    model = _model("test_gblsr_native", {"bandwidth_mode": mode})
    x = _image(2, 21, 30)  # not a multiple of the patch size: padded canvas
    with torch.no_grad():
        state = model.encode(x)
        grid = model.decode_grid(state)  # the decoder's own (upstream einsum) output
        q = model.query(state, make_coord((21, 30)), chunk=97)
    assert grid.shape == (2, 3, 21, 30)
    torch.testing.assert_close(q.view(2, 21, 30, 3).permute(0, 3, 1, 2), grid, rtol=0, atol=1e-5)
    assert grid.std() > 1e-3  # a non-trivial output
    with torch.no_grad():  # render at the native size takes the grid path: same values
        torch.testing.assert_close(model.render(x, (21, 30)), grid.clamp(0, 1), rtol=0, atol=1e-5)


def test_sr_query_at_a_cell_centre_is_the_closed_form() -> None:
    """rel = 0 at a cell centre: phi(0) = [1, cos 0, sin 0, ...] = [1, 1, 0, 1, 0, ...]."""
    model = _model("test_gblsr_sr", {"local_ensemble": False})
    x = _image(1, 6, 7)
    with torch.no_grad():
        state = model.encode(x)
        out = model.query(state, make_coord((6, 7)))  # pixel centres = LR cell centres
        coef = state.tensors["coef"].view(1, 42, 3, 4, 4)
    phi0 = torch.tensor([1.0, 1.0, 0.0, 1.0])
    ref = torch.einsum("bncij,i,j->bnc", coef, phi0, phi0)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    le = _model("test_gblsr_sr", {"local_ensemble": True})
    le.load_state_dict(model.state_dict())
    with torch.no_grad():  # at cell centres the 4-corner ensemble collapses onto the cell itself
        out_le = le.query(le.encode(x), make_coord((6, 7)))
    torch.testing.assert_close(out_le, out, rtol=0, atol=2e-4)  # LIIF's 1e-6 tie-break shift leaves ~1e-5 weights


def test_bicubic_residual_starts_at_bicubic_and_adds_the_head() -> None:
    """``residual="bicubic"``: with a silent head the model renders torch's bicubic up-sampling; with
    a live head the output is that interpolation plus the plain model's prediction."""
    x = _image(2, 6, 7)
    plain = _model("test_gblsr_sr", {})
    res = create_lsr_model("test_gblsr_sr", residual="bicubic").eval()
    res.load_state_dict(plain.state_dict())
    with torch.no_grad():
        coords = _coords(2, 40)
        bic = F.grid_sample(x, coords.flip(-1).unsqueeze(1), mode="bicubic", padding_mode="border", align_corners=False)
        bic = bic[:, :, 0].transpose(1, 2)
        torch.testing.assert_close(res.query(res.encode(x), coords), plain.query(plain.encode(x), coords) + bic)
        for p in (res.decoder.coeff_proj.weight, res.decoder.coeff_proj.bias):
            p.zero_()
        up = F.interpolate(x, size=(12, 21), mode="bicubic", align_corners=False)  # x2, x3: pixel centres
        torch.testing.assert_close(res.render(x, (12, 21), clamp=False), up, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="unknown residual 'bilinear'"):
        create_lsr_model("test_gblsr_sr", residual="bilinear")


def test_local_ensemble_weights() -> None:
    coords = _coords(2, 50)
    corners = lookup_cells(coords, (5, 7), True)
    total = sum(c.weight for c in corners)
    torch.testing.assert_close(total, torch.ones_like(total))
    for c in corners:
        assert c.rel.abs().max() <= 2.0 + 1e-5 and (0 <= c.index).all() and (c.index < 35).all()
    (single,) = lookup_cells(coords, (5, 7), False)
    assert single.weight is None and single.rel.abs().max() <= 1 + 1e-5


# ---------------------------------------------------------------------- LIIF / LTE references
def test_gathered_unfolding_equals_f_unfold() -> None:
    feat = torch.randn(2, 4, 5, 6)
    index = torch.randint(0, 30, (2, 11))
    ref = F.unfold(feat, 3, padding=1).view(2, 36, 30).transpose(1, 2)  # [B, hw, 9C]
    ref = torch.stack([ref[b, index[b]] for b in range(2)])
    torch.testing.assert_close(gather_unfolded(padded_cells(feat), index, (5, 6)), ref, rtol=0, atol=0)


def _upstream_make_coord(shape: tuple[int, int]) -> torch.Tensor:
    """LIIF's / GB-LSR's ``make_coord`` arithmetic: ``(-1 + r) + (2 r) * arange(n)`` in float32, r = 1/n."""
    seqs = [(-1.0 + 1.0 / n) + (2.0 / n) * torch.arange(n, dtype=torch.float32) for n in shape]
    return torch.stack(torch.meshgrid(*seqs, indexing="ij"), dim=-1).view(-1, 2)


def _reference_corners(coords: torch.Tensor, h: int, w: int, local_ensemble: bool = True):
    """LIIF's upstream lookup, written with grid_sample(nearest) as in the paper's code."""
    fc = make_coord((h, w), flatten=False).permute(2, 0, 1).unsqueeze(0).expand(coords.shape[0], 2, h, w)
    shifts, eps = ((-1, 1), 1e-6) if local_ensemble else ((0,), 0.0)
    out = []
    for vx in shifts:
        for vy in shifts:
            c = coords.clone()
            c[..., 0] += vx / h + eps
            c[..., 1] += vy / w + eps
            c.clamp_(-1 + 1e-6, 1 - 1e-6)
            grid = c.flip(-1).unsqueeze(1)
            qc = F.grid_sample(fc, grid, mode="nearest", align_corners=False)[:, :, 0].permute(0, 2, 1)
            rel = (coords - qc) * torch.tensor([h, w])
            out.append((grid, rel, (rel[..., 0] * rel[..., 1]).abs() + 1e-9))
    if not local_ensemble:
        return [(out[0][0], out[0][1], torch.ones_like(out[0][2]))]
    areas = [a for _, _, a in out]
    tot = sum(areas)
    weights = [areas[3], areas[2], areas[1], areas[0]]
    return [(g, r, wgt / tot) for (g, r, _), wgt in zip(out, weights)]


def _grid_sample_cells(coords: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``[B, Q]`` flat index of the cell ``grid_sample(mode="nearest")`` reads at each query."""
    index_map = torch.arange(h * w, dtype=torch.float32).view(1, 1, h, w).expand(coords.shape[0], 1, h, w)
    grid = coords.clamp(-1 + 1e-6, 1 - 1e-6).flip(-1).unsqueeze(1)
    return F.grid_sample(index_map, grid, mode="nearest", align_corners=False)[:, 0, 0].long()


@pytest.mark.parametrize("coord_fn", [make_coord, _upstream_make_coord], ids=["decodelab", "upstream"])
def test_nearest_cell_at_boundaries_is_grid_samples(coord_fn) -> None:
    """x2.7 on a 24x20 input: 65x54 queries, many exactly on a cell boundary (grid_sample rounds
    half to even there, floor always goes up); every query picks grid_sample's cell."""
    h, w = 24, 20
    coords = coord_fn((65, 54)).unsqueeze(0)  # [1, 3510, 2]
    ref = _grid_sample_cells(coords, h, w)
    (single,) = lookup_cells(coords, (h, w), False)
    assert torch.equal(single.index, ref)
    floor = torch.floor((coords + 1) * 0.5 * torch.tensor([h, w])).long()
    floor_index = floor[..., 0].clamp(0, h - 1) * w + floor[..., 1].clamp(0, w - 1)
    assert (floor_index != ref).sum() >= 50  # the boundary queries are there: a floor rule fails this test
    for corner, (grid, _, _) in zip(lookup_cells(coords, (h, w), True), _reference_corners(coords, h, w)):
        index_map = torch.arange(h * w, dtype=torch.float32).view(1, 1, h, w)
        expect = F.grid_sample(index_map, grid, mode="nearest", align_corners=False)[:, 0, 0].long()
        assert torch.equal(corner.index, expect)


def test_queries_without_local_ensemble_match_upstream_at_a_non_integer_scale() -> None:
    """GB-LSR SR without local ensemble and LIIF ``-e`` answer upstream's x2.7 query grid of a 24x20
    input (its make_coord) as the authors' code does: grid_sample(nearest) cells, relative coordinates."""
    x = _image(1, 24, 20)
    coords = _upstream_make_coord((65, 54)).unsqueeze(0)
    cells = make_cell((65, 54), 3510).unsqueeze(0)
    gb = _model("test_gblsr_sr", {"local_ensemble": False})
    liif = _model("test_liif", {"local_ensemble": False})
    with torch.no_grad():
        coef = gb.decoder.coeff_proj(gb.encoder(x))  # [1, 3 p^2, 24, 20]
        ((grid, rel, _),) = _reference_corners(coords, 24, 20, local_ensemble=False)
        q = F.grid_sample(coef, grid, mode="nearest", align_corners=False)[:, :, 0].permute(0, 2, 1)
        s, p = gb.bandwidth(), gb.p_max
        modes = [torch.ones_like(rel)]
        for j in range(1, p):  # [1, cos(pi u s), sin(pi u s), cos(2 pi u s), ...]
            modes += [torch.cos(j * math.pi * rel * s), torch.sin(j * math.pi * rel * s)]
        phi = torch.stack(modes[:p], dim=-1)  # [1, Q, 2, p]
        ref = torch.einsum("bqcij,bqi,bqj->bqc", q.view(1, -1, 3, p, p), phi[:, :, 0], phi[:, :, 1])
        ours = gb.query(gb.encode(x), coords)
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-4)  # a wrong cell is off by ~0.1-1

        feat = liif.encoder((x - 0.5) / 0.5)
        unf = F.unfold(feat, 3, padding=1).view(1, -1, 24, 20)
        qf = F.grid_sample(unf, grid, mode="nearest", align_corners=False)[:, :, 0].permute(0, 2, 1)
        ref = liif.imnet(torch.cat([qf, rel, cells * torch.tensor([24, 20])], -1)) * 0.5 + 0.5
        ours = liif.query(liif.encode(x), coords, cells)
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-4)  # a wrong cell is off by ~0.1-1


def test_liif_matches_the_upstream_algorithm() -> None:
    model = _model("test_liif", {})
    x = _image(2, 9, 11)
    coords, cells = _coords(2, 40) * 0.97, make_cell((30, 40), 40).expand(2, -1, -1)
    with torch.no_grad():
        ours = model.query(model.encode(x), coords, cells)
        feat = model.encoder((x - 0.5) / 0.5)
        unf = F.unfold(feat, 3, padding=1).view(2, -1, 9, 11)
        ref = 0
        for grid, rel, wgt in _reference_corners(coords, 9, 11):
            qf = F.grid_sample(unf, grid, mode="nearest", align_corners=False)[:, :, 0].permute(0, 2, 1)
            inp = torch.cat([qf, rel, cells * torch.tensor([9, 11])], -1)
            ref = ref + model.imnet(inp) * wgt.unsqueeze(-1)
    torch.testing.assert_close(ours, ref * 0.5 + 0.5, rtol=0, atol=1e-5)


@pytest.mark.parametrize("layout", ["interleaved", "halves"])
def test_lte_matches_the_upstream_algorithm(layout: str) -> None:
    """``interleaved``: lte.py; ``halves``: ltep.py (lte-fast), which pairs frequency channels (m, m + K)."""
    model = _model("test_lte", {"freq_layout": layout})
    x = _image(1, 8, 10)
    coords, cells = _coords(1, 30) * 0.97, make_cell((24, 30), 30).unsqueeze(0)
    with torch.no_grad():
        ours = model.query(model.encode(x), coords, cells)
        inp = (x - 0.5) / 0.5
        feat = model.encoder(inp)
        coef, freq = model.coef(feat), model.freq(feat)
        ref = 0
        for grid, rel, wgt in _reference_corners(coords, 8, 10):
            qc = F.grid_sample(coef, grid, mode="nearest", align_corners=False)[:, :, 0].permute(0, 2, 1)
            qf = F.grid_sample(freq, grid, mode="nearest", align_corners=False)[:, :, 0].permute(0, 2, 1)
            if layout == "interleaved":
                qf = torch.stack(torch.split(qf, 2, dim=-1), dim=-1)  # lte.py's [B, Q, 2, K] layout
            else:
                qf = torch.stack(torch.split(qf, qf.shape[-1] // 2, dim=-1), dim=-2)  # ltep.py's halves
            a = (qf * rel.unsqueeze(-1)).sum(-2) + model.phase(cells * torch.tensor([8, 10]))
            basis = torch.cat([torch.cos(math.pi * a), torch.sin(math.pi * a)], -1)
            ref = ref + model.imnet(qc * basis) * wgt.unsqueeze(-1)
        skip = F.grid_sample(inp, coords.flip(-1).unsqueeze(1), mode="bilinear", padding_mode="border",
                             align_corners=False)[:, :, 0].permute(0, 2, 1)  # fmt: skip
    torch.testing.assert_close(ours, (ref + skip) * 0.5 + 0.5, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------- SwinIR encoder
def _randomised(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.2)
    return module.eval()


@pytest.mark.parametrize("shift", [0, 2])
def test_swinir_block_matches_timms_swin_block(shift: int) -> None:
    """The (shifted-)window block against timm's SwinTransformerBlock, same weights, same names."""
    st = pytest.importorskip("timm.models.swin_transformer")
    ours = _randomised(_SwinBlock(12, 3, 4, shift, 2.0))
    ref = st.SwinTransformerBlock(12, (8, 12), num_heads=3, window_size=4, shift_size=shift, mlp_ratio=2.0).eval()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 8 * 12, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = ours(x, (8, 12), shifted_window_mask(8, 12, 4, 2))
        torch.testing.assert_close(out, ref(x.view(2, 8, 12, 12)).reshape(2, 96, 12), rtol=0, atol=1e-5)
    assert torch.equal(ours.attn.relative_position_index, ref.attn.relative_position_index)


def test_swinir_encoder_has_upstreams_wiring_and_padding() -> None:
    """conv_first -> token norm -> residual groups (Swin blocks, 3x3 conv, + input) -> norm ->
    conv_after_body + shallow features -> conv_before_upsample; blocks from timm as the reference."""
    st = pytest.importorskip("timm.models.swin_transformer")
    enc = _randomised(build_encoder(dict(SWINIR_TEST)))
    E, ws = SWINIR_TEST["embed_dim"], SWINIR_TEST["window_size"]
    x = torch.rand(1, 3, 8, 12, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        shallow = enc.conv_first(x)
        t = enc.patch_embed.norm(shallow.flatten(2).transpose(1, 2))  # [1, 96, E]
        for layer in enc.layers:
            y = t.view(1, 8, 12, E)
            for block in layer.residual_group.blocks:
                ref_block = st.SwinTransformerBlock(E, (8, 12), num_heads=block.attn.heads, window_size=ws,
                                                    shift_size=block.shift, mlp_ratio=2.0).eval()  # fmt: skip
                ref_block.load_state_dict(block.state_dict())
                y = ref_block(y)
            t = layer.conv(y.permute(0, 3, 1, 2)).flatten(2).transpose(1, 2) + t
        body = enc.norm(t).transpose(1, 2).reshape(1, E, 8, 12)
        ref = enc.conv_before_upsample(enc.conv_after_body(body) + shallow)
        torch.testing.assert_close(enc(x), ref, rtol=0, atol=1e-5)
        x2 = torch.rand(1, 3, 10, 13, generator=torch.Generator().manual_seed(3))  # padded like check_image_size
        out = enc(x2)
        assert out.shape == (1, SWINIR_TEST["num_feat"], 12, 16)
        torch.testing.assert_close(out, enc(F.pad(x2, (0, 3, 0, 2), mode="reflect")), rtol=0, atol=0)


def test_swinir_models_query_the_padded_canvas() -> None:
    """A 13x17 input is encoded on a 16x20 canvas; queries in image coordinates land on the image part."""
    model = _model("test_lte", {"encoder": dict(SWINIR_TEST)})
    x = _image(1, 13, 17)
    with torch.no_grad():
        state = model.encode(x)
        assert state.geometry.canvas_size == (16, 20) and state.geometry.grid == (16, 20)
        assert state.geometry.offset == (0, 0) and state.geometry.image_size == (13, 17)
        canvas = F.pad(x, (0, 3, 0, 3), mode="reflect")
        coords = _coords(1, 20) * 0.9
        on_canvas = model.query(model.encode(canvas), state.geometry.to_canvas(coords),
                                state.geometry.cells_to_canvas(make_cell((26, 34), 20).unsqueeze(0)))  # fmt: skip
        torch.testing.assert_close(model.query(state, coords, make_cell((26, 34), 20).unsqueeze(0)), on_canvas)


def test_gabor_activation_is_the_complex_wavelet() -> None:
    z = torch.complex(torch.randn(50, dtype=torch.float64), torch.randn(50, dtype=torch.float64) * 0.3)
    re, im = gabor(z.real, z.imag, 10.0, 4.0)
    ref = torch.exp(1j * 10.0 * z - (4.0 * z).abs().square())
    torch.testing.assert_close(torch.complex(re, im), ref, rtol=1e-10, atol=1e-12)
