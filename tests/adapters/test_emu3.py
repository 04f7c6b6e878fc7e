"""Emu3 adapter: transformers' own image generation (forced EOL/EOF/EOI/EOS, unbatched CFG with a
negative prompt) is reproduced through the TokenModel contract on a tiny random Emu3."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from decodelab.speculative import SamplingConfig, create_decoder
from decodelab.speculative.sampling import cfg_mix, logits_to_probs
from decodelab.vision.adapters.emu3 import Emu3Adapter

sys.path.append(str(Path(__file__).resolve().parents[1]))  # tests/: shared helpers (importlib mode adds nothing)
from helpers.distribution import all_sequences, chi_square, chi_square_critical, sequence_probs

GRID = (3, 4)  # H x W, not square: rows and columns cannot be swapped unnoticed
EOL, EOF, EOI, EOS, PAD = 6, 7, 8, 2, 0


def _prompts() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([[0, 0, 1, 10, 11, 4, 5], [1, 12, 13, 14, 15, 4, 5]])  # ... <|image start|> <|image token|>
    return ids, ids != PAD


def _allowed(T: int, grid: tuple[int, int], visual: list[int]):
    """transformers' documented Emu3 prefix_allowed_tokens_fn, for prompts of length T."""
    H, W = grid

    def fn(batch_id: int, input_ids: torch.Tensor) -> list[int]:
        offset = input_ids.shape[0] - (T - 1)
        if offset % (W + 1) == 0:
            return [EOL]
        return {(W + 1) * H + 1: [EOF], (W + 1) * H + 2: [EOI], (W + 1) * H + 3: [EOS]}.get(offset, visual)

    return fn


def _hf_greedy(model, ids, mask, cfg: float, neg: torch.Tensor | None) -> torch.Tensor:
    kw = {}
    if neg is not None:
        neg = neg.expand(ids.shape[0], -1)
        kw = dict(negative_prompt_ids=neg, negative_prompt_attention_mask=torch.ones_like(neg))
    H, W = GRID
    out = model.generate(ids, attention_mask=mask.long(), max_new_tokens=H * (W + 1) + 3, do_sample=False,
                         prefix_allowed_tokens_fn=_allowed(ids.shape[1], GRID, model.vocabulary_mapping.image_tokens),
                         guidance_scale=cfg, **kw)  # fmt: skip
    return out[:, ids.shape[1] :]


def _full_logits(adapter: Emu3Adapter, ids, mask, codes) -> torch.Tensor:
    """Cache-free reference: logits over the codes ``[B, N, V]`` for every image position, from one forward
    over prompt + the structural sequence (EOLs included), with transformers' rotary positions."""
    seq = torch.cat([ids, adapter.image_sequence(codes)], 1)
    am = torch.cat([mask.long(), torch.ones(ids.shape[0], seq.shape[1] - ids.shape[1], dtype=torch.long)], 1)
    pos = (am.cumsum(1) - 1).clamp_min(0)
    with torch.no_grad():
        h = adapter.hf.model.text_model(input_ids=seq, attention_mask=am, position_ids=pos).last_hidden_state
        logits = adapter.hf.lm_head(h).float()
    before = adapter.slot_of(torch.arange(adapter.num_tokens)) - 1  # the slot that predicts each image position
    return logits[:, before][..., adapter.code_to_id]


@pytest.mark.parametrize("cfg,neg", [(1.0, None), (3.0, None), (3.0, [1, 20, 21, 22])])
def test_ar_greedy_equals_transformers_generate_with_its_structural_tokens(make_emu3, cfg, neg) -> None:
    model = make_emu3()
    ids, mask = _prompts()
    m = Emu3Adapter(model, GRID, prompt_length=ids.shape[1], negative_prompt_ids=neg)
    out = create_decoder("ar")(m, ids, cond_mask=mask, sampling=SamplingConfig(temperature=0.0, cfg_scale=cfg))
    ref = _hf_greedy(model, ids, mask, cfg, None if neg is None else torch.tensor([neg]))
    H, W = GRID
    assert ref.shape == (2, H * (W + 1) + 3)
    assert ref[:, W :: W + 1][:, :H].eq(EOL).all() and ref[:, -3:].tolist() == [[EOF, EOI, EOS]] * 2
    assert len(set(out.tokens.flatten().tolist())) > 3
    assert torch.equal(m.image_sequence(out.tokens), ref)  # EOL / EOF / EOI / EOS exactly where generate puts them


def test_null_condition_is_the_negative_prompt_with_its_own_padding(make_emu3) -> None:
    ids, mask = _prompts()
    m = Emu3Adapter(make_emu3(), GRID, prompt_length=7, negative_prompt_ids=[1, 20, 21, 22])
    null = m.null_condition(ids)
    assert null.tolist() == [[0, 0, 0, 1, 20, 21, 22]] * 2
    assert m.prompt_valid(null, mask).tolist() == [[False] * 3 + [True] * 4] * 2  # not the prompt's mask
    default = Emu3Adapter(make_emu3(), GRID, prompt_length=7).null_condition(ids)
    assert default.tolist() == [[0] * 6 + [5]] * 2  # transformers' default: the last prompt token alone
    with pytest.raises(ValueError, match="prompt_length"):
        Emu3Adapter(make_emu3(), GRID, prompt_length=3, negative_prompt_ids=[1, 20, 21, 22])


def test_decode_step_window_across_row_ends_equals_full_forward(make_emu3) -> None:
    ids, mask = _prompts()
    m = Emu3Adapter(make_emu3(), GRID, prompt_length=7)
    codes = torch.randint(0, 12, (2, 12), generator=torch.Generator().manual_seed(0))
    ref = _full_logits(m, ids, mask, codes)
    m.setup_caches(2)
    torch.testing.assert_close(m.prefill(ids, mask), ref[:, 0], atol=1e-4, rtol=1e-4)
    a = m.decode_step(codes[:, :6], torch.arange(6))  # crosses the end of row 0 (EOL inserted)
    torch.testing.assert_close(a, ref[:, 1:7], atol=1e-4, rtol=1e-4)
    m.decode_step((codes[:, 6:11] + 1) % 12, torch.arange(6, 11))  # wrong drafts, overwritten below
    b = m.decode_step(codes[:, 6:11], torch.arange(6, 11))
    torch.testing.assert_close(b, ref[:, 7:12], atol=1e-4, rtol=1e-4)
    pos = torch.tensor([[2, 3, 4], [7, 8, 9]])  # per-row windows: row 0 crosses a row end, row 1 does not
    c = m.decode_step(codes.gather(1, pos), pos)
    torch.testing.assert_close(c, torch.stack([ref[0, 3:6], ref[1, 8:11]]), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_greedy_jacobi_equals_ar(make_emu3, cfg: float) -> None:
    ids, mask = _prompts()
    m = Emu3Adapter(make_emu3(), GRID, prompt_length=7, negative_prompt_ids=[1, 20, 21, 22])
    s = SamplingConfig(temperature=0.0, cfg_scale=cfg)
    ar = create_decoder("ar")(m, ids, cond_mask=mask, sampling=s)
    for window in (3, 5, 16):
        assert torch.equal(
            create_decoder("jacobi", window=window)(m, ids, cond_mask=mask, sampling=s).tokens, ar.tokens
        )


@pytest.mark.parametrize("name", ["sjd", "sjd_coupled"])
def test_sjd_reproduces_ar_distribution_across_eol(make_emu3, name: str) -> None:
    """2 x 2 grid, 3 codes: every window crosses the forced EOL after row 0."""
    m = Emu3Adapter(make_emu3(seed=1, codes=3, lm_std=0.3, head_std=0.08), (2, 2), prompt_length=4,
                    negative_prompt_ids=[1, 20])  # fmt: skip
    ids, mask = torch.tensor([[0, 1, 10, 5]]), torch.tensor([[False, True, True, True]])
    s = SamplingConfig(temperature=1.0, cfg_scale=2.0)
    seqs = all_sequences(3, 4)
    n = seqs.shape[0]
    cond = ids.expand(n, -1)
    null = m.null_condition(cond)
    both = torch.cat([cond, null])
    logits = _full_logits(m, both, torch.cat([mask.expand(n, -1), null != PAD]), torch.cat([seqs, seqs]))
    p = logits_to_probs(cfg_mix(logits, s.cfg_scale))
    probs = sequence_probs(seqs, p)
    assert max(probs.values()) < 0.2
    N = 3000
    gens = [torch.Generator().manual_seed(11 * 100_003 + i) for i in range(N)]
    out = create_decoder(name, window=3)(m, ids.expand(N, -1), cond_mask=mask.expand(N, -1), sampling=s, generator=gens)
    stat, df = chi_square(out.tokens, probs)
    assert stat < chi_square_critical(df), f"{name}: chi2={stat:.1f} df={df}"


def test_ragged_and_continuous_batching_equal_single_runs(make_emu3) -> None:
    ids = torch.tensor([[0, 0, 1, 10, 11, 4, 5], [1, 12, 13, 14, 15, 4, 5], [0, 1, 16, 17, 18, 4, 5],
                        [0, 0, 0, 1, 19, 4, 5]])  # fmt: skip
    mask = ids != PAD
    m = Emu3Adapter(make_emu3(head_std=0.3), GRID, prompt_length=7, negative_prompt_ids=[1, 20, 21, 22])
    s = SamplingConfig(temperature=1.0, top_k=6, cfg_scale=2.0)
    dec = create_decoder("sjd", window=8)
    assert dec.can_refill(m)

    def gens():
        return [torch.Generator().manual_seed(50 + i) for i in range(4)]

    alone = torch.cat([dec(m, ids[i : i + 1], cond_mask=mask[i : i + 1], sampling=s, generator=gens()[i : i + 1]).tokens
                       for i in range(4)])  # fmt: skip
    assert torch.equal(dec(m, ids, cond_mask=mask, sampling=s, generator=gens()).tokens, alone)
    cont = dec(m, ids, cond_mask=mask, sampling=s, generator=gens(), max_batch=2)
    assert cont.extras["continuous"] is True and torch.equal(cont.tokens, alone)


def test_images_decode_through_emu3_vq(make_emu3) -> None:
    ids, mask = _prompts()
    m = Emu3Adapter(make_emu3(), GRID, prompt_length=7)
    out = create_decoder("sjd", window=4)(m, ids, cond_mask=mask, generator=torch.Generator().manual_seed(0))
    images = m.decode_images(out.tokens)
    assert images.shape == (2, 3, 6, 8)  # 3 x 4 codes, 2x spatial up-sampling of the tiny VQ
    seq = m.image_sequence(out.tokens)
    ref = m.hf.decode_image_tokens(image_tokens=seq, height=3, width=4)  # transformers' own path from the sequence
    torch.testing.assert_close(images, ref.float().clamp(-1, 1))


def test_load_emu3_from_a_checkpoint_directory(emu3_dir) -> None:
    """The real processor builds the prompts; greedy ar with its negative prompt equals generate; images decode."""
    from transformers import Emu3Processor

    from decodelab.vision.adapters import AdapterImageDecoder
    from decodelab.vision.adapters.emu3 import load_emu3
    from decodelab.vision.pipeline import ImageGenerationPipeline

    m, enc = load_emu3(weights=emu3_dir, prompt_length=8, negative_prompt="blue cat", image_area=576)
    assert m.grid == (3, 3)  # 24 x 24 px at the processor's 8x down-sampling
    proc = Emu3Processor.from_pretrained(str(emu3_dir), local_files_only=True)
    ref_ids = proc(text=["a red dog"], return_for_image_generation=True, image_area=576, return_tensors="pt")[
        "input_ids"
    ]
    ids, mask = enc(["a red dog"])
    assert ids[0, -ref_ids.shape[1] :].tolist() == ref_ids[0].tolist() and int(mask.sum()) == ref_ids.shape[1]
    neg = proc(text=["blue cat"], return_tensors="pt")["input_ids"]
    assert m.negative_prompt_ids == neg[0].tolist()
    out = create_decoder("ar")(m, ids, cond_mask=mask, sampling=SamplingConfig(temperature=0.0, cfg_scale=3.0))
    H, W = m.grid
    allowed = _allowed(ref_ids.shape[1], m.grid, m.hf.vocabulary_mapping.image_tokens)
    gen = m.hf.generate(ref_ids, attention_mask=torch.ones_like(ref_ids), max_new_tokens=H * (W + 1) + 3,
                        do_sample=False, guidance_scale=3.0, negative_prompt_ids=neg,
                        negative_prompt_attention_mask=torch.ones_like(neg),
                        prefix_allowed_tokens_fn=allowed)  # fmt: skip
    assert torch.equal(m.image_sequence(out.tokens), gen[:, ref_ids.shape[1] :])
    pipe = ImageGenerationPipeline(m, AdapterImageDecoder(m), enc, defaults={"cfg_scale": 3.0})
    result = pipe(prompts=["a red dog", "blue cat"], decoder="sjd", decoder_kwargs={"window": 3}, seed=1)
    assert [im.size for im in result.images] == [(6, 6), (6, 6)]
