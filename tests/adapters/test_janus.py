"""Janus adapter: the decoders reproduce transformers' own image generation on a tiny random Janus."""

from __future__ import annotations

import pytest
import torch

from decodelab.speculative import SamplingConfig, create_decoder
from decodelab.speculative.contract import SupportsRefill, TokenModel
from decodelab.vision.adapters import JanusAdapter


def _hf_greedy(model, ids, mask, cfg: float) -> torch.Tensor:
    """Image codes from ``JanusForConditionalGeneration.generate(generation_mode="image")``, greedy."""
    return model.generate(ids, attention_mask=mask.long(), generation_mode="image", do_sample=False, guidance_scale=cfg)


def _full_logits(model, ids, mask, codes) -> torch.Tensor:
    """Cache-free reference: one forward over prompt + codes; logits ``[B, N, V]`` for image positions 0..N-1."""
    emb = torch.cat(
        [model.get_input_embeddings()(ids), model.prepare_embeddings_for_image_generation(codes[:, :-1])], 1
    )
    am = torch.cat([mask.long(), torch.ones_like(codes[:, :-1])], 1)
    with torch.no_grad():
        h = model.model.language_model(inputs_embeds=emb, attention_mask=am).last_hidden_state
        return model.model.generation_head(h[:, ids.shape[1] - 1 :]).float()


def test_adapter_follows_the_contract(make_janus, prompts) -> None:
    m = JanusAdapter(make_janus(), prompt_length=7)
    assert isinstance(m, TokenModel) and isinstance(m, SupportsRefill)
    assert m.grid == (4, 4) and m.num_tokens == 16 and m.vocab_size == 12 and m.condition_kind == "text"
    ids, _ = prompts
    null = m.null_condition(ids)
    assert null.tolist() == [[0, 0, 1, 0, 0, 0, 7], [1, 0, 0, 0, 0, 0, 7]]  # BOS and <begin_of_image> kept


# Janus's generate always doubles the batch, and with guidance_scale <= 1 it crashes (transformers 5.24):
# without CFG the reference is the cache-free greedy loop below.
@pytest.mark.parametrize("cfg", [1.5, 5.0])
def test_ar_greedy_equals_transformers_generate(make_janus, prompts, cfg: float) -> None:
    model = make_janus()
    ids, mask = prompts
    m = JanusAdapter(model, prompt_length=ids.shape[1])
    out = create_decoder("ar")(m, ids, cond_mask=mask, sampling=SamplingConfig(temperature=0.0, cfg_scale=cfg))
    ref = _hf_greedy(model, ids, mask, cfg)
    assert ref.shape == (2, 16)
    assert len(set(ref.flatten().tolist())) > 3  # the test model spreads its codes
    assert torch.equal(out.tokens.reshape(2, -1), ref)
    assert torch.equal(m.image_sequence(out.tokens), ref)


def test_ar_greedy_without_cfg_equals_cache_free_greedy(make_janus, prompts) -> None:
    model = make_janus()
    ids, mask = prompts
    m = JanusAdapter(model, prompt_length=ids.shape[1])
    out = create_decoder("ar")(m, ids, cond_mask=mask, sampling=SamplingConfig(temperature=0.0))
    codes = torch.zeros(2, 16, dtype=torch.long)
    for i in range(16):
        codes[:, i] = _full_logits(model, ids, mask, codes)[:, i].argmax(-1)
    assert torch.equal(out.tokens.reshape(2, -1), codes)


def test_decode_step_window_equals_full_forward(make_janus, prompts) -> None:
    model = make_janus()
    ids, mask = prompts
    m = JanusAdapter(model, prompt_length=ids.shape[1])
    codes = torch.randint(0, 12, (2, 16), generator=torch.Generator().manual_seed(0))
    ref = _full_logits(model, ids, mask, codes)  # [2, 16, V]
    m.setup_caches(2)
    first = m.prefill(ids, mask)
    torch.testing.assert_close(first, ref[:, 0], atol=1e-4, rtol=1e-4)
    a = m.decode_step(codes[:, :5], torch.arange(5))  # positions 0..4 -> logits for 1..5
    torch.testing.assert_close(a, ref[:, 1:6], atol=1e-4, rtol=1e-4)
    # a stale window (wrong drafts at 5..9) is overwritten by the next forward over the same slots
    m.decode_step((codes[:, 5:10] + 1) % 12, torch.arange(5, 10))
    b = m.decode_step(codes[:, 5:15], torch.arange(5, 15))
    torch.testing.assert_close(b, ref[:, 6:16], atol=1e-4, rtol=1e-4)
    # per-row positions (ragged rows): row 0 rewrites 3..6, row 1 rewrites 10..13
    pos = torch.tensor([[3, 4, 5, 6], [10, 11, 12, 13]])
    c = m.decode_step(codes.gather(1, pos), pos)
    torch.testing.assert_close(c, torch.stack([ref[0, 4:8], ref[1, 11:15]]), atol=1e-4, rtol=1e-4)
    q = m.decode_step(codes.gather(1, pos), pos, query_pos=pos[:, -1:] + 1)
    torch.testing.assert_close(q[:, 0], c[:, -1])


def _five_prompts() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor(
        [[0, 0, 1, 10, 11, 12, 7], [1, 13, 14, 15, 16, 17, 7], [0, 1, 20, 21, 22, 23, 7],
         [0, 0, 0, 1, 30, 31, 7], [1, 40, 41, 42, 43, 44, 7]]
    )  # fmt: skip
    return ids, ids != 0


@pytest.mark.parametrize("name", ["sjd", "sjd_coupled"])
def test_ragged_batch_and_continuous_batching_equal_single_runs(make_janus, name: str) -> None:
    m = JanusAdapter(make_janus(head_std=0.3), prompt_length=7)
    ids, mask = _five_prompts()
    s = SamplingConfig(temperature=1.0, top_k=6, cfg_scale=2.0)
    dec = create_decoder(name, window=8)  # window >= prompt_length: a refill fits in one forward
    assert dec.can_refill(m)

    def gens():
        return [torch.Generator().manual_seed(100 + i) for i in range(5)]

    alone = torch.cat([dec(m, ids[i : i + 1], cond_mask=mask[i : i + 1], sampling=s, generator=gens()[i : i + 1]).tokens
                       for i in range(5)])  # fmt: skip
    ragged = dec(m, ids, cond_mask=mask, sampling=s, generator=gens())
    continuous = dec(m, ids, cond_mask=mask, sampling=s, generator=gens(), max_batch=2)
    assert torch.equal(ragged.tokens, alone)
    assert torch.equal(continuous.tokens, alone)
    assert continuous.extras["continuous"] is True
    assert len(set(ragged.row_nfe.tolist())) > 1  # the rows really finished at different forwards
    assert continuous.nfe < sum(int(n) for n in ragged.row_nfe)  # rows were kept busy, not run one by one


def test_images_decode_through_janus_vq(make_janus, prompts) -> None:
    model = make_janus()
    ids, mask = prompts
    m = JanusAdapter(model, prompt_length=ids.shape[1])
    out = create_decoder("sjd", window=4)(m, ids, cond_mask=mask, sampling=SamplingConfig(cfg_scale=2.0),
                                          generator=torch.Generator().manual_seed(0))  # fmt: skip
    images = m.decode_images(out.tokens)
    assert images.shape == (2, 3, 64, 64)  # 4 x 4 codes, 16x up-sampling
    assert float(images.min()) >= -1 and float(images.max()) <= 1
    ref = model.decode_image_tokens(out.tokens.reshape(2, -1)).permute(0, 3, 1, 2)  # transformers' own decode
    torch.testing.assert_close(images, ref.clamp(-1, 1))


def test_bad_conditions_are_clear_errors(make_janus, prompts) -> None:
    ids, mask = prompts
    m = JanusAdapter(make_janus(), prompt_length=ids.shape[1])
    with pytest.raises(ValueError, match="prompt token ids"):
        m.check_condition(ids[:, 1:])
    with pytest.raises(ValueError, match="prompt ids must be in"):
        m.check_condition(ids + 1000)
    with pytest.raises(ValueError, match="prompt_length"):
        JanusAdapter(make_janus(), prompt_length=0)


def test_relaxed_acceptance_and_bfloat16_run_through_the_adapter(make_janus, prompts) -> None:
    from decodelab.speculative.contract import SupportsTokenEmbeddings

    ids, mask = prompts
    m = JanusAdapter(make_janus(), prompt_length=ids.shape[1])
    assert isinstance(m, SupportsTokenEmbeddings) and m.token_embeddings().shape == (12, 32)
    relaxed = create_decoder("sjd", window=4, relax_k=2, relax_delta=0.3)
    out = relaxed(
        m, ids, cond_mask=mask, sampling=SamplingConfig(cfg_scale=2.0), generator=torch.Generator().manual_seed(0)
    )
    assert out.lossless is False and out.tokens.shape == (2, 4, 4)
    m16 = JanusAdapter(make_janus().to(torch.bfloat16), prompt_length=ids.shape[1])
    out16 = create_decoder("sjd_coupled", window=4)(m16, ids, cond_mask=mask, sampling=SamplingConfig(cfg_scale=2.0),
                                                    generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert out16.tokens.shape == (2, 4, 4) and int(out16.tokens.max()) < 12
    with pytest.raises(ValueError, match="not saved by decodelab"):
        m.save_pretrained("anywhere")
