"""Tests for the sampling maths shared by every decoder (speculative/sampling.py) and the CFG
handling of :class:`DecodeContext`."""

from __future__ import annotations

import math

import pytest
import torch

from decodelab.speculative.base import DecodeContext
from decodelab.speculative.contract import GenerationOrder
from decodelab.speculative.sampling import (
    SamplingConfig,
    cfg_mix,
    logits_to_probs,
    rand_rows,
    residual_distribution,
    row_generators,
    sample_rows,
)


def rand_logits(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 3


# ----------------------------------------------------------------------------- SamplingConfig


def test_sampling_config_validation_and_flags() -> None:
    for bad in (dict(temperature=-0.1), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5), dict(cfg_scale=-1.0)):
        key = next(iter(bad))
        with pytest.raises(ValueError, match=key):
            SamplingConfig(**bad)
    assert not SamplingConfig().use_cfg and SamplingConfig(cfg_scale=4.0).use_cfg
    assert SamplingConfig(cfg_scale=0.5).use_cfg  # any scale other than 1 needs the null rows
    assert SamplingConfig(top_k=1).greedy and SamplingConfig(temperature=0).greedy
    assert not SamplingConfig(top_k=2).greedy and not SamplingConfig().greedy


# ----------------------------------------------------------------------------- logits_to_probs


@pytest.mark.parametrize("kwargs", [dict(top_k=1), dict(temperature=0.0), dict(temperature=0.0, top_p=0.3)])
def test_greedy_settings_give_one_hot_argmax(kwargs: dict) -> None:
    logits = rand_logits(3, 5, 40)
    probs = logits_to_probs(logits, **kwargs)
    assert probs.shape == logits.shape and probs.dtype == torch.float32
    assert torch.equal(probs, torch.nn.functional.one_hot(logits.argmax(-1), 40).float())


def test_low_precision_logits_give_float32_probs() -> None:
    logits = rand_logits(2, 30).to(torch.bfloat16)
    probs = logits_to_probs(logits, temperature=0.7)
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs, (logits.float() / 0.7).softmax(-1))


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_temperature(temperature: float) -> None:
    logits = rand_logits(4, 20)
    torch.testing.assert_close(logits_to_probs(logits, temperature), (logits / temperature).softmax(-1))


@pytest.mark.parametrize("k", [2, 5, 17])
def test_top_k_keeps_exactly_k_tokens(k: int) -> None:
    logits = rand_logits(6, 3, 32, seed=k)
    probs = logits_to_probs(logits, top_k=k)
    assert torch.equal((probs > 0).sum(-1), torch.full((6, 3), k))
    top = logits.topk(k, dim=-1).indices
    kept = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, top, True)
    assert torch.equal(probs > 0, kept)
    # Renormalised softmax over the kept tokens.
    want = logits.masked_fill(~kept, float("-inf")).softmax(-1)
    torch.testing.assert_close(probs, want)
    torch.testing.assert_close(probs.sum(-1), torch.ones(6, 3))
    # k >= V (and k = 0) keep everything.
    torch.testing.assert_close(logits_to_probs(logits, top_k=32), logits.softmax(-1))
    torch.testing.assert_close(logits_to_probs(logits, top_k=0), logits.softmax(-1))


@pytest.mark.parametrize(("top_p", "kept"), [(0.3, 1), (0.49, 1), (0.7, 2), (0.85, 3), (0.97, 4), (1.0, 4)])
def test_top_p_keeps_smallest_prefix_reaching_p(top_p: float, kept: int) -> None:
    p = torch.tensor([0.15, 0.5, 0.05, 0.3])  # sorted: 0.5, 0.3, 0.15, 0.05 -> cum 0.5, 0.8, 0.95, 1.0
    order = [1, 3, 0, 2]
    probs = logits_to_probs(p.log(), top_p=top_p)
    assert int((probs > 0).sum()) == kept
    assert set(torch.nonzero(probs).flatten().tolist()) == set(order[:kept])
    want = torch.zeros(4)
    want[order[:kept]] = p[order[:kept]] / p[order[:kept]].sum()
    torch.testing.assert_close(probs, want)


def test_top_p_matches_brute_force() -> None:
    logits = rand_logits(50, 12, seed=3)
    for top_p in (0.2, 0.5, 0.9):
        probs = logits_to_probs(logits, top_p=top_p)
        full = logits.softmax(-1)
        for row in range(50):
            vals, idx = full[row].sort(descending=True)
            n = int(torch.searchsorted(vals.cumsum(0), torch.tensor(top_p))) + 1  # first prefix with mass >= p
            n = min(n, 12)
            assert set(torch.nonzero(probs[row]).flatten().tolist()) == set(idx[:n].tolist())


def test_top_k_then_top_p_on_the_renormalised_distribution() -> None:
    # top-3 keeps 0.3 (idx 3), 0.25 (idx 0), 0.2 (idx 4); renormalised: 0.4, 0.33, 0.27 -> cum 0.4, 0.73.
    # top_p=0.7 then keeps two (on the raw distribution, cum 0.3, 0.55, 0.75, it would keep three).
    p = torch.tensor([0.25, 0.15, 0.1, 0.3, 0.2])
    probs = logits_to_probs(p.log(), top_k=3, top_p=0.7)
    assert set(torch.nonzero(probs).flatten().tolist()) == {3, 0}
    torch.testing.assert_close(probs[[3, 0]], torch.tensor([0.3, 0.25]) / 0.55)
    # Temperature applies before the filters.
    hot = logits_to_probs(p.log(), temperature=100.0, top_p=0.75)  # near-uniform: 4 of 5 needed
    assert int((hot > 0).sum()) == 4


# ----------------------------------------------------------------------------- CFG


def test_cfg_mix_formula() -> None:
    c, u = rand_logits(2, 3, 7, seed=1), rand_logits(2, 3, 7, seed=2)
    both = torch.cat([c, u])
    for s in (0.0, 1.0, 1.5, 4.0):
        torch.testing.assert_close(cfg_mix(both, s), u + (c - u) * s)
    torch.testing.assert_close(cfg_mix(both, 1.0), c)
    torch.testing.assert_close(cfg_mix(both, 0.0), u)
    # ``apply`` selects where guidance is used; elsewhere the conditional logits pass through.
    apply = torch.tensor([[True, False, True], [False, False, True]])
    out = cfg_mix(both, 3.0, apply)
    mixed = u + (c - u) * 3.0
    for b in range(2):
        for s in range(3):
            torch.testing.assert_close(out[b, s], mixed[b, s] if apply[b, s] else c[b, s])


class StubModel:
    """A TokenModel whose logits encode (row, condition, position), to test DecodeContext's CFG."""

    vocab_size, num_tokens, num_cond_tokens = 5, 9, 1
    num_classes = 10
    grid = (3, 3)
    generation_order = GenerationOrder.raster((3, 3))
    condition_kind = "class"

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def setup_caches(self, max_batch_size, max_seq_length=None, dtype=None) -> None:
        self.batch = max_batch_size

    def check_condition(self, cond) -> None:
        pass

    def null_condition(self, cond):
        return torch.full_like(cond, self.num_classes)

    def _logits(self, S: int) -> torch.Tensor:
        # cond rows: +1 on token 0; null rows: +1 on token 1 -> CFG with scale s gives token 0 logit s
        null = (self.cond == self.num_classes).float()  # [B2]
        out = torch.zeros(self.cond.shape[0], S, self.vocab_size)
        out[:, :, 0] = 1 - null[:, None]
        out[:, :, 1] = null[:, None]
        return out

    def prefill(self, cond, cond_mask=None):
        self.cond, self.mask = cond, cond_mask
        self.calls.append(("prefill", cond.clone(), None if cond_mask is None else cond_mask.clone()))
        return self._logits(1)[:, 0]

    def decode_step(self, tokens, token_pos):
        self.calls.append(("step", tokens.clone(), token_pos.clone()))
        return self._logits(tokens.shape[1])


def _ctx(sampling: SamplingConfig, batch: int = 2, cond_mask=None) -> tuple[DecodeContext, StubModel]:
    model = StubModel()
    gens = row_generators(torch.Generator().manual_seed(0), batch)
    return DecodeContext(model, torch.arange(batch), sampling, gens, cond_mask), model


def test_decode_context_doubles_the_batch_for_cfg() -> None:
    ctx, model = _ctx(SamplingConfig(cfg_scale=3.0, temperature=1.0))
    first = ctx.prefill()
    assert model.batch == 4 and torch.equal(model.calls[0][1], torch.tensor([0, 1, 10, 10]))
    # logits after CFG: token 0 -> 0 + (1 - 0) * 3 = 3, token 1 -> 1 + (0 - 1) * 3 = -2
    want = torch.tensor([3.0, -2.0, 0.0, 0.0, 0.0]).softmax(-1)
    torch.testing.assert_close(first, want.expand(2, -1))
    probs = ctx.forward(torch.tensor([[1, 2], [3, 4]]), torch.tensor([0, 1]))
    assert probs.shape == (2, 2, 5)
    _, toks, pos = model.calls[1]
    assert torch.equal(toks, torch.tensor([[1, 2], [3, 4], [1, 2], [3, 4]])) and torch.equal(pos, torch.tensor([0, 1]))
    ctx.forward(torch.tensor([[1], [3]]), torch.tensor([[0], [5]]))  # per-row positions are doubled too
    assert torch.equal(model.calls[2][2], torch.tensor([[0], [5], [0], [5]]))
    assert ctx.nfe == 3


def test_decode_context_without_cfg_keeps_the_batch() -> None:
    ctx, model = _ctx(SamplingConfig(), batch=3)
    first = ctx.prefill()
    assert model.batch == 3 and torch.equal(model.calls[0][1], torch.tensor([0, 1, 2]))
    torch.testing.assert_close(first, torch.tensor([1.0, 0, 0, 0, 0]).softmax(-1).expand(3, -1))


def test_cfg_mask_of_null_rows_follows_llamagen() -> None:
    """LlamaGen's generate() masks the null rows with the same caption mask: cat([mask, mask])."""
    mask = torch.tensor([[False, True], [True, True]])
    ctx, model = _ctx(SamplingConfig(cfg_scale=2.0), cond_mask=mask)
    ctx.prefill()
    assert torch.equal(model.calls[0][2], torch.cat([mask, mask]))


@pytest.mark.parametrize("interval", [-1, 0, 3])
def test_cfg_interval_matches_llamagen(interval: int) -> None:
    """LlamaGen: the prefill (token 0) is guided, then decode step ``i`` (token ``i + 1``) is guided
    while ``i <= cfg_interval``: so image tokens ``0..cfg_interval + 1`` get CFG, the rest do not."""
    scale = 3.0
    ctx, _ = _ctx(SamplingConfig(cfg_scale=scale, cfg_interval=interval))
    guided = torch.tensor([scale, 1 - scale, 0, 0, 0]).softmax(-1)
    plain = torch.tensor([1.0, 0, 0, 0, 0]).softmax(-1)
    torch.testing.assert_close(ctx.prefill()[0], guided)
    probs = ctx.forward(torch.zeros(2, 8, dtype=torch.long), torch.arange(8))  # for positions 1..8
    for s in range(8):
        next_pos = s + 1
        use = interval < 0 or next_pos <= interval + 1
        torch.testing.assert_close(probs[:, s], (guided if use else plain).expand(2, -1), msg=f"position {next_pos}")
    # Per-row positions: each row is judged by its own next position.
    pos = torch.tensor([[0], [6]])
    probs = ctx.forward(torch.zeros(2, 1, dtype=torch.long), pos)
    for b in range(2):
        use = interval < 0 or int(pos[b, 0]) + 1 <= interval + 1
        torch.testing.assert_close(probs[b, 0], guided if use else plain)


# ----------------------------------------------------------------------------- generators and draws


def _draws(gens: list[torch.Generator]) -> torch.Tensor:
    return torch.stack([torch.rand(4, generator=g) for g in gens])


def test_row_generators_from_one_seed_are_reproducible() -> None:
    a = _draws(row_generators(torch.Generator().manual_seed(42), 3))
    b = _draws(row_generators(torch.Generator().manual_seed(42), 3))
    c = _draws(row_generators(torch.Generator().manual_seed(43), 3))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert len({tuple(r.tolist()) for r in a}) == 3  # rows get distinct streams
    # Row b's stream does not depend on how many rows there are.
    assert torch.equal(_draws(row_generators(torch.Generator().manual_seed(42), 5))[:3], a)


def test_row_generators_list_and_none() -> None:
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    out = row_generators(gens, 3)
    assert len(out) == 3 and all(x is y for x, y in zip(out, gens))
    assert len(row_generators(tuple(gens), 3)) == 3
    with pytest.raises(ValueError, match="got 2 generators for a batch of 3 rows"):
        row_generators(gens[:2], 3)
    with pytest.raises(ValueError, match="got 3 generators for a batch of 4 rows"):
        row_generators(gens, 4)
    torch.manual_seed(5)
    a = _draws(row_generators(None, 2))
    torch.manual_seed(5)
    assert torch.equal(_draws(row_generators(None, 2)), a)


def test_sample_rows_uses_each_rows_generator() -> None:
    probs = rand_logits(3, 16, seed=4).softmax(-1)
    out = sample_rows(probs, [torch.Generator().manual_seed(s) for s in (7, 8, 9)])
    assert out.shape == (3,) and out.dtype == torch.long
    for b, s in enumerate((7, 8, 9)):
        assert int(out[b]) == int(torch.multinomial(probs[b], 1, generator=torch.Generator().manual_seed(s)))
    # Row 0 does not depend on row 1's distribution.
    other = probs.clone()
    other[1] = torch.roll(other[1], 3)
    for _ in range(5):
        seeds = torch.randint(0, 1000, (3,)).tolist()
        x = sample_rows(probs, [torch.Generator().manual_seed(s) for s in seeds])
        y = sample_rows(other, [torch.Generator().manual_seed(s) for s in seeds])
        assert x[0] == y[0] and x[2] == y[2]
    # [B, S, V] -> [B, S]; one-hot distributions are deterministic.
    onehot = torch.nn.functional.one_hot(torch.tensor([[1, 4], [2, 0]]), 6).float()
    gens = row_generators(torch.Generator().manual_seed(0), 2)
    assert torch.equal(sample_rows(onehot, gens), torch.tensor([[1, 4], [2, 0]]))


def test_sample_rows_frequencies() -> None:
    p = torch.tensor([0.1, 0.6, 0.3])
    gens = [torch.Generator().manual_seed(0)]
    draws = torch.stack([sample_rows(p[None], gens) for _ in range(3000)]).flatten()
    freq = torch.bincount(draws, minlength=3).float() / 3000
    assert (freq - p).abs().max() < 0.03


def test_rand_rows() -> None:
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    u = rand_rows(gens, 5)
    assert u.shape == (2, 5) and ((u >= 0) & (u < 1)).all()
    assert torch.equal(u[1], torch.rand(5, generator=torch.Generator().manual_seed(2)))


# ----------------------------------------------------------------------------- acceptance maths


def test_residual_distribution_and_lossless_acceptance() -> None:
    """Accept x ~ q with min(1, p/q), else resample from norm(max(0, p - q)): the result is p."""
    for seed in range(5):
        p = rand_logits(6, seed=seed).softmax(-1)
        q = rand_logits(6, seed=100 + seed).softmax(-1)
        r = residual_distribution(p, q)
        torch.testing.assert_close(r, (p - q).clamp_min(0) / (p - q).clamp_min(0).sum())
        accept = torch.minimum(torch.ones(6), p / q)
        reject_mass = 1 - (q * accept).sum()
        torch.testing.assert_close(q * accept + reject_mass * r, p)
    p = torch.tensor([[0.2, 0.8], [0.5, 0.5]])
    torch.testing.assert_close(residual_distribution(p, p.clone()), p)  # p == q: falls back to p
    assert math.isclose(float(residual_distribution(p, torch.tensor([[0.9, 0.1], [0.5, 0.5]]))[0, 1]), 1.0)
