"""The Jacobi-family decoders: greedy exactness for every draft initialisation and CFG, ragged and
continuously batched rows equal to single-row runs. Distribution exactness over the decoder
registry is in ``test_exactness.py``."""

from __future__ import annotations

import pytest
import torch

import decodelab
from decodelab.speculative import SamplingConfig, create_decoder


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


@pytest.mark.parametrize("window", [3, 16])
def test_greedy_jacobi_equals_ar_with_a_cfg_interval(window: int) -> None:
    """Guidance for the first steps only; windows that reach past the grid's end are padding."""
    m = _model(2)
    cond = torch.tensor([1, 4, 8])
    s = SamplingConfig(temperature=0.0, cfg_scale=4.0, cfg_interval=5)
    ref = create_decoder("ar")(m, cond, sampling=s)
    unguided = create_decoder("ar")(m, cond, sampling=SamplingConfig(temperature=0.0, cfg_scale=4.0))
    assert not torch.equal(ref.tokens, unguided.tokens)  # the interval changes the output
    out = create_decoder("jacobi", window=window)(m, cond, sampling=s)
    assert torch.equal(out.tokens, ref.tokens)
