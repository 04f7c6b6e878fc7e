"""Chameleon adapter (Anole and Lumina-mGPT layouts) on a tiny random Chameleon.

transformers' Chameleon cannot generate images (its forward masks every image logit), so the
reference here is a cache-free greedy loop over the same backbone and ``lm_head``; the cached,
windowed and batched paths must reproduce it exactly.
"""

from __future__ import annotations

import pytest
import torch

from decodelab.speculative import SamplingConfig, create_decoder
from decodelab.speculative.sampling import cfg_mix
from decodelab.vision.adapters.chameleon import ChameleonAdapter

PAD, START, END, EOL, SIZE = 1, 4, 5, 6, 10  # the tiny vocabulary's structural ids
GRID = (2, 4)


def _adapter(model, layout: str, T: int) -> ChameleonAdapter:
    return ChameleonAdapter(model, GRID, layout, prompt_length=T, image_start_id=START, image_end_id=END, eol_id=EOL,
                            size_token_base=SIZE)  # fmt: skip


def _prompts(layout: str) -> torch.Tensor:
    prefix = [START] if layout == "anole" else [START, SIZE + 1, SIZE + 2]
    body = [[PAD, PAD, 0, 12, 13], [0, 14, 15, 16, 17]]
    return torch.tensor([b + prefix for b in body])


def _full_logits(m: ChameleonAdapter, ids: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    seq = torch.cat([ids, m.image_sequence(codes)], 1)
    am = m.prompt_valid(seq, None).long()
    pos = (am.cumsum(1) - 1).clamp_min(0)
    with torch.no_grad():
        h = m.hf.model(input_ids=seq, attention_mask=am, position_ids=pos).last_hidden_state
        logits = m.hf.lm_head(h).float()[..., m.code_to_id]
    return logits[:, m.slot_of(torch.arange(m.num_tokens)) - 1]


def _cache_free_greedy(m: ChameleonAdapter, ids: torch.Tensor, cfg: float) -> torch.Tensor:
    B = ids.shape[0]
    codes = torch.zeros(B, m.num_tokens, dtype=torch.long)
    for i in range(m.num_tokens):
        if cfg != 1.0:
            both = _full_logits(m, torch.cat([ids, m.null_condition(ids)]), torch.cat([codes, codes]))
            logits = cfg_mix(both, cfg)
        else:
            logits = _full_logits(m, ids, codes)
        codes[:, i] = logits[:, i].argmax(-1)
    return codes


def test_transformers_forward_masks_image_logits(make_chameleon) -> None:
    """Why the adapter runs backbone + lm_head itself: the model's own forward can never pick an image token."""
    model = make_chameleon()
    ids = _prompts("anole")
    logits = model(input_ids=ids).logits
    m = _adapter(model, "anole", ids.shape[1])
    assert bool((logits[..., m.code_to_id] == torch.finfo(logits.dtype).min).all())


@pytest.mark.parametrize("layout", ["anole", "lumina_mgpt"])
@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_ar_and_jacobi_greedy_equal_cache_free_greedy(make_chameleon, layout: str, cfg: float) -> None:
    ids = _prompts(layout)
    m = _adapter(make_chameleon(), layout, ids.shape[1])
    s = SamplingConfig(temperature=0.0, cfg_scale=cfg)
    ref = _cache_free_greedy(m, ids, cfg)
    assert len(set(ref.flatten().tolist())) > 3
    ar = create_decoder("ar")(m, ids, sampling=s)
    assert torch.equal(ar.tokens.reshape(2, -1), ref)
    for window in (3, 8):
        assert torch.equal(create_decoder("jacobi", window=window)(m, ids, sampling=s).tokens, ar.tokens)


def test_lumina_window_across_row_ends_equals_full_forward(make_chameleon) -> None:
    ids = _prompts("lumina_mgpt")
    m = _adapter(make_chameleon(), "lumina_mgpt", ids.shape[1])
    codes = torch.randint(0, 12, (2, 8), generator=torch.Generator().manual_seed(1))
    ref = _full_logits(m, ids, codes)
    m.setup_caches(2)
    torch.testing.assert_close(m.prefill(ids), ref[:, 0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(m.decode_step(codes[:, :7], torch.arange(7)), ref[:, 1:8], atol=1e-4, rtol=1e-4)
    pos = torch.tensor([[2, 3, 4], [4, 5, 6]])
    out = m.decode_step(codes.gather(1, pos), pos)
    torch.testing.assert_close(out, torch.stack([ref[0, 3:6], ref[1, 5:8]]), atol=1e-4, rtol=1e-4)


def test_layouts_prefixes_and_structural_sequence(make_chameleon) -> None:
    model = make_chameleon()
    lumina = _adapter(model, "lumina_mgpt", 8)
    assert lumina.image_prefix() == [START, SIZE + 1, SIZE + 2]  # height / width tokens count pairs of codes
    ids = _prompts("lumina_mgpt")
    assert lumina.null_condition(ids).tolist() == [[PAD] * 5 + [START, SIZE + 1, SIZE + 2]] * 2
    codes = torch.arange(8).reshape(1, 2, 4)
    assert lumina.image_sequence(codes).tolist() == [[20, 21, 22, 23, EOL, 24, 25, 26, 27, EOL, END]]
    anole = _adapter(model, "anole", 6)
    assert anole.image_sequence(codes).tolist() == [[20, 21, 22, 23, 24, 25, 26, 27, END]]
    with pytest.raises(ValueError, match="must end with the image prefix"):
        lumina.check_condition(torch.cat([ids[:, :-1], torch.zeros(2, 1, dtype=torch.long)], 1))  # no width token
    with pytest.raises(ValueError, match="layout must be one of"):
        ChameleonAdapter(model, GRID, "lumina")
    with pytest.raises(ValueError, match="grid must be even"):
        ChameleonAdapter(model, (3, 4), "lumina_mgpt", prompt_length=8)


def test_images_need_a_vq_decoder(make_chameleon) -> None:
    model = make_chameleon()
    m = _adapter(model, "anole", 6)
    codes = torch.zeros(1, 2, 4, dtype=torch.long)
    with pytest.raises(NotImplementedError, match="no decoder"):
        m.decode_images(codes)
    seen = []
    m2 = ChameleonAdapter(model, GRID, "anole", prompt_length=6, vq_decoder=lambda t: seen.append(t.shape) or
                          torch.zeros(t.shape[0], 3, 32, 64))  # fmt: skip
    assert m2.decode_images(codes).shape == (1, 3, 32, 64) and seen == [torch.Size([1, 2, 4])]


def test_ragged_sjd_batch_equals_single_runs(make_chameleon) -> None:
    ids = _prompts("lumina_mgpt")
    m = _adapter(make_chameleon(head_std=0.3), "lumina_mgpt", ids.shape[1])
    s = SamplingConfig(temperature=1.0, cfg_scale=2.0)
    dec = create_decoder("sjd_coupled", window=3)
    gens = lambda: [torch.Generator().manual_seed(5 + i) for i in range(2)]  # noqa: E731
    alone = torch.cat([dec(m, ids[i : i + 1], sampling=s, generator=gens()[i : i + 1]).tokens for i in range(2)])
    assert torch.equal(dec(m, ids, sampling=s, generator=gens()).tokens, alone)
