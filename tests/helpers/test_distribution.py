"""The shared exactness test (``helpers.distribution``) has both size and power.

- the Wilson-Hilferty critical value is scipy's p = 1e-4 chi-square quantile to within a few percent;
- the statistic, its pooled cell and its degrees of freedom match a hand computation;
- samples drawn from the exact distribution pass (several seeds) and samples from a visibly
  different one (total variation 0.1) fail, so the check cannot silently become one that never fails;
- the per-sequence and the batched enumerations agree, and a tiny GPT's enumeration sums to one.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from scipy.stats import chi2

import decodelab
from decodelab.speculative import SamplingConfig

sys.path.append(str(Path(__file__).resolve().parents[1]))  # tests/: shared helpers (importlib mode adds nothing)
from helpers.distribution import (
    all_sequences,
    chi_square,
    chi_square_critical,
    exact_raster_distribution,
    exact_sequence_probs,
    sequence_probs,
)


def _spread_out(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict[tuple[int, ...], float]]:
    """A random distribution over the 81 sequences of 4 tokens from a 3-token vocabulary."""
    p = torch.softmax(torch.randn(81, generator=torch.Generator().manual_seed(seed)), 0)
    seqs = all_sequences(3, 4)
    return p, seqs, {tuple(q.tolist()): float(v) for q, v in zip(seqs, p)}


@pytest.mark.parametrize("df", [3, 10, 30, 80])
def test_critical_value_is_the_p_1e4_quantile(df: int) -> None:
    exact = chi2.ppf(1 - 1e-4, df)
    assert exact <= chi_square_critical(df) < 1.04 * exact


def test_statistic_pools_small_cells_and_counts_degrees_of_freedom() -> None:
    probs = {(0,): 0.5, (1,): 0.3, (2,): 0.15, (3,): 0.05}  # n = 40: expected 20, 12, 6 and 2 (pooled)
    samples = torch.tensor([0] * 25 + [1] * 8 + [2] * 6 + [3] * 1)[:, None]
    stat, df = chi_square(samples, probs)
    assert df == 3
    assert stat == pytest.approx((25 - 20) ** 2 / 20 + (8 - 12) ** 2 / 12 + 0 + (1 - 2) ** 2 / 2)
    # two small cells share one pool: 1 + 3 observed against 2 + 2 expected adds nothing
    probs = {(0,): 0.6, (1,): 0.3, (2,): 0.05, (3,): 0.05}
    samples = torch.tensor([0] * 24 + [1] * 12 + [2] * 1 + [3] * 3)[:, None]
    assert chi_square(samples, probs) == (0.0, 2)


@pytest.mark.parametrize("seed", range(5))
def test_samples_from_the_exact_distribution_pass(seed: int) -> None:
    p, seqs, probs = _spread_out()
    idx = torch.multinomial(p, 3000, replacement=True, generator=torch.Generator().manual_seed(seed))
    stat, df = chi_square(seqs[idx], probs)
    assert stat < chi_square_critical(df), f"seed {seed}: chi2={stat:.1f} df={df}"


@pytest.mark.parametrize("seed", range(5))
def test_samples_from_a_different_distribution_fail(seed: int) -> None:
    p, seqs, probs = _spread_out()
    q = p**0.8 / (p**0.8).sum()  # slightly flattened: total variation distance 0.1 from p
    assert 0.09 < float((p - q).abs().sum()) / 2 < 0.11
    idx = torch.multinomial(q, 3000, replacement=True, generator=torch.Generator().manual_seed(seed))
    stat, df = chi_square(seqs[idx], probs)
    assert stat > chi_square_critical(df), f"seed {seed}: a different distribution passed, chi2={stat:.1f}"


def test_loop_and_batched_enumerations_agree_and_sum_to_one() -> None:
    table = torch.softmax(torch.randn(4, 3, generator=torch.Generator().manual_seed(1)), -1)  # [N, V]
    looped = exact_sequence_probs(lambda toks: table, 4, 3)
    seqs = all_sequences(3, 4)
    batched = sequence_probs(seqs, table.expand(seqs.shape[0], -1, -1))
    assert list(looped) == list(batched)
    assert list(looped.values()) == pytest.approx(list(batched.values()), rel=1e-6)
    assert sum(looped.values()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("s", [None, SamplingConfig(temperature=0.8, top_k=2, cfg_scale=2.0)])
def test_a_tiny_gpt_enumeration_is_a_distribution(s: SamplingConfig | None) -> None:
    torch.manual_seed(1)
    m = decodelab.create_model("test_gpt", vocab_size=3, block_size=4).eval()
    torch.nn.init.normal_(m.output.weight, 0.0, 0.2)
    probs = exact_raster_distribution(m, torch.tensor([2]), s)
    assert len(probs) == 81 and sum(probs.values()) == pytest.approx(1.0, abs=1e-4)
    if s is not None:  # top-2 leaves some sequences impossible
        assert min(probs.values()) == 0.0
