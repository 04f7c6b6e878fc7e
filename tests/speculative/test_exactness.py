"""Every registered decoder keeps the promise it declares (``Decoder.expectation``), on every tiny model.

- ``reference`` / ``lossless``: samples follow ``ar``'s *distribution*. On a model with a 3-token
  vocabulary and 4 image positions every sequence probability is computed exactly by enumeration
  (from the full, cache-free forward) and thousands of decoded samples are compared with it by a
  chi-square test that a deliberately biased acceptance rule fails.
- ``greedy_equals_ar``: greedy output equals greedy ``ar`` token for token.
- ``lossy``: says so in its output.

A decoder added to the registry is picked up here without editing this file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import decodelab
from decodelab.speculative import SamplingConfig, create_decoder, list_decoders
from decodelab.speculative.base import EXPECTATIONS
from decodelab.speculative.sjd import SJDDecoder, _sample_one

sys.path.append(str(Path(__file__).resolve().parents[1]))  # tests/: shared helpers (importlib mode adds nothing)
from helpers.distribution import chi_square, chi_square_critical, exact_raster_distribution

TINY_MODELS = ("test_gpt", "test_gpt_t2i")


def _model(name: str, seed: int, std: float, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = decodelab.create_model(name, **kw).eval()
    torch.nn.init.normal_(m.output.weight, 0.0, std)  # upstream zero-init would make p uniform
    return m


def _cond(m) -> torch.Tensor:
    """One condition of the model's kind: class 2, or a fixed caption embedding."""
    if m.condition_kind == "class":
        return torch.tensor([2])
    g = torch.Generator().manual_seed(3)
    return torch.randn(1, m.num_cond_tokens, m.cls_embedding.cap_proj.fc1.in_features, generator=g)


def _samples(decoder, m, cond: torch.Tensor, s: SamplingConfig, n: int, seed: int) -> torch.Tensor:
    gens = [torch.Generator().manual_seed(seed * 100_003 + i) for i in range(n)]
    return decoder(m, cond.expand(n, *cond.shape[1:]), sampling=s, generator=gens).tokens


TINY = dict(vocab_size=3, block_size=4, std=0.2)  # a spread-out distribution over 81 sequences
SETTINGS = {
    "plain": SamplingConfig(temperature=1.0),
    "cfg": SamplingConfig(temperature=1.0, cfg_scale=2.5),
    "topk": SamplingConfig(temperature=0.8, top_k=2),
    "cfg+topk": SamplingConfig(temperature=1.0, top_k=2, cfg_scale=2.0),
}


# --------------------------------------------------------------------------- over the registry
def test_every_registered_decoder_declares_an_expectation() -> None:
    names = list_decoders()
    assert {"ar", "jacobi", "sjd", "sjd_coupled"} <= set(names)
    for name in names:
        dec = create_decoder(name)
        assert dec.expectation in EXPECTATIONS, name
        assert dec.lossless == (dec.expectation != "lossy")


@pytest.mark.parametrize("model_name", TINY_MODELS)
@pytest.mark.parametrize("name", list_decoders())
def test_registered_decoder_keeps_its_promise(name: str, model_name: str) -> None:
    dec = create_decoder(name)
    if dec.orders != ("raster",) and "raster" not in dec.orders:
        pytest.skip(f"{name} decodes {dec.orders} models; its exactness is tested with those models")
    if dec.requires:
        pytest.skip(f"{name} needs {dec.requires}; its exactness is tested with those models")
    if dec.expectation in ("reference", "lossless"):
        m = _model(model_name, 1, **TINY)
        s = SETTINGS["cfg+topk"]
        cond = _cond(m)
        stat, df = chi_square(_samples(dec, m, cond, s, 3000, seed=7), exact_raster_distribution(m, cond, s))
        assert stat < chi_square_critical(df), f"{name} on {model_name}: chi2={stat:.1f} df={df}"
    elif dec.expectation == "greedy_equals_ar":
        m = _model(model_name, 0, std=0.6)
        cond = _cond(m).expand(3, *_cond(m).shape[1:]) if m.condition_kind == "text" else torch.tensor([0, 4, 9])
        for cfg in (1.0, 3.0):
            s = SamplingConfig(temperature=0.0, cfg_scale=cfg)
            assert torch.equal(dec(m, cond, sampling=s).tokens, create_decoder("ar")(m, cond, sampling=s).tokens)
    else:
        m = _model(model_name, 1, **TINY)
        assert dec(m, _cond(m)).lossless is False


# --------------------------------------------------------------------------- variants and settings
@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("ar", {}),
        ("sjd", {"window": 4, "init": "horizontal"}),
        ("sjd", {"window": 3, "init": "random"}),
        ("sjd", {"window": 4, "init": "vertical", "ragged": False}),
        ("sjd_coupled", {"window": 4}),
        ("sjd_coupled", {"window": 3, "init": "random", "ragged": False}),
    ],
)
def test_lossless_decoder_variants_reproduce_ar_distribution(setting: str, name: str, kwargs: dict) -> None:
    m = _model("test_gpt", 1, **TINY)
    s = SETTINGS[setting]
    cond = _cond(m)
    probs = exact_raster_distribution(m, cond, s)
    dec = create_decoder(name, **kwargs)
    assert dec.lossless
    stat, df = chi_square(_samples(dec, m, cond, s, 3000, seed=7), probs)
    assert stat < chi_square_critical(df), f"{name} {kwargs} {setting}: chi2={stat:.1f} df={df}"


class _BiasedSJD(SJDDecoder):
    """A wrong rule: on rejection resample from p itself instead of norm(max(0, p - q))."""

    def _verify_row(self, drafts, q, p, gen, nbrs):
        m = drafts.shape[0]
        idx = torch.arange(m)
        ratio = p[idx, drafts] / q[idx, drafts].clamp_min(1e-30)
        ok = torch.rand(m, generator=gen) < ratio.clamp_max(1.0)
        k = int(ok.long().cumprod(0).sum())
        return (k, -1) if k == m else (k, _sample_one(p[k], gen))


def test_the_distribution_test_catches_a_biased_rule() -> None:
    m = _model("test_gpt", 1, **TINY)
    s = SETTINGS["cfg"]
    cond = _cond(m)
    stat, df = chi_square(
        _samples(_BiasedSJD(window=4), m, cond, s, 3000, seed=7), exact_raster_distribution(m, cond, s)
    )
    assert stat > chi_square_critical(df), f"biased rule passed: chi2={stat:.1f} df={df}"


def test_relaxed_acceptance_is_flagged_lossy() -> None:
    m = _model("test_gpt", 1, **TINY)
    dec = create_decoder("sjd", window=4, relax_k=1, relax_delta=0.5)
    assert dec.expectation == "lossy"
    out = dec(m, torch.tensor([2, 2]))
    assert out.lossless is False
    assert out.summary()["lossless"] is False
