"""Inception Score and improved precision/recall on logits and feature vectors, computed by torch-fidelity.

Like :mod:`decodelab.eval.fid`, nothing here knows which network produced its inputs, and
everything is computed in float64. The maths is torch-fidelity's (``metric_isc``, ``metric_prc``);
these functions add input checks with ``ValueError``, numpy/tensor inputs and the protocol options.

- :func:`inception_score` (Salimans et al. 2016): ``exp(E_x KL(p(y|x) || p(y)))`` per split, then
  mean and standard deviation (``ddof=0``) over splits. The splits are contiguous, in input order,
  as in the ADM evaluator (openai/guided-diffusion ``evaluations/evaluator.py``: 50k samples in
  splits of 5000 = 10 splits) and improved-gan; ``shuffle_seed`` permutes first, as torch-fidelity
  does by default (seed 2020).
- :func:`precision_recall` (Kynkäänniemi et al. 2019): each set's manifold is the union of balls
  around its points whose radius is the distance to the point's ``k``-th nearest neighbour
  (``k = 3``, the point itself excluded); precision is the share of generated points inside the
  real manifold and recall the share of real points inside the generated one. A point exactly on
  a sphere counts as inside (``<=``, as in the ADM evaluator and torch-fidelity). The ADM
  evaluator computes distances in float16 on the GPU; here they are float64, so borderline points
  may flip against it (a difference far below the metric's sampling noise). decodelab's former
  own implementation compared squared distances with squared radii and lost points lying exactly
  on a sphere (on integer-valued features: precision 0.8345 instead of the exact 0.8725, which
  torch-fidelity gets; tested), so it was replaced.

Example:
    >>> import numpy as np
    >>> inception_score(np.eye(10) * 50.0, splits=1)[0] > 9.99  # confident and balanced: IS = classes
    True
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["inception_score", "precision_recall"]


def _as_2d(x: object, name: str) -> np.ndarray:
    a = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"{name} must be a non-empty 2-D array [N, D], got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return a


def _needs_torch_fidelity(err: ImportError) -> ImportError:
    return ImportError(f"this metric needs torch-fidelity: pip install 'decodelab[eval]' ({err})")


def inception_score(
    scores: object,
    splits: int = 10,
    *,
    probs: bool = False,
    shuffle_seed: int | None = None,
) -> tuple[float, float]:
    """Inception Score of class predictions (torch-fidelity's ``isc_features_to_metric``).

    Args:
        scores: ``[N, C]`` logits (default; softmax is applied in float64) or probabilities
            (``probs=True``; rows must sum to 1). For the standard IS these are the Inception
            network's 1008 *unbiased* logits (pool features times the fc weight, no bias:
            torch-fidelity's ``logits_unbiased``; the ADM evaluator's softmax input).
        splits: number of contiguous splits (10 in every published protocol); split ``i`` holds
            rows ``i N // splits`` to ``(i + 1) N // splits``.
        probs: whether ``scores`` are probabilities. They are passed on as log-probabilities with
            exact zeros floored at ``1e-300`` (``0 log 0 = 0``: an exact zero would make
            torch-fidelity's ``p log p`` NaN; the floor changes the result by less than 1e-290).
        shuffle_seed: permute the rows with ``numpy.random.RandomState(seed)`` before splitting
            (torch-fidelity uses 2020); ``None`` keeps the input order (ADM).

    Returns:
        ``(mean, std)`` over the splits (std with ``ddof=0``).

    Raises:
        ValueError: for malformed input, fewer rows than splits, or probabilities that do not
            sum to 1.
        ImportError: torch-fidelity is not installed (the ``eval`` extra).
    """
    s = _as_2d(scores, "scores")
    if splits < 1 or s.shape[0] < splits:
        raise ValueError(f"need 1 <= splits <= N; got splits={splits} for N={s.shape[0]}")
    if probs:
        if (s < 0).any() or not np.allclose(s.sum(axis=1), 1.0, atol=1e-4):
            raise ValueError("probabilities must be non-negative and sum to 1 per row (pass logits with probs=False)")
        s = np.log(np.maximum(s / s.sum(axis=1, keepdims=True), 1e-300))
    try:
        from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric
    except ImportError as err:
        raise _needs_torch_fidelity(err) from None
    out = isc_features_to_metric(torch.from_numpy(s), splits=splits, shuffle=shuffle_seed is not None,
                                 rng_seed=shuffle_seed if shuffle_seed is not None else 0)  # fmt: skip
    return float(out[KEY_METRIC_ISC_MEAN]), float(out[KEY_METRIC_ISC_STD])


def precision_recall(real: object, fake: object, k: int = 3, batch_size: int = 5000) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of ``fake`` against ``real`` features.

    Computed by torch-fidelity's ``prc_features_to_metric`` in float64, in blocks of ``batch_size``
    rows (memory about ``8 * batch_size * max(N_r, N_f)`` bytes).

    Args:
        real: ``[N_r, D]`` reference features (ADM/LlamaGen: Inception pool features of the 10k
            reference batch).
        fake: ``[N_f, D]`` generated-sample features.
        k: neighbourhood size of the manifold estimate (3).
        batch_size: rows per block of the distance computation.

    Returns:
        ``(precision, recall)`` in [0, 1].

    Raises:
        ValueError: on mismatched dimensions or sets not larger than ``k``.
        ImportError: torch-fidelity is not installed (the ``eval`` extra).
    """
    r = _as_2d(real, "real")
    f = _as_2d(fake, "fake")
    if r.shape[1] != f.shape[1]:
        raise ValueError(f"feature dimensions differ: {r.shape[1]} vs {f.shape[1]}")
    if not 1 <= k < min(len(r), len(f)):
        raise ValueError(f"k must be in 1..N-1 for both sets (N = {len(r)} real, {len(f)} fake), got {k}")
    try:
        from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric
    except ImportError as err:
        raise _needs_torch_fidelity(err) from None
    out = prc_features_to_metric(torch.from_numpy(f), torch.from_numpy(r), prc_neighborhood=k,
                                 prc_batch_size=batch_size, save_cpu_ram=True, verbose=False)  # fmt: skip
    return float(out[KEY_METRIC_PRECISION]), float(out[KEY_METRIC_RECALL])
