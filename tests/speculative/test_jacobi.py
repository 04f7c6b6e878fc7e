"""Exactness of the Jacobi-family decoders against ``ar``.

Greedy ``jacobi`` must equal greedy ``ar`` token for token. The probabilistic decoders claiming to
be lossless must reproduce ``ar``'s *distribution*: on a model with a 3-token vocabulary and 4
image positions every sequence probability is computed exactly by enumeration (from the full,
cache-free forward), and thousands of decoded samples are compared with it by a chi-square test
that a deliberately biased acceptance rule fails.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import decodelab
from decodelab.speculative import SamplingConfig, create_decoder
from decodelab.speculative.jacobi import SJDDecoder, _sample_one
from decodelab.speculative.sampling import cfg_mix, logits_to_probs


def _model(seed: int, std: float = 0.6, name: str = "test_gpt", **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = decodelab.create_model(name, **kw).eval()
    torch.nn.init.normal_(m.output.weight, 0.0, std)  # upstream zero-init would make p uniform
    return m


# --------------------------------------------------------------------------- greedy exactness
@pytest.mark.parametrize("init", ["horizontal", "vertical", "random"])
@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_greedy_jacobi_equals_greedy_ar(init: str, cfg_scale: float) -> None:
    m = _model(0)
    cond = torch.tensor([0, 3, 7, 9])
    s = SamplingConfig(temperature=0.0, cfg_scale=cfg_scale)
    ref = create_decoder("ar")(m, cond, sampling=s)
    for window in (1, 3, 16):
        out = create_decoder("jacobi", window=window, init=init)(
            m, cond, sampling=s, generator=torch.Generator().manual_seed(0)
        )
        assert torch.equal(out.tokens, ref.tokens)
        assert out.nfe <= ref.nfe
        assert int(out.accepted.sum(0).min()) == m.num_tokens  # every row fixed all its tokens


def test_jacobi_converges_faster_on_a_predictable_model() -> None:
    # A model whose greedy choice ignores context (output depends only on the bias-like
    # embedding of the class token) lets Jacobi fix many tokens per forward.
    torch.manual_seed(0)
    m = decodelab.create_model("test_gpt").eval()
    with torch.no_grad():
        m.output.weight.zero_()
        m.output.weight[5] = 1.0  # token 5 is always the argmax: drafts copied from the left match
    s = SamplingConfig(temperature=0.0)
    ref = create_decoder("ar")(m, torch.tensor([1]), sampling=s)
    out = create_decoder("jacobi", window=8)(m, torch.tensor([1]), sampling=s)
    assert torch.equal(out.tokens, ref.tokens)
    assert out.nfe < ref.nfe // 3


# --------------------------------------------------------------------------- distribution exactness
def _exact_distribution(m, cls: int, s: SamplingConfig) -> dict[tuple[int, ...], float]:
    """P(sequence) under the final sampling distribution, from cache-free full forwards."""
    N, V = m.num_tokens, m.vocab_size
    probs = {}
    for seq in itertools.product(range(V), repeat=N):
        toks = torch.tensor([seq])
        cond = torch.tensor([cls])
        with torch.no_grad():
            if s.use_cfg:
                logits = m(torch.cat([toks, toks]), torch.cat([cond, m.null_condition(cond)]))
                logits = cfg_mix(logits, s.cfg_scale)
            else:
                logits = m(toks, cond)
        p = logits_to_probs(logits, s.temperature, s.top_k, s.top_p)[0]  # [N, V]
        probs[seq] = float(torch.prod(p[torch.arange(N), toks[0]]))
    return probs


def _chi_square(samples: torch.Tensor, probs: dict[tuple[int, ...], float]) -> tuple[float, int]:
    """Pearson chi-square over cells with expected count >= 5 (the rest pooled)."""
    n = samples.shape[0]
    counts: dict[tuple[int, ...], int] = {}
    for row in samples.view(n, -1).tolist():
        counts[tuple(row)] = counts.get(tuple(row), 0) + 1
    stat, df, pool_o, pool_e = 0.0, -1, 0, 0.0
    for seq, p in probs.items():
        e, o = p * n, counts.get(seq, 0)
        if e >= 5:
            stat += (o - e) ** 2 / e
            df += 1
        else:
            pool_o, pool_e = pool_o + o, pool_e + e
    if pool_e > 0:
        stat += (pool_o - pool_e) ** 2 / pool_e
        df += 1
    return stat, df


def _chi2_critical(df: int, z: float = 3.72) -> float:
    """Wilson-Hilferty upper quantile of chi-square (z = 3.72 -> p = 1e-4)."""
    return df * (1 - 2 / (9 * df) + z * (2 / (9 * df)) ** 0.5) ** 3


def _samples(decoder, m, cls: int, s: SamplingConfig, n: int, seed: int) -> torch.Tensor:
    gens = [torch.Generator().manual_seed(seed * 100_003 + i) for i in range(n)]
    return decoder(m, torch.full((n,), cls), sampling=s, generator=gens).tokens


TINY = dict(vocab_size=3, block_size=4, std=0.2)  # a spread-out distribution over 81 sequences
SETTINGS = {
    "plain": SamplingConfig(temperature=1.0),
    "cfg": SamplingConfig(temperature=1.0, cfg_scale=2.5),
    "topk": SamplingConfig(temperature=0.8, top_k=2),
    "cfg+topk": SamplingConfig(temperature=1.0, top_k=2, cfg_scale=2.0),
}


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
def test_lossless_decoders_reproduce_ar_distribution(setting: str, name: str, kwargs: dict) -> None:
    m = _model(1, **TINY)
    s = SETTINGS[setting]
    probs = _exact_distribution(m, 2, s)
    dec = create_decoder(name, **kwargs)
    assert dec.lossless
    samples = _samples(dec, m, 2, s, 3000, seed=7)
    stat, df = _chi_square(samples, probs)
    assert stat < _chi2_critical(df), f"{name} {kwargs} {setting}: chi2={stat:.1f} df={df}"


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
    m = _model(1, **TINY)
    s = SETTINGS["cfg"]
    probs = _exact_distribution(m, 2, s)
    samples = _samples(_BiasedSJD(window=4), m, 2, s, 3000, seed=7)
    stat, df = _chi_square(samples, probs)
    assert stat > _chi2_critical(df), f"biased rule passed: chi2={stat:.1f} df={df}"


def test_relaxed_acceptance_is_flagged_lossy() -> None:
    m = _model(1, **TINY)
    out = create_decoder("sjd", window=4, relax_k=1, relax_delta=0.5)(m, torch.tensor([2, 2]))
    assert out.lossless is False
    assert out.summary()["lossless"] is False


# --------------------------------------------------------------------------- ragged batches
@pytest.mark.parametrize("name", ["sjd", "sjd_coupled", "jacobi"])
def test_ragged_batch_rows_equal_single_row_runs(name: str) -> None:
    m = _model(3)
    s = SamplingConfig(temperature=1.0, cfg_scale=2.0, top_k=20)
    if name == "jacobi":
        s = SamplingConfig(temperature=0.0, cfg_scale=2.0)
    cond = torch.tensor([0, 1, 2, 5, 8])
    seeds = [11, 22, 33, 44, 55]
    dec = create_decoder(name, window=5)
    batch = dec(m, cond, sampling=s, generator=[torch.Generator().manual_seed(x) for x in seeds])
    for b in range(len(seeds)):
        alone = dec(m, cond[b : b + 1], sampling=s, generator=[torch.Generator().manual_seed(seeds[b])])
        assert torch.equal(batch.tokens[b], alone.tokens[0]), f"row {b} differs"
        assert int(batch.row_nfe[b]) == alone.nfe
    # rows progress independently: the batch needs as many forwards as its slowest row
    assert batch.nfe == int(batch.row_nfe.max())


@pytest.mark.parametrize("name", ["sjd", "sjd_coupled", "jacobi"])
@pytest.mark.parametrize("model_name", ["test_gpt", "test_gpt_t2i"])
def test_continuous_batching_images_equal_single_runs(name: str, model_name: str) -> None:
    # 7 images through 3 rows: a finished row takes the next image with its prefill folded into the
    # next forward. Each image must still equal its run alone (same generator stream) and need
    # exactly as many forwards as alone.
    m = _model(3, name=model_name)
    greedy = name == "jacobi"
    s = SamplingConfig(temperature=0.0 if greedy else 1.0, cfg_scale=2.0, top_k=0 if greedy else 20)
    M = 7
    if m.model_type == "c2i":
        cond, mask = torch.tensor([0, 1, 2, 5, 8, 3, 3]), None
    else:
        g = torch.Generator().manual_seed(0)
        cond = torch.randn(M, m.num_cond_tokens, m.cls_embedding.cap_proj.fc1.in_features, generator=g)
        mask = torch.ones(M, m.num_cond_tokens, dtype=torch.bool)
        for i in range(M):
            mask[i, : i % m.num_cond_tokens] = False
    seeds = [11 * (i + 1) for i in range(M)]
    gens = lambda: [torch.Generator().manual_seed(x) for x in seeds]  # noqa: E731
    dec = create_decoder(name, window=max(5, m.num_cond_tokens))
    out = dec(m, cond, sampling=s, generator=gens(), cond_mask=mask, max_batch=3)
    assert out.extras["continuous"] is True and out.accepted.shape == (out.nfe, M)
    for b in range(M):
        alone = dec(m, cond[b : b + 1], sampling=s, generator=gens()[b : b + 1],
                    cond_mask=None if mask is None else mask[b : b + 1])  # fmt: skip
        assert torch.equal(out.tokens[b], alone.tokens[0]), f"image {b} differs"
        assert int(out.row_nfe[b]) == alone.nfe
        assert int(out.accepted[:, b].sum()) == m.num_tokens
    # at most 3 images are in flight in any forward
    assert int((out.accepted > 0).sum(1).max()) <= 3
    # fixed batches of 3 (refill off) give the same images but wait for each batch's slowest row
    fixed = create_decoder(name, window=max(5, m.num_cond_tokens), refill=False)(
        m, cond, sampling=s, generator=gens(), cond_mask=mask, max_batch=3
    )
    assert fixed.extras["continuous"] is False and fixed.extras["batches"] == 3
    assert torch.equal(fixed.tokens, out.tokens)
    assert out.nfe <= fixed.nfe
    if not greedy:  # rows of unequal length: refilling saves forwards
        assert out.nfe < fixed.nfe


def test_max_batch_without_refill_runs_batches_in_turn() -> None:
    m = _model(4)
    cond = torch.tensor([1, 2, 3, 4, 5])
    s = SamplingConfig(temperature=1.0, cfg_scale=1.5)
    whole = create_decoder("ar")(m, cond, sampling=s, generator=torch.Generator().manual_seed(3))
    split = create_decoder("ar")(m, cond, sampling=s, generator=torch.Generator().manual_seed(3), max_batch=2)
    assert torch.equal(split.tokens, whole.tokens)
    assert split.nfe == 3 * m.num_tokens and split.extras["batches"] == 3
    assert torch.equal(split.row_nfe, whole.row_nfe)
    # a window shorter than the caption cannot hold a folded prefill: sjd falls back to batches
    t2i = _model(4, name="test_gpt_t2i")
    short = create_decoder("sjd", window=2)
    assert not short.can_refill(t2i) and create_decoder("sjd", window=t2i.num_cond_tokens).can_refill(t2i)
    with pytest.raises(ValueError, match="max_batch"):
        create_decoder("sjd")(m, cond, max_batch=0)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="init"):
        create_decoder("sjd", init="diagonal")
    with pytest.raises(ValueError, match="window"):
        create_decoder("sjd", window=0)
    with pytest.raises(ValueError, match="valid arguments"):
        create_decoder("sjd", windw=4)
