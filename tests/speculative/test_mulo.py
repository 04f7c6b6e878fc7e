"""MuLo-SD (``mulo``): the tau = 1, k = 1 limit follows the target, islands, neighbourhoods, the drafter
prefix, model checks, batches."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import decodelab
from decodelab.speculative import SamplingConfig, create_decoder
from decodelab.speculative.contract import GenerationOrder, TokenModel
from decodelab.speculative.mulo import (
    MuLoDecoder,
    NearestTokenUpsampler,
    Upsampler,
    drafter_prefix_length,
    knn_table,
    pooled_mass,
    rejection_islands,
    resample_region,
)
from decodelab.vision.upsample import PixelUpsampler

sys.path.append(str(Path(__file__).resolve().parents[1]))  # tests/: shared helpers (importlib mode adds nothing)
from helpers.distribution import chi_square, chi_square_critical, exact_raster_distribution

UP = NearestTokenUpsampler()


def _gpt(seed: int, std: float = 0.6, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = decodelab.create_model(kw.pop("name", "test_gpt"), **kw).eval()
    torch.nn.init.normal_(m.output.weight, 0.0, std)  # upstream zero-init would make p uniform
    return m


def _tiny_pair():
    """A 2x2-token target and a 1x1-token drafter over a 3-token vocabulary."""
    return _gpt(1, std=0.2, vocab_size=3, block_size=4), _gpt(2, std=0.8, vocab_size=3, block_size=1)


def _decode_many(dec, target, drafter, s, n: int, seed: int = 7):
    gens = [torch.Generator().manual_seed(seed * 100_003 + i) for i in range(n)]
    return dec(target, torch.tensor([2] * n), drafter=drafter, upsampler=UP, sampling=s, generator=gens)


PLAIN, GUIDED = SamplingConfig(temperature=1.0), SamplingConfig(temperature=1.0, top_k=2, cfg_scale=2.0)


@pytest.mark.parametrize(
    "s,kwargs",
    [
        (PLAIN, {}),
        (PLAIN, {"local": False}),
        (PLAIN, {"islands": False}),
        (GUIDED, {"l": 0}),
        (GUIDED, {}),
        (PLAIN, {"drafter_decoder": "sjd_coupled"}),
        (GUIDED, {"drafter_decoder": "ar", "local": False}),
    ],
    ids=[
        "plain",
        "plain-raster",
        "plain-no-islands",
        "cfg+topk-l0",
        "cfg+topk",
        "plain-sjd-drafter",
        "cfg+topk-raster-ar-drafter",
    ],
)
def test_tau_one_k_one_follows_the_target_distribution(s: SamplingConfig, kwargs: dict) -> None:
    target, drafter = _tiny_pair()
    out = _decode_many(create_decoder("mulo", tau=1.0, k=1, **kwargs), target, drafter, s, 2000)
    stat, df = chi_square(out.tokens, exact_raster_distribution(target, torch.tensor([2]), s))
    crit = chi_square_critical(df)
    assert stat < crit, f"chi2={stat:.1f} >= {crit:.1f}"
    assert out.lossless is False and int(out.accepted.sum(0).min()) == 4


def test_the_distribution_test_catches_a_relaxed_threshold() -> None:
    target, drafter = _tiny_pair()
    s = SamplingConfig(temperature=1.0)
    out = _decode_many(create_decoder("mulo", tau=0.3, k=1), target, drafter, s, 2000)
    stat, df = chi_square(out.tokens, exact_raster_distribution(target, torch.tensor([2]), s))
    crit = chi_square_critical(df)
    assert stat > crit, f"a tau=0.3 threshold passed as exact: chi2={stat:.1f}"


# --------------------------------------------------------------------------- a context-free table model
class TableModel:
    """A :class:`TokenModel` whose distribution at each position is a fixed row of ``logits [N, V]``."""

    num_cond_tokens = 1

    def __init__(self, logits: torch.Tensor, side: int) -> None:
        self.logits, self.side = logits, side
        self.num_tokens, self.vocab_size = logits.shape
        self.writes: list[tuple[torch.Tensor, torch.Tensor]] = []

    grid = property(lambda self: (self.side, self.side))
    generation_order = property(lambda self: GenerationOrder.raster(self.grid))
    condition_kind = property(lambda self: "class")
    num_classes = property(lambda self: 10)

    def setup_caches(self, max_batch_size, max_seq_length=None, dtype=None) -> None:
        pass

    def check_condition(self, cond) -> None:
        pass

    def null_condition(self, cond):
        return torch.full_like(cond, 10)

    def prefill(self, cond, cond_mask=None):
        return self.logits[0].expand(cond.shape[0], -1).clone()

    def decode_step(self, tokens, token_pos, query_pos=None):
        self.writes.append((tokens.clone(), token_pos.clone()))
        q = token_pos + 1 if query_pos is None else query_pos
        q = q.expand(tokens.shape[0], -1) if q.dim() == 1 else q
        return self.logits[q.clamp(max=self.num_tokens - 1)]


def _one_hot_logits(tokens: list[int], V: int) -> torch.Tensor:
    out = torch.full((len(tokens), V), float("-inf"))
    out[torch.arange(len(tokens)), torch.tensor(tokens)] = 0.0
    return out


def test_tau_one_k_one_accepts_exactly_the_drafts_the_target_is_sure_of() -> None:
    V = 4
    drafts = [1, 2, 3, 0]  # the drafter's 2x2 grid, certain of each token
    drafter = TableModel(_one_hot_logits(drafts, V), 2)
    up = UP.upsample(torch.tensor(drafts).view(1, 2, 2), (4, 4)).flatten()  # drafts on the 4x4 grid
    # target: certain of the draft at even columns, certain of another token at (3, 3), spread elsewhere
    logits = torch.randn(16, V, generator=torch.Generator().manual_seed(0))
    sure = [p for p in range(16) if p % 2 == 0]
    logits[sure] = _one_hot_logits(up[sure].tolist(), V)
    logits[15] = _one_hot_logits([(int(up[15]) + 1) % V], V)[0]
    target = TableModel(logits, 4)
    n = 1000
    out = create_decoder("mulo", tau=1.0, k=1, l=0)(
        target, torch.zeros(n, dtype=torch.long), drafter=drafter, upsampler=UP,
        generator=[torch.Generator().manual_seed(i) for i in range(n)],
    )  # fmt: skip
    # position 0 comes from the prefill; 7 sure drafts on positions 1..15 pass, in every row
    assert out.extras["drafts_tested"].tolist() == [15] * n
    assert out.extras["drafts_accepted"].tolist() == [7] * n
    toks = out.tokens.view(n, 16)
    p = logits.softmax(-1)
    for pos in range(16):  # every position's marginal is the target's (the model ignores context)
        counts = torch.bincount(toks[:, pos], minlength=V).float()
        expected = p[pos] * n
        keep = expected > 0
        assert counts[~keep].sum() == 0, pos
        stat = float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())
        assert stat < 25.0, (pos, stat)  # 3 df: p < 1e-4


def test_drafts_the_target_agrees_with_fix_a_block_per_target_forward() -> None:
    V = 4
    drafts = [1, 2, 3, 0]
    drafter = TableModel(_one_hot_logits(drafts, V), 2)
    up = UP.upsample(torch.tensor(drafts).view(1, 2, 2), (4, 4)).flatten()
    target = TableModel(_one_hot_logits(up.tolist(), V), 4)
    out = create_decoder("mulo", tau=1.0)(target, torch.tensor([3, 4]), drafter=drafter, upsampler=UP)
    assert torch.equal(out.tokens, up.view(1, 4, 4).expand(2, -1, -1))
    assert out.nfe_by_model == {"target": 3, "drafter": 4}  # prefill + one verify per block of 2 rows
    assert out.nfe == 3 and out.accepted.tolist() == [[1, 1], [7, 7], [8, 8]]
    assert out.extras["nfe_target"] == 3 and out.extras["nfe_drafter"] == 4
    assert out.extras["tokens_per_target_forward"] == pytest.approx(16 / 3)
    assert out.extras["resampled"].tolist() == [0, 0]


# --------------------------------------------------------------------------- greedy limits equal ar
@pytest.mark.parametrize("kwargs", [{"l": 100}, {"l": 100, "islands": False}, {"local": False}])
@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_greedy_resampling_of_the_whole_suffix_equals_greedy_ar(kwargs: dict, cfg_scale: float) -> None:
    target, drafter = _gpt(0), _gpt(1, block_size=4)
    cond = torch.tensor([0, 3, 7])
    s = SamplingConfig(temperature=0.0, cfg_scale=cfg_scale)
    ref = create_decoder("ar")(target, cond, sampling=s)
    out = create_decoder("mulo", tau=1.0, **kwargs)(target, cond, drafter=drafter, upsampler=UP, sampling=s)
    assert torch.equal(out.tokens, ref.tokens)
    assert out.accepted.sum(0).tolist() == [16, 16, 16]
    assert out.nfe <= ref.nfe


class NextTokenModel(TableModel):
    """A context-dependent :class:`TokenModel`: sure that each token is its predecessor + 1 (mod V)."""

    def __init__(self, side: int, V: int) -> None:
        super().__init__(_one_hot_logits([0] * side * side, V), side)
        self.V = V

    def setup_caches(self, max_batch_size, max_seq_length=None, dtype=None) -> None:
        self.cache = torch.zeros(max_batch_size, self.num_tokens, dtype=torch.long)

    def decode_step(self, tokens, token_pos, query_pos=None):
        pos = token_pos.expand(tokens.shape[0], -1) if token_pos.dim() == 1 else token_pos
        self.cache[: tokens.shape[0]].scatter_(1, pos, tokens)
        q = pos[:, -1:] + 1 if query_pos is None else query_pos
        q = q.expand(tokens.shape[0], -1) if q.dim() == 1 else q
        nxt = (self.cache[: tokens.shape[0]].gather(1, q - 1) + 1) % self.V
        return torch.full((*q.shape, self.V), float("-inf")).scatter_(-1, nxt[..., None], 0.0)


class FixedDrafts:
    """An up-sampler that proposes the same target-grid drafts whatever the drafter drew."""

    def __init__(self, drafts: list[int]) -> None:
        self.drafts = torch.tensor(drafts)

    def upsample(self, low, grid):
        return self.drafts.view(1, *grid).expand(low.shape[0], -1, -1).clone()

    def downsample(self, tokens, grid):
        return torch.zeros(tokens.shape[0], *grid, dtype=torch.long)


@pytest.mark.parametrize("l", [0, 1])
def test_reverify_retests_the_drafts_kept_after_a_resampled_token(l: int) -> None:
    # 4x4 target sure that token i is token i-1 + 1, so ar gives 0, 1, ..., 15. The drafts break at 5 (9
    # instead of 5) and continue from the break; one verification rejects only position 5, resamples it
    # to 5 and keeps the drafts after it, which no longer follow their context; passes re-test them
    V, N = 32, 16
    drafts = list(range(5)) + list(range(9, 9 + N - 5))
    target = NextTokenModel(4, V)
    drafter = TableModel(_one_hot_logits([0] * 4, V), 2)
    run = lambda **kw: create_decoder("mulo", tau=0.5, l=l, **kw)(  # noqa: E731
        target, torch.tensor([1, 2]), drafter=drafter, upsampler=FixedDrafts(drafts)
    )
    once = run()
    if l == 0:
        assert once.tokens[0].flatten().tolist() == list(range(6)) + drafts[6:]
    assert once.tokens[0].flatten().tolist() != list(range(N)) and int(once.extras["retested"].sum()) == 0
    full = run(reverify=N)
    assert full.tokens[0].flatten().tolist() == list(range(N)) and torch.equal(full.tokens[0], full.tokens[1])
    assert int(full.extras["retested"][0]) > 0 and full.nfe > once.nfe
    short = run(reverify=1)  # a pass limit is respected: one pass fixes only the first window after 5
    assert short.tokens[0].flatten().tolist() != list(range(N))
    assert short.nfe < full.nfe


@pytest.mark.parametrize("islands,refresh", [(False, True), (True, False)], ids=["one-island", "no-refresh"])
def test_reverify_without_islands_or_refresh_also_reaches_the_target(islands: bool, refresh: bool) -> None:
    # the same break as above; the passes share the first verification's rejection handling in both settings
    V, N = 32, 16
    drafts = list(range(5)) + list(range(9, 9 + N - 5))
    target, drafter = NextTokenModel(4, V), TableModel(_one_hot_logits([0] * 4, V), 2)
    run = lambda **kw: create_decoder("mulo", tau=0.5, l=1, islands=islands, refresh=refresh, **kw)(  # noqa: E731
        target, torch.tensor([1, 2]), drafter=drafter, upsampler=FixedDrafts(drafts)
    )
    once, full = run(), run(reverify=N)
    assert once.tokens[0].flatten().tolist() != list(range(N))
    assert full.tokens.view(2, N).tolist() == [list(range(N))] * 2
    assert int(full.extras["retested"][0]) > 0 and full.nfe > once.nfe
    assert full.extras["resampled"][0] > once.extras["resampled"][0]


def test_reverify_errors() -> None:
    with pytest.raises(ValueError, match="reverify must be >= 0"):
        create_decoder("mulo", reverify=-1)
    with pytest.raises(ValueError, match="local=False keeps none"):
        create_decoder("mulo", reverify=2, local=False)


def test_greedy_limit_on_captions_with_padding_and_a_4x_drafter() -> None:
    target, drafter = _gpt(0, name="test_gpt_t2i"), _gpt(1, name="test_gpt_t2i", block_size=4)
    cond = torch.randn(3, target.num_cond_tokens, 24, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(3, target.num_cond_tokens, dtype=torch.bool)
    mask[0, :2] = False  # a left-padded caption
    s = SamplingConfig(temperature=0.0, cfg_scale=3.0)
    ref = create_decoder("ar")(target, cond, sampling=s, cond_mask=mask)
    dec = create_decoder("mulo", tau=1.0, l=100)
    out = dec(target, cond, drafter=drafter, upsampler=UP, sampling=s, cond_mask=mask)
    assert torch.equal(out.tokens, ref.tokens)
    big = _gpt(0, block_size=64)  # 8x8 target, 2x2 drafter: ratio 4
    s = SamplingConfig(temperature=0.0)
    ref = create_decoder("ar")(big, torch.tensor([1, 2]), sampling=s)
    out = create_decoder("mulo", tau=1.0, l=100, ratio=4)(
        big, torch.tensor([1, 2]), drafter=_gpt(1, block_size=4), upsampler=UP, sampling=s
    )
    assert torch.equal(out.tokens, ref.tokens)
    assert out.accepted.sum(0).tolist() == [64, 64]


def test_local_resampling_keeps_accepted_drafts_and_islands_run_concurrently() -> None:
    # an 8x8 target that ignores context and is sure of token 5, except at (1, 0) and (1, 7)
    V = 8
    drafter = TableModel(_one_hot_logits([5] * 16, V), 4)
    want = [5] * 64
    want[8], want[15] = 1, 2
    target = TableModel(_one_hot_logits(want, V), 8)
    cases = [  # settings, target forwards, islands: prefill + 4 verifications (2 target rows each) + island steps
        ({"l": 0}, 5, 2),  # {8}, {15}: resampled by the verification forward itself
        ({"l": 1}, 6, 2),  # {8, 9}, {14, 15}: concurrently, one more forward
        ({"l": 2}, 7, 2),  # {8, 9, 10}, {13, 14, 15}
        ({"l": 3}, 12, 1),  # the windows touch: one island of 8
        ({"l": 1, "islands": False}, 8, 1),  # {8, 9, 14, 15} one position per forward
        ({"local": False}, 6, 2),  # resample 8, re-draft 9..15, resample 15
    ]
    for kw, target_nfe, islands in cases:
        out = create_decoder("mulo", tau=1.0, **kw)(target, torch.tensor([1]), drafter=drafter, upsampler=UP)
        assert out.tokens.flatten().tolist() == want, kw
        assert out.nfe == target_nfe, (kw, out.nfe)
        assert out.extras["islands"].tolist() == [islands], kw
        assert int(out.accepted.sum()) == 64


# --------------------------------------------------------------------------- islands and neighbourhoods
def test_rejection_islands_use_8_connectivity() -> None:
    mask = torch.tensor(
        [
            [1, 0, 0, 0, 1],
            [0, 1, 0, 0, 1],
            [0, 0, 0, 0, 0],
            [1, 1, 0, 1, 0],
        ],
        dtype=torch.bool,
    )
    islands = [i.tolist() for i in rejection_islands(mask)]
    assert islands == [[0, 6], [4, 9], [15, 16], [18]]  # (0,0)-(1,1) touch at a corner: one island
    ring = torch.ones(3, 3, dtype=torch.bool)
    ring[1, 1] = False
    assert [i.tolist() for i in rejection_islands(ring)] == [[0, 1, 2, 3, 5, 6, 7, 8]]
    assert rejection_islands(torch.zeros(2, 3, dtype=torch.bool)) == []
    # the same two cells, one column apart, are two islands
    apart = torch.tensor([[1, 0, 1]], dtype=torch.bool)
    assert [i.tolist() for i in rejection_islands(apart)] == [[0], [2]]


def test_resample_region_is_the_union_of_windows_at_or_after_the_first_rejection() -> None:
    rejected = torch.zeros(4, 4, dtype=torch.bool)
    rejected[1, 2] = rejected[2, 0] = True  # raster positions 6 and 8; the first rejection is 6
    region = resample_region(rejected, 1)
    assert region.flatten().nonzero()[:, 0].tolist() == [6, 7, 8, 9, 10, 11, 12, 13]
    # positions 1, 2, 3 and 5 lie in the windows but before the first rejection: kept
    assert resample_region(rejected, 1, end=12).flatten().nonzero()[:, 0].tolist() == [6, 7, 8, 9, 10, 11]
    assert resample_region(rejected, 0).flatten().nonzero()[:, 0].tolist() == [6, 8]
    assert resample_region(rejected, 5).flatten().nonzero()[:, 0].tolist() == list(range(6, 16))
    assert not resample_region(torch.zeros(3, 3, dtype=torch.bool), 2).any()
    with pytest.raises(ValueError, match="l must be"):
        resample_region(rejected, -1)


def test_knn_pooling_puts_the_draft_first() -> None:
    vectors = torch.tensor([[0.0], [1.0], [3.0], [10.0]])
    table = knn_table(vectors, 2)
    assert table.tolist() == [[0, 1], [1, 0], [2, 1], [3, 2]]
    p = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.25, 0.25, 0.0]])
    assert pooled_mass(p, torch.tensor([2, 1]), table).tolist() == pytest.approx([0.5, 0.75])
    assert pooled_mass(p, torch.tensor([2, 1]), None).tolist() == pytest.approx([0.3, 0.25])
    with pytest.raises(ValueError, match="k must be"):
        knn_table(vectors, 5)


def test_pooling_over_the_whole_codebook_accepts_every_draft() -> None:
    target, drafter = _gpt(0), _gpt(1, block_size=4)
    out = create_decoder("mulo", tau=1.0 - 1e-4, k=64)(target, torch.tensor([1, 2]), drafter=drafter, upsampler=UP)
    assert torch.equal(out.extras["drafts_accepted"], out.extras["drafts_tested"])
    assert out.nfe == 3 and out.extras["resampled"].tolist() == [0, 0]


# --------------------------------------------------------------------------- the drafter's prefix
def test_drafter_prefix_is_whole_low_rows_under_fixed_target_rows() -> None:
    assert [drafter_prefix_length(n, (4, 4), (2, 2)) for n in (0, 1, 7, 8, 15, 16)] == [0, 0, 0, 2, 2, 4]
    assert drafter_prefix_length(70, (8, 8), (4, 4)) == 4 * 4  # 70 tokens: 8 full rows -> 4 low rows
    tokens = torch.arange(16).view(1, 4, 4)
    assert UP.downsample(tokens, (2, 2)).tolist() == [[[0, 2], [8, 10]]]
    assert UP.upsample(torch.tensor([[[1, 2], [3, 4]]]), (4, 4))[0, 1].tolist() == [1, 1, 2, 2]


def test_accepted_prefix_is_downsampled_into_the_drafter() -> None:
    target = _gpt(0)
    drafter = TableModel(torch.randn(4, 64, generator=torch.Generator().manual_seed(1)), 2)
    s = SamplingConfig(temperature=0.0)
    out = create_decoder("mulo", tau=1.0, l=0)(target, torch.tensor([4, 5]), drafter=drafter, upsampler=UP, sampling=s)
    low_prefix = UP.downsample(out.tokens, (2, 2)).flatten(1)[:, :2]  # the first low row, under target rows 0-1
    assert torch.equal(out.extras["drafter_tokens"][:, :2], low_prefix)
    # the drafter's cache was (re)written with that prefix before it drafted the second low row
    # (the drafter drafted other tokens there: its greedy choice ignores the target)
    drafted_first_row = drafter.logits[:2].argmax(-1)
    assert not torch.equal(low_prefix, drafted_first_row.expand(2, -1))
    last = [(t, p) for t, p in drafter.writes if p.shape[-1] >= 2 and int(p[0, 0]) == 0][-1]
    assert torch.equal(last[0][:, :2], low_prefix) and last[1][0, :2].tolist() == [0, 1]


def test_pixel_upsampler_round_trips_shapes_and_exposes_the_codebook() -> None:
    torch.manual_seed(0)
    low_vq = decodelab.create_model("test_vq").eval()
    high_vq = decodelab.create_model("test_vq").eval()
    up = PixelUpsampler(low_vq, high_vq)
    assert isinstance(up, Upsampler)
    assert up.upsample(torch.randint(0, 64, (2, 2, 2)), (4, 4)).shape == (2, 4, 4)
    assert up.downsample(torch.randint(0, 64, (2, 4, 4)), (2, 2)).shape == (2, 2, 2)
    assert up.codebook_vectors().shape == (64, 4)
    calls = []
    custom = PixelUpsampler(
        low_vq, high_vq, method=lambda x, size: calls.append(size) or torch.zeros(x.shape[0], 3, *size)
    )
    custom.upsample(torch.zeros(1, 2, 2, dtype=torch.long), (4, 4))
    assert calls == [(16, 16)]  # 4x4 tokens of a 4x-down tokenizer
    with pytest.raises(ValueError, match="method must be one of"):
        PixelUpsampler(low_vq, high_vq, method="lanczos")
    # the decoder runs on it, with k-NN pooling in the target tokenizer's codebook
    target, drafter = _gpt(0), _gpt(1, block_size=4)
    out = create_decoder("mulo", tau=0.05, k=4)(target, torch.tensor([1]), drafter=drafter, upsampler=up)
    assert out.accepted.sum().item() == 16


# --------------------------------------------------------------------------- model checks and settings
def test_errors_name_the_problem() -> None:
    target = _gpt(0)
    dec = create_decoder("mulo")
    with pytest.raises(ValueError, match="divided by ratio=2"):
        dec(target, torch.tensor([1]), drafter=_gpt(1), upsampler=UP)  # a 4x4 drafter for a 4x4 target
    with pytest.raises(ValueError, match="conditioned on 'text'"):
        dec(target, torch.tensor([1]), drafter=_gpt(1, name="test_gpt_t2i", block_size=4), upsampler=UP)
    with pytest.raises(ValueError, match="upsample"):
        dec(target, torch.tensor([1]), drafter=_gpt(1, block_size=4), upsampler=lambda low, grid: low)
    with pytest.raises(ValueError, match="needs a drafter"):
        dec(target, torch.tensor([1]), upsampler=UP)
    with pytest.raises(ValueError, match="classes"):
        dec(target, torch.tensor([1]), drafter=_gpt(1, block_size=4, num_classes=5), upsampler=UP)
    for bad in ({"tau": 1.5}, {"k": 0}, {"l": -1}, {"draft_rows": 0}):
        with pytest.raises(ValueError):
            create_decoder("mulo", **bad)
    with pytest.raises(ValueError, match="k must be in"):
        create_decoder("mulo", k=65)(target, torch.tensor([1]), drafter=_gpt(1, block_size=4), upsampler=UP)


def test_registered_lossy_with_per_model_counts() -> None:
    dec = create_decoder("mulo")
    assert isinstance(dec, MuLoDecoder) and dec.expectation == "lossy" and not dec.lossless
    assert dec.requires == ("drafter", "upsampler")
    target, drafter = _gpt(0), _gpt(1, block_size=4)
    assert isinstance(drafter, TokenModel)
    out = dec(target, torch.tensor([1, 2]), drafter=drafter, upsampler=UP, generator=torch.Generator().manual_seed(0))
    summary = out.summary()
    assert summary["lossless"] is False
    assert set(summary["nfe_by_model"]) == {"target", "drafter"}
    assert out.nfe_by_model["drafter"] == out.extras["nfe_drafter"] >= 1 + 3  # prefill + the first low row
    assert out.extras["drafter_time_s"] > 0 and out.wall_time >= out.extras["drafter_time_s"]


@pytest.mark.parametrize("refresh", [True, False])
def test_batch_rows_equal_single_row_runs(refresh: bool) -> None:
    target, drafter = _gpt(3), _gpt(4, block_size=4)
    s = SamplingConfig(temperature=1.0, cfg_scale=2.0, top_k=20)
    cond = torch.tensor([0, 1, 2, 5, 8])
    dec = create_decoder("mulo", tau=0.05, k=2, l=1, refresh=refresh)
    gens = [torch.Generator().manual_seed(10 + i) for i in range(5)]
    out = dec(target, cond, drafter=drafter, upsampler=UP, sampling=s, generator=gens)
    assert out.accepted.sum(0).tolist() == [16] * 5
    for i in range(5):
        one = dec(target, cond[i : i + 1], drafter=drafter, upsampler=UP, sampling=s,
                  generator=[torch.Generator().manual_seed(10 + i)])  # fmt: skip
        assert torch.equal(out.tokens[i], one.tokens[0]), i
    batched = dec(target, cond, drafter=drafter, upsampler=UP, sampling=s,
                  generator=[torch.Generator().manual_seed(10 + i) for i in range(5)], max_batch=2)  # fmt: skip
    assert torch.equal(batched.tokens, out.tokens)
    assert batched.nfe_by_model["drafter"] >= 3 * 4  # three batches, each with its drafter prefill and row


def test_a_drafter_decoder_drafts_the_whole_low_grid_in_fewer_drafter_forwards() -> None:
    # a drafter whose next-token distribution never changes (zero output weights: uniform): sjd_coupled
    # accepts its whole window, so the 4x4 low grid costs far fewer than its token-by-token forwards,
    # and one round verifies all 64 target positions
    target, drafter = _gpt(3, block_size=64), _gpt(4, std=0.0, block_size=16)
    s = SamplingConfig(temperature=1.0)
    cond = torch.tensor([0, 1, 2])
    plain = create_decoder("mulo", tau=0.05, k=2, draft_rows=4)
    fast = create_decoder("mulo", tau=0.05, k=2, drafter_decoder="sjd_coupled")
    a = plain(target, cond, drafter=drafter, upsampler=UP, sampling=s, generator=torch.Generator().manual_seed(0))
    b = fast(target, cond, drafter=drafter, upsampler=UP, sampling=s, generator=torch.Generator().manual_seed(0))
    assert a.nfe_by_model["drafter"] == 1 + 15  # prefill (token 0), then one forward per later low-resolution token
    assert b.nfe_by_model["drafter"] <= 4
    assert b.extras["rounds"] == 1 and b.accepted.sum(0).tolist() == [64] * 3
    assert a.extras["rounds"] == 1  # draft_rows = 4 covers the same whole grid, token by token


def test_drafter_decoder_must_be_a_one_model_raster_decoder() -> None:
    with pytest.raises(ValueError, match="raster decoder of one model"):
        create_decoder("mulo", drafter_decoder="mulo")
    with pytest.raises(ValueError, match="no_such"):
        create_decoder("mulo", drafter_decoder="no_such")


class _RecordingContext:
    """Stands in for a DecodeContext: records the positions each forward feeds, returns uniform rows."""

    def __init__(self, batch: int, vocab: int = 3) -> None:
        self.batch, self.vocab, self.device, self.fed = batch, vocab, torch.device("cpu"), []

    def forward(self, tokens, pos, query_pos):
        self.fed.append(pos.tolist())
        return torch.full((tokens.shape[0], query_pos.shape[1], self.vocab), 1.0 / self.vocab)


def test_refresh_false_rewrites_only_changed_unwritten_and_predecessor_entries() -> None:
    from decodelab.speculative.mulo import _forward, _put, _Stale

    cur = torch.zeros(1, 16, dtype=torch.long)
    valid, exact, sparse = [0], _RecordingContext(1), _RecordingContext(1)
    stale = _Stale(1, sparse=True)
    _forward(sparse, cur, valid, {0: [1, 2, 3, 4, 5, 6, 7, 8]}, stale)  # a verification over positions 1..8
    assert sparse.fed[-1] == [[0, 1, 2, 3, 4, 5, 6, 7]] and stale.hi == [8]
    for pos in (3, 6):  # two islands resample their first positions
        _put(cur, valid, 0, pos, 2, stale)
    _forward(sparse, cur, valid, {0: [4, 7]}, stale)  # their next positions: only 3 and 6 are rewritten
    assert sparse.fed[-1] == [[3, 6]] and stale.dirty == [set()]
    _put(cur, valid, 0, 4, 1, stale)
    _forward(sparse, cur, valid, {0: [10]}, stale)  # a later query: the change, then entries 8, 9 never written
    assert sparse.fed[-1] == [[4, 8, 9]]
    # the exact bookkeeping rewrites from the first change to the last predecessor
    cur2, valid2 = torch.zeros(1, 16, dtype=torch.long), [0]
    _forward(exact, cur2, valid2, {0: list(range(1, 9))})
    for pos in (3, 6):
        _put(cur2, valid2, 0, pos, 2)
    _forward(exact, cur2, valid2, {0: [4, 7]})
    assert exact.fed[-1] == [[3, 4, 5, 6]]


def test_refresh_false_equals_refresh_true_when_the_target_ignores_context() -> None:
    # zero attention/MLP outputs: every distribution depends on the input token only, so stale entries change nothing
    target, drafter = _gpt(3, block_size=64), _gpt(4, block_size=16)
    for name, prm in target.named_parameters():
        if name.endswith(("wo.weight", "w2.weight")):
            torch.nn.init.zeros_(prm)
    s, cond = SamplingConfig(temperature=1.0), torch.tensor([0, 1])
    outs = [
        create_decoder("mulo", tau=0.3, k=2, refresh=r)(
            target, cond, drafter=drafter, upsampler=UP, sampling=s, generator=torch.Generator().manual_seed(5)
        )
        for r in (True, False)
    ]
    assert torch.equal(outs[0].tokens, outs[1].tokens) and outs[0].nfe == outs[1].nfe
    assert int(outs[0].extras["resampled"].sum()) > 0  # islands were resampled, so the bookkeeping differed
