"""MuLo-SD's ingredients as options of the Jacobi family: the threshold test (``accept="threshold"``,
``tau``, ``tau_k``) and local re-drafting (``local``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import decodelab
from decodelab.speculative import SamplingConfig, create_decoder
from decodelab.speculative.sampling import logits_to_probs
from decodelab.speculative.sjd import SJDDecoder

sys.path.append(str(Path(__file__).resolve().parents[1]))  # tests/: shared helpers (importlib mode adds nothing)
from helpers.distribution import chi_square, chi_square_critical, exact_raster_distribution


def _gpt(seed: int, std: float = 0.6, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = decodelab.create_model("test_gpt", **kw).eval()
    torch.nn.init.normal_(m.output.weight, 0.0, std)
    return m


def _samples(dec, m, n: int = 2000) -> torch.Tensor:
    gens = [torch.Generator().manual_seed(7 * 100_003 + i) for i in range(n)]
    return dec(m, torch.tensor([2] * n), generator=gens).tokens


@pytest.mark.parametrize("kwargs", [{}, {"local": 1}])
def test_threshold_one_follows_the_target_and_a_lower_one_does_not(kwargs: dict) -> None:
    m = _gpt(1, std=0.2, vocab_size=3, block_size=4)
    exact = exact_raster_distribution(m, torch.tensor([2]))  # plain softmax, the decoders' default
    dec = create_decoder("sjd", window=4, accept="threshold", tau=1.0, **kwargs)
    assert dec.expectation == "lossy"
    stat, df = chi_square(_samples(dec, m), exact)
    crit = chi_square_critical(df)
    assert stat < crit, f"tau=1: chi2={stat:.1f} >= {crit:.1f}"
    stat, df = chi_square(_samples(create_decoder("sjd", window=4, accept="threshold", tau=0.3, **kwargs), m), exact)
    crit = chi_square_critical(df)
    assert stat > crit, f"tau=0.3 passed as exact: chi2={stat:.1f}"


@pytest.mark.parametrize("kwargs", [{}, {"local": 0}, {"local": 1}, {"local": 1, "ragged": False}, {"tau_k": 3}])
def test_greedy_threshold_decoding_equals_greedy_ar(kwargs: dict) -> None:
    m = _gpt(0)
    cond = torch.tensor([0, 3, 7, 9])
    s = SamplingConfig(temperature=0.0, cfg_scale=2.0)
    ref = create_decoder("ar")(m, cond, sampling=s)
    tau = 1.0 if "tau_k" not in kwargs else 1.0 - 1e-6
    out = create_decoder("sjd", window=6, accept="threshold", tau=tau, **kwargs)(m, cond, sampling=s)
    if "tau_k" in kwargs:  # pooling over 3 neighbours accepts drafts that are not the argmax
        assert not torch.equal(out.tokens, ref.tokens)
    else:
        assert torch.equal(out.tokens, ref.tokens)
    assert out.lossless is False and out.accepted.sum(0).tolist() == [16] * 4


def test_local_redrafting_keeps_drafts_outside_the_neighbourhoods() -> None:
    m = _gpt(2)
    p = torch.full((3, 64), 1e-3)
    drafts = torch.tensor([4, 9, 11])
    p[0, 4] = p[2, 11] = 0.9  # slot 1 (position 6) is the only rejection at tau = 0.5
    dec = SJDDecoder(window=3, accept="threshold", tau=0.5, local=0)
    kept = dec._kept(drafts, logits_to_probs(p.log()), None, 5, m.grid)
    assert kept.tolist() == [True, False, True]
    dec = SJDDecoder(window=3, accept="threshold", tau=0.5, local=1)
    assert dec._kept(drafts, logits_to_probs(p.log()), None, 5, m.grid).tolist() == [True, False, False]
    # greedy runs with local re-drafting are still exact
    s = SamplingConfig(temperature=0.0)
    ref = create_decoder("ar")(m, torch.tensor([1]), sampling=s)
    for local in (0, 2):
        dec = create_decoder("sjd", window=8, accept="threshold", tau=1.0, local=local)
        assert torch.equal(dec(m, torch.tensor([1]), sampling=s).tokens, ref.tokens)
    # sampled runs: keeping drafts changes what later forwards test, so the same streams give other images
    cond, gens = torch.tensor([1, 2, 3]), lambda: [torch.Generator().manual_seed(i) for i in range(3)]
    plain = create_decoder("sjd", window=8, accept="threshold", tau=0.05)(m, cond, generator=gens())
    local = create_decoder("sjd", window=8, accept="threshold", tau=0.05, local=0)(m, cond, generator=gens())
    assert not torch.equal(plain.tokens, local.tokens)
    assert local.accepted.sum(0).tolist() == [16] * 3


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="accept must be"):
        create_decoder("sjd", accept="lantern")
    with pytest.raises(ValueError, match="needs accept='threshold'"):
        create_decoder("sjd", local=1)
    with pytest.raises(ValueError, match="relax_k relaxes the ratio test"):
        create_decoder("sjd", accept="threshold", relax_k=2)
    with pytest.raises(ValueError, match="tau must be"):
        create_decoder("sjd", accept="threshold", tau=2.0)
    with pytest.raises(ValueError, match="greedy criterion"):
        create_decoder("jacobi", accept="threshold")
    assert create_decoder("sjd_coupled", accept="threshold").expectation == "lossy"
    assert create_decoder("sjd").expectation == "lossless"


def test_threshold_and_local_rows_equal_single_runs_in_ragged_and_continuous_batches() -> None:
    m = _gpt(0)
    cond = torch.tensor([0, 1, 2, 5, 8])
    s = SamplingConfig(temperature=1.0, cfg_scale=2.0, top_k=20)
    dec = create_decoder("sjd", window=4, accept="threshold", tau=0.05, tau_k=2, local=1)

    def gens():
        return [torch.Generator().manual_seed(10 + i) for i in range(5)]

    together = dec(m, cond, sampling=s, generator=gens())
    continuous = dec(m, cond, sampling=s, generator=gens(), max_batch=2)
    assert continuous.extras["continuous"] is True
    assert torch.equal(together.tokens, continuous.tokens)
    for i in range(5):
        one = dec(m, cond[i : i + 1], sampling=s, generator=[torch.Generator().manual_seed(10 + i)])
        assert torch.equal(together.tokens[i], one.tokens[0]), i
