"""MEG-to-image retrieval metrics (Benchetrit, Banville & King, ICLR 2024) and time-resolved decoding.

Retrieval compares each predicted embedding with a set of candidate image embeddings by cosine
similarity and ranks the true image among them:

- ``rank`` is 0 for the best candidate; ties are shared (a candidate scoring the same as the true
  one counts one half), so a collapsed predictor that scores every candidate alike sits at chance
  instead of at the top;
- **top-k accuracy** is the fraction of trials whose true image has ``rank < k`` (chance ``k / M``);
- **median relative rank** is the median over trials of ``rank / (M - 1)`` (0 best, chance 0.5).

:func:`meg_retrieval_metrics` reports both metrics on the **small** set (the test images
themselves, e.g. the 200 averaged THINGS-MEG test images), in both directions (MEG -> image: rank
the true image among the candidates; image -> MEG: rank the true MEG prediction among all
predictions), and on the **large** set (the test images plus distractor images that have no MEG,
so only MEG -> image is defined), each with its chance level, under constant keys.

:func:`time_resolved_retrieval` fits a linear decoder (scikit-learn ``RidgeCV`` by default, any
estimator may be passed) on each sliding window along the epoch and scores its test predictions:
the curve of retrieval against time shows when the image information is present.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

__all__ = [
    "RetrievalResult",
    "TimeResolvedResult",
    "cosine_similarity",
    "median_relative_rank",
    "meg_retrieval_metrics",
    "retrieval",
    "retrieval_ranks",
    "sliding_windows",
    "time_resolved_curves",
    "time_resolved_retrieval",
    "top_k_accuracy",
]


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[N, F] x [M, F] -> [N, M]`` cosine similarities (float64; a zero row has similarity 0)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected [N, F] and [M, F] embeddings, got {a.shape} and {b.shape}")
    na = np.linalg.norm(a, axis=1, keepdims=True)
    nb = np.linalg.norm(b, axis=1, keepdims=True)
    return (a / np.where(na > 0, na, 1)) @ (b / np.where(nb > 0, nb, 1)).T


def retrieval_ranks(similarity: np.ndarray, true_index: np.ndarray) -> np.ndarray:
    """Rank (0 = best, ties shared) of each row's true candidate: ``[N, M]``, ``[N]`` -> ``[N]`` float."""
    similarity = np.asarray(similarity, dtype=np.float64)
    true_index = np.asarray(true_index)
    n, m = similarity.shape
    if true_index.shape != (n,) or (true_index < 0).any() or (true_index >= m).any():
        raise ValueError(f"true_index must be [N] = [{n}] indices into {m} candidates")
    true = similarity[np.arange(n), true_index][:, None]
    greater = (similarity > true).sum(1)
    ties = (similarity == true).sum(1) - 1  # the true candidate itself is not a tie
    return greater + 0.5 * ties


def top_k_accuracy(ranks: np.ndarray, k: int = 5) -> float:
    """Fraction of ranks below ``k``."""
    return float(np.mean(np.asarray(ranks) < k))


def median_relative_rank(ranks: np.ndarray, n_candidates: int) -> float:
    """Median of ``rank / (n_candidates - 1)``."""
    if n_candidates < 2:
        raise ValueError("the relative rank needs at least 2 candidates")
    return float(np.median(np.asarray(ranks) / (n_candidates - 1)))


@dataclass
class RetrievalResult:
    """One retrieval: ``top_k`` accuracy, ``median_relative_rank``, their chance levels, the ranks."""

    top_k: float
    median_relative_rank: float
    chance_top_k: float
    chance_median_relative_rank: float
    n_candidates: int
    k: int
    ranks: np.ndarray


def retrieval(
    queries: np.ndarray, candidates: np.ndarray, true_index: np.ndarray | None = None, k: int = 5
) -> RetrievalResult:
    """Rank each query's true candidate by cosine similarity (default: query ``i`` matches candidate ``i``)."""
    sim = cosine_similarity(queries, candidates)
    true_index = np.arange(len(queries)) if true_index is None else np.asarray(true_index)
    ranks = retrieval_ranks(sim, true_index)
    m = sim.shape[1]
    return RetrievalResult(
        top_k=top_k_accuracy(ranks, k),
        median_relative_rank=median_relative_rank(ranks, m),
        chance_top_k=min(k, m) / m,
        chance_median_relative_rank=0.5,
        n_candidates=m,
        k=k,
        ranks=ranks,
    )


def meg_retrieval_metrics(
    pred: np.ndarray, target: np.ndarray, *, distractors: np.ndarray | None = None, k: int = 5
) -> dict[str, float]:
    """Small- and large-set retrieval, both directions on the small set.

    Args:
        pred: ``[N, F]`` embeddings predicted from MEG (one per test image, e.g. the averaged repeats).
        target: ``[N, F]`` the true image embeddings, row ``i`` matching ``pred[i]``.
        distractors: ``[D, F]`` embeddings of extra images without MEG (the large set is
            ``target + distractors``); ``None`` skips the large set.
        k: the top-k.

    Returns:
        ``{"small.meg_to_image.top{k}", "small.meg_to_image.median_relative_rank",
        "small.image_to_meg.top{k}", "small.image_to_meg.median_relative_rank",
        "small.chance.top{k}", "small.chance.median_relative_rank", "small.n_candidates"}`` and the
        same ``large.*`` keys (MEG -> image only) when distractors are given.
    """
    pred = np.asarray(pred)
    target = np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"pred {pred.shape} and target {target.shape} must have the same shape [N, F]")
    out: dict[str, float] = {}
    fwd = retrieval(pred, target, k=k)
    bwd = retrieval(target, pred, k=k)
    out[f"small.meg_to_image.top{k}"] = fwd.top_k
    out["small.meg_to_image.median_relative_rank"] = fwd.median_relative_rank
    out[f"small.image_to_meg.top{k}"] = bwd.top_k
    out["small.image_to_meg.median_relative_rank"] = bwd.median_relative_rank
    out[f"small.chance.top{k}"] = fwd.chance_top_k
    out["small.chance.median_relative_rank"] = fwd.chance_median_relative_rank
    out["small.n_candidates"] = float(fwd.n_candidates)
    if distractors is not None:
        large = retrieval(pred, np.concatenate([target, np.asarray(distractors)]), k=k)
        out[f"large.meg_to_image.top{k}"] = large.top_k
        out["large.meg_to_image.median_relative_rank"] = large.median_relative_rank
        out[f"large.chance.top{k}"] = large.chance_top_k
        out["large.chance.median_relative_rank"] = large.chance_median_relative_rank
        out["large.n_candidates"] = float(large.n_candidates)
    return out


def sliding_windows(times: np.ndarray, width: float, step: float) -> list[slice]:
    """Sample slices of ``width`` seconds every ``step`` seconds along ``times`` (full windows only)."""
    times = np.asarray(times, dtype=np.float64)
    if width <= 0 or step <= 0:
        raise ValueError("width and step must be positive")
    dt = float(np.median(np.diff(times)))
    n = max(1, int(round(width / dt)))
    stride = max(1, int(round(step / dt)))
    if n > len(times):
        raise ValueError(f"a {width} s window is longer than the epoch ({len(times)} samples)")
    return [slice(s, s + n) for s in range(0, len(times) - n + 1, stride)]


@dataclass
class TimeResolvedResult:
    """Per window: ``times`` (window centres, s), ``top_k``, ``median_relative_rank``, ``mean_relative_rank``."""

    times: np.ndarray
    top_k: np.ndarray
    median_relative_rank: np.ndarray
    mean_relative_rank: np.ndarray
    chance_top_k: float
    k: int

    @property
    def peak_time(self) -> float:
        """Centre of the window with the lowest mean relative rank (the median saturates at 0 near a strong peak)."""
        return float(self.times[int(np.argmin(self.mean_relative_rank))])


def _default_estimator():
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 5, 8)))


def time_resolved_retrieval(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    times: np.ndarray,
    *,
    width: float = 0.1,
    step: float = 0.05,
    k: int = 5,
    estimator: Callable[[], object] | None = None,
) -> TimeResolvedResult:
    """Fit a decoder on each sliding window of the epochs and score MEG -> image retrieval on the test set.

    Args:
        train_x, test_x: ``[N, C, T]`` MEG epochs; train_y, test_y: ``[N, F]`` image embeddings.
        times: ``[T]`` seconds.
        width, step: window length and stride (s).
        k: the top-k.
        estimator: a factory of scikit-learn-style regressors (``fit(X, Y)``, ``predict(X)``) fitted
            on the flattened window ``[N, C * width]``; default standardisation + ``RidgeCV``.
    """
    make = estimator or _default_estimator
    if train_x.shape[1:] != test_x.shape[1:] or train_x.shape[-1] != len(times):
        raise ValueError(f"train {train_x.shape} / test {test_x.shape} epochs do not match {len(times)} times")
    centres, tops, ranks, means = [], [], [], []
    for w in sliding_windows(times, width, step):
        model = make()
        model.fit(train_x[..., w].reshape(len(train_x), -1), train_y)
        pred = model.predict(test_x[..., w].reshape(len(test_x), -1))
        res = retrieval(pred, test_y, k=k)
        centres.append(float(times[w].mean()))
        tops.append(res.top_k)
        ranks.append(res.median_relative_rank)
        means.append(float(np.mean(res.ranks / (res.n_candidates - 1))))
    m = len(test_y)
    return TimeResolvedResult(np.array(centres), np.array(tops), np.array(ranks), np.array(means), min(k, m) / m, k)


def time_resolved_curves(
    train_x: np.ndarray,
    test_x: np.ndarray,
    times: np.ndarray,
    targets: Mapping[str, tuple[np.ndarray, np.ndarray]],
    **kwargs,
) -> dict[str, TimeResolvedResult]:
    """One :func:`time_resolved_retrieval` curve per embedding type: ``targets[name] = (train_y, test_y)``."""
    return {
        name: time_resolved_retrieval(train_x, ty, test_x, vy, times, **kwargs) for name, (ty, vy) in targets.items()
    }
