"""Inception Score and improved precision/recall: the pure maths on logits and feature vectors.

Like :mod:`decodelab.eval.fid`, nothing here knows which network produced its inputs, and
everything is computed in float64.

- :func:`inception_score` (Salimans et al. 2016): ``exp(E_x KL(p(y|x) || p(y)))`` per split, then
  mean and standard deviation over splits. The splits are contiguous, in input order, as in the
  ADM evaluator (openai/guided-diffusion ``evaluations/evaluator.py``: 50k samples in splits of
  5000 = 10 splits) and improved-gan; ``shuffle_seed`` permutes first, as torch-fidelity does
  (its default seed is 2020). The std uses ``ddof=0`` (torch-fidelity; ADM reports only the mean).
- :func:`precision_recall` (Kynkäänniemi et al. 2019): each set's manifold is the union of balls
  around its points whose radius is the distance to the point's ``k``-th nearest neighbour
  (``k = 3``, the point itself excluded); precision is the share of generated points inside the
  real manifold and recall the share of real points inside the generated one. A point exactly on
  a sphere counts as inside (``<=``, as in the ADM evaluator and torch-fidelity). The ADM
  evaluator computes distances in float16 on the GPU; here they are float64, so borderline points
  may flip against it (a difference far below the metric's sampling noise).

Example:
    >>> import numpy as np
    >>> inception_score(np.eye(10) * 50.0, splits=1)[0] > 9.99  # confident and balanced: IS = classes
    True
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["inception_score", "manifold_radii", "precision_recall"]


def _as_2d(x: object, name: str) -> np.ndarray:
    a = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"{name} must be a non-empty 2-D array [N, D], got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return a


def inception_score(
    scores: object,
    splits: int = 10,
    *,
    probs: bool = False,
    shuffle_seed: int | None = None,
) -> tuple[float, float]:
    """Inception Score of class predictions.

    Args:
        scores: ``[N, C]`` logits (default; softmax is applied in float64) or probabilities
            (``probs=True``; rows must sum to 1). For the standard IS these are the Inception
            network's 1008 *unbiased* logits (pool features times the fc weight, no bias:
            torch-fidelity's ``logits_unbiased``; the ADM evaluator's softmax input).
        splits: number of contiguous splits (10 in every published protocol).
        probs: whether ``scores`` are probabilities.
        shuffle_seed: permute the rows with ``numpy.random.RandomState(seed)`` before splitting
            (torch-fidelity uses 2020); ``None`` keeps the input order (ADM).

    Returns:
        ``(mean, std)`` over the splits (std with ``ddof=0``).

    Raises:
        ValueError: for malformed input, fewer rows than splits, or probabilities that do not
            sum to 1.
    """
    s = _as_2d(scores, "scores")
    if splits < 1 or s.shape[0] < splits:
        raise ValueError(f"need 1 <= splits <= N; got splits={splits} for N={s.shape[0]}")
    if probs:
        if (s < 0).any() or not np.allclose(s.sum(axis=1), 1.0, atol=1e-4):
            raise ValueError("probabilities must be non-negative and sum to 1 per row (pass logits with probs=False)")
        p = s / s.sum(axis=1, keepdims=True)
    else:
        z = s - s.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
    if shuffle_seed is not None:
        p = p[np.random.RandomState(shuffle_seed).permutation(len(p))]
    values = []
    for part in np.array_split(p, splits):
        marginal = part.mean(axis=0, keepdims=True)  # p(y) over the split
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.where(part > 0, part * (np.log(part) - np.log(marginal)), 0.0)  # 0 log 0 = 0
        values.append(np.exp(kl.sum(axis=1).mean()))
    v = np.asarray(values)
    return float(v.mean()), float(v.std())


def _sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``[len(a), len(b)]`` (float64, clipped at 0)."""
    d = (a * a).sum(1, keepdim=True) - 2.0 * a @ b.T + (b * b).sum(1)[None]
    return d.clamp_min_(0.0)


def manifold_radii(features: object, k: int = 3, batch_size: int = 5000) -> np.ndarray:
    """Distance of every point to its ``k``-th nearest neighbour in the same set (itself excluded).

    Args:
        features: ``[N, D]`` with ``N > k``.
        k: neighbourhood size.
        batch_size: rows per block of the pairwise-distance computation (memory ~ ``batch_size * N``).

    Returns:
        float64 ``[N]`` radii.
    """
    x = torch.from_numpy(_as_2d(features, "features"))
    if not 1 <= k < x.shape[0]:
        raise ValueError(f"k must be in 1..N-1 = {x.shape[0] - 1}, got {k}")
    out = []
    for s in range(0, x.shape[0], batch_size):
        d = _sq_dists(x[s : s + batch_size], x)  # [b, N], the point itself at distance ~0
        out.append(d.kthvalue(k + 1, dim=1).values)  # k+1-th smallest = k-th neighbour besides self
    return torch.cat(out).sqrt().numpy()


def _coverage(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, batch_size: int) -> float:
    """Share of ``points`` inside at least one ball ``(centres[j], radii[j])``."""
    inside = 0
    r2 = radii * radii
    for s in range(0, points.shape[0], batch_size):
        d = _sq_dists(points[s : s + batch_size], centres)  # [b, M]
        inside += int((d <= r2[None]).any(dim=1).sum())
    return inside / points.shape[0]


def precision_recall(real: object, fake: object, k: int = 3, batch_size: int = 5000) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of ``fake`` against ``real`` features.

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
    """
    r = _as_2d(real, "real")
    f = _as_2d(fake, "fake")
    if r.shape[1] != f.shape[1]:
        raise ValueError(f"feature dimensions differ: {r.shape[1]} vs {f.shape[1]}")
    rt, ft = torch.from_numpy(r), torch.from_numpy(f)
    radii_r = torch.from_numpy(manifold_radii(r, k, batch_size))
    radii_f = torch.from_numpy(manifold_radii(f, k, batch_size))
    precision = _coverage(ft, rt, radii_r, batch_size)
    recall = _coverage(rt, ft, radii_f, batch_size)
    return precision, recall
