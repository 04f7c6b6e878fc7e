"""The ``nar`` decoder: one anti-diagonal per forward, exactly the NAR model's own factorisation.

- the next-neighbour order covers every position once in ``2n - 1`` steps;
- ``nfe = 2n - 1`` and the tokens fixed per step are the anti-diagonals' lengths;
- the distributions sampled step by step equal the cache-free teacher-forced forward's (with CFG,
  temperature, top-k, top-p, captions), and on a 3-token vocabulary the samples follow the exact
  sequence probabilities (chi-square, as ``test_exactness`` does for raster decoders);
- a row's tokens do not depend on its batch (per-row generators, ``max_batch``);
- ``nar`` refuses raster models and ``ar`` / ``sjd`` refuse NAR models, saying what to do;
- a tiny ``ImageGenerationPipeline`` (``test_nar`` + ``test_vq``) generates with ``decoder="nar"``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import decodelab
from decodelab.speculative import SamplingConfig, create_decoder
from decodelab.speculative.base import DecodeContext
from decodelab.speculative.contract import GenerationOrder
from decodelab.speculative.sampling import cfg_mix, logits_to_probs
from decodelab.vision.pipeline import ImageGenerationPipeline

sys.path.append(str(Path(__file__).resolve().parents[1]))  # tests/: shared helpers (importlib mode adds nothing)
from helpers.distribution import chi_square, chi_square_critical, exact_sequence_probs


def _nar(name: str = "test_nar", seed: int = 0, std: float = 0.5, **kw):
    torch.manual_seed(seed)
    m = decodelab.create_model(name, **kw).eval()
    torch.nn.init.normal_(m.output.weight, 0.0, std)  # upstream zero-inits the horizontal head
    torch.nn.init.normal_(m.medusa_output.weight, 0.0, std)
    return m


def _cond(m, n: int):
    if m.condition_kind == "class":
        return torch.arange(n) % m.num_classes, None
    g = torch.Generator().manual_seed(3)
    T, C = m.num_cond_tokens, m.cls_embedding.cap_proj.fc1.in_features
    mask = torch.ones(n, T, dtype=torch.bool)
    for b in range(n):
        mask[b, : b % T] = False
    return torch.randn(n, T, C, generator=g), mask


def _full_probs(m, toks, cond, mask, s: SamplingConfig):
    """Final distributions ``[B, N, V]`` from the cache-free forward on the decoded tokens."""
    with torch.no_grad():
        if s.use_cfg:
            both_mask = None if mask is None else torch.cat([mask, mask])
            logits = m(torch.cat([toks, toks]), torch.cat([cond, m.null_condition(cond)]), cond_mask=both_mask)
            cut = s.cfg_interval + 1 if s.cfg_interval >= 0 else None
            apply = None if cut is None else (m.generation_order.step_of <= cut)[None].expand(toks.shape[0], -1)
            logits = cfg_mix(logits, s.cfg_scale, apply)
        else:
            logits = m(toks, cond, cond_mask=mask)
    return logits_to_probs(logits, s.temperature, s.top_k, s.top_p)


def _exact_nar_probs(m, s: SamplingConfig, cond: torch.Tensor, n_tokens: int, V: int) -> dict:
    """P(sequence) under the NAR model's own factorisation (``_full_probs``: its forward, CFG interval)."""
    return exact_sequence_probs(lambda toks: _full_probs(m, toks, cond, None, s)[0], n_tokens, V)


# --------------------------------------------------------------------------- order and counts
@pytest.mark.parametrize("n", [1, 2, 4, 16])
def test_anti_diagonal_order_covers_every_position_once(n: int) -> None:
    order = GenerationOrder.next_neighbor((n, n))
    steps = order.steps()
    assert len(steps) == 2 * n - 1
    assert sorted(torch.cat(steps).tolist()) == list(range(n * n))
    assert [len(p) for p in steps] == [min(c + 1, 2 * n - 1 - c) for c in range(2 * n - 1)]


@pytest.mark.parametrize("name", ["test_nar", "test_nar_t2i"])
def test_nfe_and_accepted_per_step(name: str) -> None:
    m = _nar(name)
    cond, mask = _cond(m, 3)
    out = create_decoder("nar")(m, cond, cond_mask=mask, generator=torch.Generator().manual_seed(0))
    assert out.nfe == 2 * 4 - 1 and out.nfe_by_model == {"target": 7}
    assert out.accepted.tolist() == [[k] * 3 for k in (1, 2, 3, 4, 3, 2, 1)]
    assert out.tokens.shape == (3, 4, 4) and out.decoder == "nar" and out.lossless
    assert out.mean_accepted == pytest.approx(16 / 7) and out.extras["steps"] == 7


# --------------------------------------------------------------------------- distributions
SETTINGS = {
    "plain": SamplingConfig(temperature=1.0),
    "cfg": SamplingConfig(temperature=1.0, cfg_scale=2.5),
    "cfg_interval": SamplingConfig(temperature=0.9, cfg_scale=3.0, cfg_interval=1),
    "topk_topp": SamplingConfig(temperature=0.8, top_k=20, top_p=0.9, cfg_scale=2.0),
}


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("name", ["test_nar", "test_nar_t2i"])
def test_step_by_step_distributions_equal_the_full_forward(name: str, setting: str) -> None:
    m = _nar(name, seed=1)
    s = SETTINGS[setting]
    cond, mask = _cond(m, 2)
    out = create_decoder("nar")(m, cond, cond_mask=mask, sampling=s, generator=torch.Generator().manual_seed(0))
    toks = out.tokens.view(2, -1)
    want = _full_probs(m, toks, cond, mask, s)
    ctx = DecodeContext(m, cond, s, [torch.Generator().manual_seed(0)] * 2, mask)
    got = torch.zeros_like(want)
    got[:, 0] = ctx.prefill()
    steps = m.generation_order.steps()
    for i in range(1, len(steps)):
        got[:, steps[i]] = ctx.forward(toks[:, steps[i - 1]], steps[i - 1], query_pos=steps[i])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # every decoded token is in the support of its distribution (top-k / top-p respected)
    assert bool((want.gather(-1, toks[..., None]) > 0).all())


def test_samples_follow_the_exact_sequence_probabilities() -> None:
    """3-token vocabulary, 2x2 grid: every sequence probability by enumeration vs 3000 decoded samples."""
    m = _nar(seed=1, std=0.2, vocab_size=3, block_size=4)
    s = SamplingConfig(temperature=1.0, top_k=2, cfg_scale=2.0)
    cond = torch.tensor([2])
    probs = _exact_nar_probs(m, s, cond, 4, 3)
    assert abs(sum(probs.values()) - 1) < 1e-4  # the anti-diagonal factorisation is a distribution
    n = 3000
    gens = [torch.Generator().manual_seed(7 * 100_003 + i) for i in range(n)]
    samples = create_decoder("nar")(m, cond.expand(n), sampling=s, generator=gens).tokens
    stat, df = chi_square(samples, probs)
    assert stat < chi_square_critical(df), f"chi2={stat:.1f} df={df}"


def test_greedy_is_deterministic_and_equals_argmax_of_the_full_forward() -> None:
    m = _nar(seed=2)
    cond, _ = _cond(m, 3)
    s = SamplingConfig(temperature=0.0, cfg_scale=3.0)
    a = create_decoder("nar")(m, cond, sampling=s, generator=torch.Generator().manual_seed(0)).tokens
    b = create_decoder("nar")(m, cond, sampling=s, generator=torch.Generator().manual_seed(1)).tokens
    assert torch.equal(a, b)
    toks = a.view(3, -1)
    assert torch.equal(_full_probs(m, toks, cond, None, s).argmax(-1), toks)


# --------------------------------------------------------------------------- batches
@pytest.mark.parametrize("name", ["test_nar", "test_nar_t2i"])
def test_rows_equal_single_row_runs(name: str) -> None:
    m = _nar(name, seed=3)
    cond, mask = _cond(m, 4)
    s = SamplingConfig(temperature=1.0, top_k=30, cfg_scale=2.0)
    seeds = [11, 12, 13, 14]
    dec = create_decoder("nar")
    batch = dec(m, cond, cond_mask=mask, sampling=s, generator=[torch.Generator().manual_seed(x) for x in seeds])
    for b, x in enumerate(seeds):
        one = dec(m, cond[b : b + 1], cond_mask=None if mask is None else mask[b : b + 1], sampling=s,
                  generator=[torch.Generator().manual_seed(x)])  # fmt: skip
        assert torch.equal(one.tokens[0], batch.tokens[b]), b
    split = dec(m, cond, cond_mask=mask, sampling=s, generator=[torch.Generator().manual_seed(x) for x in seeds],
                max_batch=3)  # fmt: skip
    assert torch.equal(split.tokens, batch.tokens) and split.nfe == 2 * 7
    assert split.extras["batches"] == 2 and split.accepted.shape == (14, 4)


@pytest.mark.parametrize("decoder", ["nar", "nar_sjd"])
@pytest.mark.parametrize("name", ["test_nar", "test_nar_t2i"])
def test_fast_cached_path_decodes_what_the_blocks_own_forward_decodes(name: str, decoder: str) -> None:
    """The model's eval-mode fast path is bit for bit the blocks' own forward: the same tokens, same seeds."""
    m = _nar(name, seed=3, std=1.0)
    cond, mask = _cond(m, 3)
    s = SamplingConfig(temperature=1.0, cfg_scale=2.0)
    fast = create_decoder(decoder)(m, cond, cond_mask=mask, sampling=s, generator=torch.Generator().manual_seed(4))
    m._blocks_cached = m._blocks
    slow = create_decoder(decoder)(m, cond, cond_mask=mask, sampling=s, generator=torch.Generator().manual_seed(4))
    assert torch.equal(fast.tokens, slow.tokens) and fast.nfe == slow.nfe


# --------------------------------------------------------------------------- refusals
def test_nar_refuses_a_raster_model_and_says_what_to_do() -> None:
    gpt = decodelab.create_model("test_gpt").eval()
    with pytest.raises(ValueError, match=r"needs a next-neighbour model .*test_nar.*'ar' or 'sjd'"):
        create_decoder("nar")(gpt, torch.tensor([1]))


@pytest.mark.parametrize("name", ["ar", "sjd", "jacobi", "sjd_coupled"])
def test_raster_decoders_refuse_a_nar_model(name: str) -> None:
    want = rf"decoder '{name}' decodes in raster order.*'next_neighbor' order.*list_decoders"
    with pytest.raises(ValueError, match=want):
        create_decoder(name)(_nar(), torch.tensor([1]))


def test_nar_declares_its_promise() -> None:
    dec = create_decoder("nar")
    assert dec.expectation == "reference" and dec.orders == ("next_neighbor",) and dec.requires == ()
    assert not dec.can_refill(_nar())


# --------------------------------------------------------------------------- through a pipeline
def test_pipeline_generates_with_nar() -> None:
    model = _nar()
    torch.manual_seed(0)
    tok = decodelab.create_model("test_vq")
    pipe = ImageGenerationPipeline(model, tok, info={"name": "test-nar"})
    out = pipe(classes=[1, 2], decoder="nar", seed=0, num_images=2, batch_size=3, cfg_scale=2.0)
    assert len(out.images) == 4 and out.tokens.shape == (4, 4, 4)
    assert out.outputs[0].nfe == 2 * 7 and out.settings["decoder"] == "nar"
    again = pipe(classes=[1, 2], decoder="nar", seed=0, num_images=2, cfg_scale=2.0)
    assert torch.equal(again.tokens, out.tokens)  # the batching does not change an image
    # without a decoder named, a pipeline uses its model's reference decoder (nar here, ar for a GPT)
    assert pipe.default_decoder == "nar" and decodelab.load_pipeline("test-c2i").default_decoder == "ar"
    default = pipe(classes=[1, 2], seed=0, num_images=2, cfg_scale=2.0)
    assert default.settings["decoder"] == "nar" and torch.equal(default.tokens, out.tokens)


# --------------------------------------------------------------------------- nar_sjd: speculative anti-diagonals
@pytest.mark.parametrize("window", [1, 2, 3])
def test_nar_sjd_samples_follow_the_exact_sequence_probabilities(window: int) -> None:
    """Same enumeration as for ``nar``: drafts verified per anti-diagonal leave the distribution unchanged."""
    m = _nar(seed=1, std=0.2, vocab_size=3, block_size=4)
    s = SamplingConfig(temperature=1.0, top_k=2, cfg_scale=2.0)
    cond = torch.tensor([2])
    n = 3000
    gens = [torch.Generator().manual_seed(5 * 100_003 + i) for i in range(n)]
    out = create_decoder("nar_sjd", window=window)(m, cond.expand(n), sampling=s, generator=gens)
    stat, df = chi_square(out.tokens, _exact_nar_probs(m, s, cond, 4, 3))
    assert stat < chi_square_critical(df), f"window {window}: chi2={stat:.1f} df={df}"
    # every row commits its 4 tokens; window 1 is nar's schedule (one anti-diagonal per forward)
    assert out.accepted.sum(0).tolist() == [4] * n
    if window == 1:
        assert out.row_nfe.tolist() == [3] * n
    else:  # whole anti-diagonals are accepted often on a 3-token vocabulary: fewer forwards than nar
        assert float(out.row_nfe.float().mean()) < 3 and int(out.row_nfe.max()) <= 3


def test_nar_sjd_with_a_wrong_residual_fails_the_same_test() -> None:
    """The enumeration test has the power to catch a wrong correction rule (resample from p, not p - q)."""
    import decodelab.speculative.nar as nar_mod

    m = _nar(seed=1, std=0.2, vocab_size=3, block_size=4)
    s = SamplingConfig(temperature=1.0, top_k=2, cfg_scale=2.0)
    cond, n = torch.tensor([2]), 3000
    gens = [torch.Generator().manual_seed(5 * 100_003 + i) for i in range(n)]
    real = nar_mod.residual_distribution
    nar_mod.residual_distribution = lambda p, q: p  # the biased rule
    try:
        out = create_decoder("nar_sjd", window=2)(m, cond.expand(n), sampling=s, generator=gens)
    finally:
        nar_mod.residual_distribution = real
    stat, df = chi_square(out.tokens, _exact_nar_probs(m, s, cond, 4, 3))
    assert stat > chi_square_critical(df), f"biased rule passed: chi2={stat:.1f} df={df}"


@pytest.mark.parametrize("name", ["test_nar", "test_nar_t2i"])
def test_nar_sjd_greedy_equals_nar_greedy_in_fewer_forwards(name: str) -> None:
    m = _nar(name, seed=2, std=2.0)  # peaked heads: greedy drafts get accepted
    cond, mask = _cond(m, 3)
    for cfg in (1.0, 3.0):
        s = SamplingConfig(temperature=0.0, cfg_scale=cfg)
        ref = create_decoder("nar")(m, cond, cond_mask=mask, sampling=s)
        out = create_decoder("nar_sjd", window=3)(m, cond, cond_mask=mask, sampling=s)
        assert torch.equal(out.tokens, ref.tokens)
        assert int(out.row_nfe.max()) <= ref.nfe and out.nfe <= ref.nfe
        assert out.extras["window"] == 3 and out.lossless and out.decoder == "nar_sjd"


@pytest.mark.parametrize("name", ["test_nar", "test_nar_t2i"])
def test_nar_sjd_rows_equal_single_row_runs(name: str) -> None:
    """Rows finish after different numbers of forwards (ragged windows); a row's tokens do not depend on its batch."""
    m = _nar(name, seed=3, std=1.0)
    cond, mask = _cond(m, 4)
    s = SamplingConfig(temperature=1.0, top_k=30, cfg_scale=2.0)
    seeds = [11, 12, 13, 14]
    dec = create_decoder("nar_sjd", window=2)
    batch = dec(m, cond, cond_mask=mask, sampling=s, generator=[torch.Generator().manual_seed(x) for x in seeds])
    for b, x in enumerate(seeds):
        one = dec(m, cond[b : b + 1], cond_mask=None if mask is None else mask[b : b + 1], sampling=s,
                  generator=[torch.Generator().manual_seed(x)])  # fmt: skip
        assert torch.equal(one.tokens[0], batch.tokens[b]), b
        assert int(one.row_nfe[0]) == int(batch.row_nfe[b])


def test_nar_sjd_checks_its_arguments_and_model() -> None:
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="window"):
            create_decoder("nar_sjd", window=bad)
    gpt = decodelab.create_model("test_gpt").eval()
    with pytest.raises(ValueError, match=r"decoder 'nar_sjd' needs a next-neighbour model"):
        create_decoder("nar_sjd")(gpt, torch.tensor([1]))
    assert create_decoder("nar_sjd").expectation == "lossless"
