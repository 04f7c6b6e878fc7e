"""Tests for the ``ar`` reference decoder against hand-written decoding loops that use the
full-sequence (cache-free) forward."""

from __future__ import annotations

import pytest
import torch

from decodelab.registry import MODELS
from decodelab.speculative import DecodeOutput, SamplingConfig, create_decoder
from decodelab.vision.models import GPT


def make_gpt(name: str = "test_gpt", seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = MODELS.create(name)
    torch.nn.init.normal_(model.output.weight, 0.0, 0.5)  # upstream zero-init would make logits constant
    return model.eval()


@pytest.fixture(scope="module")
def c2i() -> GPT:
    return make_gpt()


@pytest.fixture(scope="module")
def t2i() -> GPT:
    return make_gpt("test_gpt_t2i")


def captions(model: GPT, batch: int, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(batch, model.num_cond_tokens, 24, generator=g)
    mask = torch.ones(batch, model.num_cond_tokens, dtype=torch.bool)
    for b in range(batch):
        mask[b, : (2 * b + 1) % model.num_cond_tokens] = False  # left padding, different per row
    return emb, mask


def seeded(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


@torch.no_grad()
def greedy_reference(
    model: GPT, cond: torch.Tensor, cfg_scale: float = 1.0, cfg_interval: int = -1, cond_mask=None
) -> torch.Tensor:
    """Argmax decoding with the teacher-forced forward over the whole sequence at every step (no cache).

    CFG as LlamaGen's generate(): rows ``[cond; null]`` (the null rows keep the caption mask),
    ``u + (c - u) * s``, applied to image tokens ``0..cfg_interval + 1`` (all when ``-1``).
    """
    B, N = cond.shape[0], model.num_tokens
    tokens = torch.zeros(B, N, dtype=torch.long)
    for i in range(N):
        if cfg_scale != 1.0:
            both = torch.cat([cond, model.null_condition(cond)])
            mask2 = None if cond_mask is None else torch.cat([cond_mask, cond_mask])
            c, u = model(torch.cat([tokens, tokens]), both, cond_mask=mask2)[:, i].chunk(2)
            use = cfg_interval < 0 or i <= cfg_interval + 1
            logits = u + (c - u) * cfg_scale if use else c
        else:
            logits = model(tokens, cond, cond_mask=cond_mask)[:, i]
        tokens[:, i] = logits.argmax(-1)
    return tokens


def run_ar(model: GPT, cond: torch.Tensor, generator=None, cond_mask=None, **sampling) -> DecodeOutput:
    return create_decoder("ar")(
        model, cond, sampling=SamplingConfig(**sampling), generator=generator, cond_mask=cond_mask
    )


# ----------------------------------------------------------------------------- output contract


def test_output_contract(c2i: GPT) -> None:
    out = run_ar(c2i, torch.tensor([1, 2, 3]), torch.Generator().manual_seed(0))
    N, G = c2i.num_tokens, c2i.grid_size
    assert isinstance(out, DecodeOutput)
    assert out.tokens.shape == (3, G, G) and out.tokens.dtype == torch.long
    assert ((out.tokens >= 0) & (out.tokens < c2i.vocab_size)).all()
    assert out.nfe == N
    assert out.accepted.shape == (N, 3) and torch.equal(out.accepted, torch.ones(N, 3, dtype=torch.long))
    assert torch.equal(out.row_nfe, torch.full((3,), N))
    assert out.mean_accepted == 1.0 and out.accepted_histogram() == {1: 3 * N}
    assert out.decoder == "ar" and out.lossless and out.wall_time > 0
    assert "settings" in out.extras
    summary = out.summary()
    assert summary["nfe"] == N and summary["mean_row_nfe"] == N and summary["decoder"] == "ar"


def test_nfe_with_cfg_is_still_n(c2i: GPT) -> None:
    out = run_ar(c2i, torch.tensor([4, 5]), torch.Generator().manual_seed(0), cfg_scale=2.0)
    assert out.nfe == c2i.num_tokens and torch.equal(out.accepted, torch.ones(c2i.num_tokens, 2, dtype=torch.long))


# ----------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_same_seed_same_tokens_different_seed_differs(c2i: GPT, cfg_scale: float) -> None:
    cond = torch.tensor([0, 5, 9])
    a = run_ar(c2i, cond, torch.Generator().manual_seed(11), cfg_scale=cfg_scale).tokens
    b = run_ar(c2i, cond, torch.Generator().manual_seed(11), cfg_scale=cfg_scale).tokens
    c = run_ar(c2i, cond, torch.Generator().manual_seed(12), cfg_scale=cfg_scale).tokens
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])  # rows are not copies of one another


def test_global_rng_when_no_generator(c2i: GPT) -> None:
    torch.manual_seed(3)
    a = run_ar(c2i, torch.tensor([1])).tokens
    torch.manual_seed(3)
    assert torch.equal(run_ar(c2i, torch.tensor([1])).tokens, a)


# ----------------------------------------------------------------------------- greedy == hand loop


@pytest.mark.parametrize(
    ("cfg_scale", "cfg_interval", "greedy"),
    [(1.0, -1, dict(top_k=1)), (3.0, -1, dict(top_k=1)), (4.0, 5, dict(top_k=1)), (2.0, -1, dict(temperature=0.0))],
)
def test_greedy_equals_full_forward_loop_c2i(c2i: GPT, cfg_scale: float, cfg_interval: int, greedy: dict) -> None:
    cond = torch.tensor([0, 3, 7, 9])
    out = run_ar(c2i, cond, torch.Generator().manual_seed(0), cfg_scale=cfg_scale, cfg_interval=cfg_interval, **greedy)
    want = greedy_reference(c2i, cond, cfg_scale, cfg_interval)
    assert torch.equal(out.tokens.flatten(1), want)
    assert len(set(want.flatten().tolist())) > 3  # not a constant sequence


def test_cfg_and_interval_change_the_greedy_output(c2i: GPT) -> None:
    cond = torch.tensor([0, 3, 7, 9])
    plain = greedy_reference(c2i, cond)
    guided = greedy_reference(c2i, cond, cfg_scale=4.0)
    interval = greedy_reference(c2i, cond, cfg_scale=4.0, cfg_interval=5)
    assert not torch.equal(plain, guided) and not torch.equal(guided, interval)
    assert torch.equal(guided[:, :7], interval[:, :7])  # tokens 0..cfg_interval+1 are guided in both


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_greedy_equals_full_forward_loop_t2i(t2i: GPT, cfg_scale: float) -> None:
    emb, mask = captions(t2i, 3)
    out = run_ar(t2i, emb, torch.Generator().manual_seed(0), cond_mask=mask, cfg_scale=cfg_scale, top_k=1)
    assert torch.equal(out.tokens.flatten(1), greedy_reference(t2i, emb, cfg_scale, cond_mask=mask))


# ----------------------------------------------------------------------------- batch == single rows


@pytest.mark.parametrize("cfg_scale", [1.0, 2.5])
def test_batch_rows_equal_single_row_runs(c2i: GPT, cfg_scale: float) -> None:
    cond = torch.tensor([2, 2, 6, 8])
    seeds = (21, 22, 23, 24)
    settings = dict(cfg_scale=cfg_scale, temperature=1.0, top_k=20, top_p=0.95)
    batch = run_ar(c2i, cond, seeded(*seeds), **settings).tokens
    for b, s in enumerate(seeds):
        single = run_ar(c2i, cond[b : b + 1], seeded(s), **settings).tokens
        assert torch.equal(single[0], batch[b]), f"row {b}"
    assert not torch.equal(batch[0], batch[1])  # same class, different streams


def test_batch_rows_equal_single_row_runs_t2i(t2i: GPT) -> None:
    emb, mask = captions(t2i, 3)
    seeds = (5, 6, 7)
    batch = run_ar(t2i, emb, seeded(*seeds), cond_mask=mask, cfg_scale=2.0).tokens
    for b, s in enumerate(seeds):
        single = run_ar(t2i, emb[b : b + 1], seeded(s), cond_mask=mask[b : b + 1], cfg_scale=2.0).tokens
        assert torch.equal(single[0], batch[b]), f"row {b}"


def test_one_seed_gives_per_row_streams_independent_of_batch(c2i: GPT) -> None:
    """A single generator seeds per-row streams, so the first rows do not change when rows are added."""
    a = run_ar(c2i, torch.tensor([1, 4]), torch.Generator().manual_seed(9)).tokens
    b = run_ar(c2i, torch.tensor([1, 4, 7]), torch.Generator().manual_seed(9)).tokens
    assert torch.equal(a, b[:2])


# ----------------------------------------------------------------------------- sampling distribution


def test_first_token_follows_the_final_distribution() -> None:
    """Token 0 is drawn from the CFG-mixed, temperature-scaled, top-k-filtered prefill distribution."""
    torch.manual_seed(0)
    model = MODELS.create("test_gpt", block_size=4).eval()  # 2x2 tokens: a cheap decode per row
    torch.nn.init.normal_(model.output.weight, 0.0, 0.5)
    n = 600
    cond = torch.full((n,), 3)
    settings = dict(cfg_scale=1.5, temperature=1.3, top_k=6)
    out = run_ar(model, cond, torch.Generator().manual_seed(1), **settings)
    c, u = model(torch.zeros(2, model.num_tokens, dtype=torch.long), torch.tensor([3, 10]))[:, 0]
    logits = (u + (c - u) * 1.5) / 1.3
    top = logits.topk(6).indices
    probs = torch.zeros_like(logits)
    probs[top] = logits[top].softmax(-1)
    first = out.tokens.flatten(1)[:, 0]
    assert set(first.tolist()) <= set(top.tolist())
    freq = torch.bincount(first, minlength=model.vocab_size).float() / n
    assert (freq - probs).abs().max() < 0.07


# ----------------------------------------------------------------------------- input errors


def test_class_id_out_of_range(c2i: GPT) -> None:
    for bad in ([0, 11], [-1]):
        with pytest.raises(ValueError, match=r"class id out of range.*0\.\.9"):
            run_ar(c2i, torch.tensor(bad), torch.Generator().manual_seed(0))


def test_bad_condition_shape_or_type(c2i: GPT, t2i: GPT) -> None:
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="integer class ids"):
        run_ar(c2i, torch.tensor([[1, 2]]), g)
    with pytest.raises(ValueError, match="integer class ids"):
        run_ar(c2i, torch.tensor([1.0, 2.0]), g)
    with pytest.raises(ValueError, match=r"\[B, 6, 24\]"):
        run_ar(t2i, torch.zeros(2, 6, 23), g)
    with pytest.raises(ValueError, match=r"\[B, 6, 24\]"):
        run_ar(t2i, torch.zeros(6, 24), g)
    with pytest.raises(ValueError, match="cond_mask"):
        run_ar(t2i, torch.zeros(2, 6, 24), g, cond_mask=torch.ones(2, 5, dtype=torch.bool))


def test_generator_list_must_match_batch(c2i: GPT) -> None:
    with pytest.raises(ValueError, match="got 2 generators for a batch of 3 rows"):
        run_ar(c2i, torch.tensor([1, 2, 3]), seeded(1, 2))
