"""Exact sequence distributions and the chi-square test used by the decoders' exactness tests.

A decoder that promises ``ar``'s distribution is checked on a model with a tiny vocabulary (3 tokens,
4 positions: 81 sequences): the probability of every sequence is computed exactly by enumeration
from cache-free, teacher-forced forwards, thousands of decoded samples are counted, and a Pearson
chi-square test at p = 1e-4 compares the two. Each exactness test also shows that a deliberately
wrong rule fails the same test, and ``tests/helpers/test_distribution.py`` checks the test itself.

Import from a test file (``--import-mode=importlib`` adds nothing to ``sys.path``)::

    sys.path.append(str(Path(__file__).resolve().parents[1]))  # tests/: shared helpers
    from helpers.distribution import chi_square, chi_square_critical  # noqa: E402
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch

from decodelab.speculative.sampling import SamplingConfig, cfg_mix, logits_to_probs

Distribution = dict[tuple[int, ...], float]  # token sequence -> probability


def exact_sequence_probs(
    position_probs: Callable[[torch.Tensor], torch.Tensor], num_tokens: int, vocab_size: int
) -> Distribution:
    """P(sequence) for every one of the ``vocab_size ** num_tokens`` sequences, one forward each.

    Args:
        position_probs: maps one sequence ``[1, N]`` to the final sampling distribution at every
            position given that sequence (teacher forcing, no cache) ``[N, V]``; the sequence's
            probability is the product of its tokens' entries, so the model's own factorisation
            (raster, anti-diagonals, ...) lives in this function.
        num_tokens: ``N``, the sequence length.
        vocab_size: ``V``.

    Returns:
        ``{sequence: probability}`` in ``itertools.product`` order.
    """
    probs = {}
    for seq in itertools.product(range(vocab_size), repeat=num_tokens):
        toks = torch.tensor([seq])  # [1, N]
        p = position_probs(toks)  # [N, V]
        probs[seq] = float(torch.prod(p[torch.arange(num_tokens), toks[0]]))
    return probs


def exact_raster_distribution(m: torch.nn.Module, cond: torch.Tensor, s: SamplingConfig | None = None) -> Distribution:
    """P(sequence) under the final sampling distribution of a one-model token model (``test_gpt`` ...).

    Args:
        m: a model called as ``m(tokens [B, N], cond [B, ...]) -> logits [B, N, V]`` with
            ``num_tokens``, ``vocab_size`` and, for guidance, ``null_condition``.
        cond: one condition ``[1, ...]`` (a class id or a caption embedding).
        s: temperature, top-k, top-p and CFG scale (``cfg_interval`` is not applied); default
            ``SamplingConfig()``, plain softmax.

    Returns:
        ``{sequence: probability}`` over all ``V ** N`` sequences.
    """
    s = SamplingConfig() if s is None else s

    def position_probs(toks: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if s.use_cfg:
                logits = cfg_mix(m(torch.cat([toks, toks]), torch.cat([cond, m.null_condition(cond)])), s.cfg_scale)
            else:
                logits = m(toks, cond)
        return logits_to_probs(logits, s.temperature, s.top_k, s.top_p)[0]  # [N, V]

    return exact_sequence_probs(position_probs, m.num_tokens, m.vocab_size)


def all_sequences(vocab_size: int, num_tokens: int) -> torch.Tensor:
    """Every sequence ``[V ** N, N]`` in ``itertools.product`` order, for one batched forward."""
    return torch.tensor(list(itertools.product(range(vocab_size), repeat=num_tokens)))


def sequence_probs(seqs: torch.Tensor, probs: torch.Tensor) -> Distribution:
    """``{sequence: probability}`` from sequences ``[n, N]`` and their per-position distributions ``[n, N, V]``."""
    p = probs.gather(2, seqs[..., None])[..., 0].prod(-1)  # [n]
    return {tuple(q.tolist()): float(v) for q, v in zip(seqs, p)}


def chi_square(samples: torch.Tensor, probs: Distribution) -> tuple[float, int]:
    """Pearson chi-square of sample counts against exact probabilities, small cells pooled.

    Cells (sequences) with an expected count of at least 5 each contribute ``(o - e)^2 / e``; all
    the others are pooled into one cell so that the chi-square approximation holds. Sequences with
    probability 0 land in the pool, so a sample outside the support raises the statistic there.

    Args:
        samples: ``[n, ...]`` decoded token sequences, one per row (flattened per row).
        probs: ``{sequence: probability}`` over every sequence, e.g. from ``exact_sequence_probs``.

    Returns:
        ``(statistic, degrees of freedom)``: ``df`` is the number of cells (pool included) minus one.
    """
    n = samples.shape[0]
    counts: dict[tuple[int, ...], int] = {}
    for row in samples.reshape(n, -1).tolist():
        counts[tuple(row)] = counts.get(tuple(row), 0) + 1
    stat, df, pool_o, pool_e = 0.0, -1, 0, 0.0
    for seq, p in probs.items():
        e, o = p * n, counts.get(seq, 0)
        if e >= 5:
            stat, df = stat + (o - e) ** 2 / e, df + 1
        else:
            pool_o, pool_e = pool_o + o, pool_e + e
    if pool_e > 0:
        stat, df = stat + (pool_o - pool_e) ** 2 / pool_e, df + 1
    return stat, df


def chi_square_critical(df: int, z: float = 3.72) -> float:
    """Upper quantile of chi-square with ``df`` degrees of freedom (Wilson-Hilferty approximation).

    ``z`` is the standard-normal quantile: ``3.72`` gives the p = 1e-4 critical value, so an exact
    decoder fails a single test about once in 10,000 runs (the tests use fixed seeds, so never).
    """
    return df * (1 - 2 / (9 * df) + z * (2 / (9 * df)) ** 0.5) ** 3
