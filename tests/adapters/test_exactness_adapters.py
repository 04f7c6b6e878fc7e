"""The exactness promises of the decoders hold through an adapter (tiny random Janus).

- greedy ``jacobi`` equals greedy ``ar`` token for token (with and without CFG);
- ``sjd`` and ``sjd_coupled`` reproduce ``ar``'s distribution: on a 3-code, 2 x 2 Janus every
  sequence probability is enumerated from cache-free full forwards and 3000 decoded samples are
  compared with it by a chi-square test (the same test catches a biased rule in
  tests/speculative/test_exactness.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from decodelab.speculative import SamplingConfig, create_decoder
from decodelab.speculative.sampling import cfg_mix, logits_to_probs
from decodelab.vision.adapters import JanusAdapter

sys.path.append(str(Path(__file__).resolve().parents[1]))  # tests/: shared helpers (importlib mode adds nothing)
from helpers.distribution import all_sequences, chi_square, chi_square_critical, sequence_probs


def _full_logits(model, ids, mask, codes) -> torch.Tensor:
    emb = torch.cat(
        [model.get_input_embeddings()(ids), model.prepare_embeddings_for_image_generation(codes[:, :-1])], 1
    )
    am = torch.cat([mask.long(), torch.ones_like(codes[:, :-1])], 1)
    with torch.no_grad():
        h = model.model.language_model(inputs_embeds=emb, attention_mask=am).last_hidden_state
        return model.model.generation_head(h[:, ids.shape[1] - 1 :]).float()


def _exact(adapter, ids, mask, s: SamplingConfig) -> dict[tuple[int, ...], float]:
    """P(sequence) for every code sequence, from one batched cache-free forward through Janus itself."""
    seqs = all_sequences(adapter.vocab_size, adapter.num_tokens)
    n = seqs.shape[0]
    cond, m = ids.expand(n, -1), mask.expand(n, -1)
    if s.use_cfg:
        logits = _full_logits(adapter.hf, torch.cat([cond, adapter.null_condition(cond)]), torch.cat([m, m]),
                              torch.cat([seqs, seqs]))  # fmt: skip
        logits = cfg_mix(logits, s.cfg_scale)
    else:
        logits = _full_logits(adapter.hf, cond, m, seqs)
    return sequence_probs(seqs, logits_to_probs(logits, s.temperature, s.top_k, s.top_p))  # p: [n, N, V]


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_greedy_jacobi_equals_greedy_ar_through_the_adapter(make_janus, prompts, cfg: float) -> None:
    ids, mask = prompts
    m = JanusAdapter(make_janus(), prompt_length=ids.shape[1])
    s = SamplingConfig(temperature=0.0, cfg_scale=cfg)
    ar = create_decoder("ar")(m, ids, cond_mask=mask, sampling=s)
    for window in (3, 16):
        jac = create_decoder("jacobi", window=window)(m, ids, cond_mask=mask, sampling=s)
        assert torch.equal(jac.tokens, ar.tokens)
        assert jac.nfe <= ar.nfe


@pytest.mark.parametrize(
    "name,kwargs,sampling",
    [
        ("ar", {}, SamplingConfig(temperature=1.0, top_k=2, cfg_scale=2.0)),
        ("sjd", {"window": 4}, SamplingConfig(temperature=1.0, top_k=2, cfg_scale=2.0)),
        ("sjd", {"window": 3, "init": "random"}, SamplingConfig(temperature=1.0)),
        ("sjd_coupled", {"window": 4}, SamplingConfig(temperature=1.0, cfg_scale=2.5)),
    ],
)
def test_lossless_decoders_reproduce_ar_distribution_through_the_adapter(make_janus, name, kwargs, sampling) -> None:
    m = JanusAdapter(make_janus(seed=1, num_embeddings=3, image_size=32, head_std=0.08), prompt_length=7)
    ids, mask = torch.tensor([[0, 1, 10, 11, 12, 13, 7]]), torch.tensor([[False] + [True] * 6])
    probs = _exact(m, ids, mask, sampling)
    assert max(probs.values()) < 0.2  # a spread-out distribution: the test has power
    n = 3000
    gens = [torch.Generator().manual_seed(7 * 100_003 + i) for i in range(n)]
    out = create_decoder(name, **kwargs)(m, ids.expand(n, -1), cond_mask=mask.expand(n, -1), sampling=sampling,
                                         generator=gens)  # fmt: skip
    stat, df = chi_square(out.tokens, probs)
    assert stat < chi_square_critical(df), f"{name} {kwargs}: chi2={stat:.1f} df={df}"


def test_the_distribution_test_has_power_through_the_adapter(make_janus) -> None:
    """A wrong rule (resample from p instead of norm(max(0, p - q)) on rejection) fails the same check."""
    from decodelab.speculative.sjd import SJDDecoder, _sample_one

    class Biased(SJDDecoder):
        def _verify_row(self, drafts, q, p, gen, nbrs):
            m = drafts.shape[0]
            ratio = p[torch.arange(m), drafts] / q[torch.arange(m), drafts].clamp_min(1e-30)
            k = int((torch.rand(m, generator=gen) < ratio.clamp_max(1.0)).long().cumprod(0).sum())
            return (k, -1) if k == m else (k, _sample_one(p[k], gen))

    m = JanusAdapter(make_janus(seed=1, num_embeddings=3, image_size=32, head_std=0.08), prompt_length=7)
    ids, mask = torch.tensor([[0, 1, 10, 11, 12, 13, 7]]), torch.tensor([[False] + [True] * 6])
    s = SamplingConfig(temperature=1.0, cfg_scale=2.5)
    n = 3000
    gens = [torch.Generator().manual_seed(7 * 100_003 + i) for i in range(n)]
    out = Biased(window=4)(m, ids.expand(n, -1), cond_mask=mask.expand(n, -1), sampling=s, generator=gens)
    stat, df = chi_square(out.tokens, _exact(m, ids, mask, s))
    assert stat > chi_square_critical(df), f"biased rule passed: chi2={stat:.1f} df={df}"
