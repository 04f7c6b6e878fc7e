"""MEG retrieval metrics and time-resolved decoding on constructed cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from decodelab.eval.meg import (
    cosine_similarity,
    median_relative_rank,
    meg_retrieval_metrics,
    retrieval,
    retrieval_ranks,
    sliding_windows,
    time_resolved_curves,
    time_resolved_retrieval,
    top_k_accuracy,
)


def test_ranks_known_values_and_shared_ties():
    sim = np.array(
        [
            [0.9, 0.1, 0.5, 0.2],  # true 0 is best -> rank 0
            [0.9, 0.1, 0.5, 0.2],  # true 1 is worst -> rank 3
            [0.3, 0.3, 0.3, 0.3],  # all tied -> rank 1.5 (chance)
            [0.8, 0.2, 0.8, 0.1],  # true 2 tied with one better-or-equal -> 0.5
        ]
    )
    ranks = retrieval_ranks(sim, np.array([0, 1, 2, 2]))
    np.testing.assert_allclose(ranks, [0, 3, 1.5, 0.5])
    assert top_k_accuracy(ranks, 1) == 0.5 and top_k_accuracy(ranks, 2) == 0.75
    assert median_relative_rank(ranks, 4) == pytest.approx(np.median([0, 1, 0.5, 1 / 6]))
    with pytest.raises(ValueError, match="true_index"):
        retrieval_ranks(sim, np.array([0, 1, 2, 4]))


def test_cosine_similarity_is_scale_free():
    a = np.array([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    sim = cosine_similarity(a, 5 * a)
    np.testing.assert_allclose(sim, [[1, 0, 0], [0, 1, 0], [0, 0, 0]])


def test_perfect_random_and_collapsed_predictors():
    rng = np.random.default_rng(0)
    target = rng.normal(size=(200, 16))
    perfect = meg_retrieval_metrics(3 * target, target, distractors=rng.normal(size=(800, 16)))
    assert perfect["small.meg_to_image.top5"] == 1.0 and perfect["small.image_to_meg.top5"] == 1.0
    assert perfect["small.meg_to_image.median_relative_rank"] == 0.0
    assert perfect["large.meg_to_image.top5"] == 1.0 and perfect["large.n_candidates"] == 1000
    assert perfect["small.chance.top5"] == pytest.approx(5 / 200) and perfect["large.chance.top5"] == 5 / 1000
    # an unrelated predictor sits near chance
    rand = meg_retrieval_metrics(rng.normal(size=(200, 16)), target)
    assert rand["small.meg_to_image.top5"] < 0.1 and abs(rand["small.meg_to_image.median_relative_rank"] - 0.5) < 0.1
    assert "large.meg_to_image.top5" not in rand
    # a collapsed predictor (the same output for every trial) is at chance, not at the top
    collapsed = meg_retrieval_metrics(np.ones((200, 16)), target)
    assert collapsed["small.image_to_meg.top5"] < 0.05
    assert collapsed["small.image_to_meg.median_relative_rank"] == pytest.approx(0.5)


def test_directions_differ_when_one_prediction_is_a_hub():
    # p0 leans towards every image, p1 and p2 point mostly away: each prediction still finds its own
    # image (MEG -> image perfect), but images 1 and 2 find the hub p0 first (image -> MEG is not)
    e = np.eye(4)
    target = e[:3]
    pred = np.stack([e[0] + 0.5 * (e[1] + e[2]), e[1] + 3 * e[3], e[2] + 3 * e[3]])
    fwd = retrieval(pred, target, k=1)
    bwd = retrieval(target, pred, k=1)
    assert fwd.top_k == 1.0
    assert bwd.top_k == pytest.approx(1 / 3) and list(bwd.ranks) == [0, 1, 1]


def test_sliding_windows():
    times = np.arange(-0.5, 1.0 + 1e-9, 1 / 120)  # 181 samples
    ws = sliding_windows(times, 0.1, 0.05)
    assert all(w.stop - w.start == 12 for w in ws) and ws[1].start - ws[0].start == 6
    assert ws[-1].stop <= 181 and ws[-1].stop + 6 > 181
    with pytest.raises(ValueError, match="longer than the epoch"):
        sliding_windows(times, 5.0, 0.1)


def test_time_resolved_curve_peaks_where_the_signal_is():
    rng = np.random.default_rng(0)
    times = np.arange(-0.2, 0.8 + 1e-9, 1 / 50)  # 51 samples
    n_train, n_test, c, f = 200, 50, 12, 6
    mixing = rng.normal(size=(f, c))
    bump = np.exp(-0.5 * ((times - 0.4) / 0.04) ** 2)  # the image information lives around 0.4 s

    def make(n):
        y = rng.normal(size=(n, f))
        x = 0.5 * (y @ mixing)[:, :, None] * bump[None, None, :] + rng.normal(size=(n, c, len(times)))
        return x, y

    (tx, ty), (vx, vy) = make(n_train), make(n_test)
    res = time_resolved_retrieval(tx, ty, vx, vy, times, width=0.1, step=0.04)
    assert abs(res.peak_time - 0.4) <= 0.041  # the window grid is 0.04 s
    assert res.top_k.max() > 0.5 and res.top_k[0] < 0.3  # well above chance at the peak, near chance before
    assert res.chance_top_k == 5 / 50
    curves = time_resolved_curves(
        tx, vx, times, {"a": (ty, vy), "shuffled": (ty, vy[rng.permutation(n_test)])}, width=0.1, step=0.2
    )
    assert set(curves) == {"a", "shuffled"} and curves["a"].top_k.max() > curves["shuffled"].top_k.max()
