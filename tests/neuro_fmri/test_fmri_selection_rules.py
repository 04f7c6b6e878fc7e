"""The selection rules of ``benchmarks/fmri_selection.py`` on constructed data with known answers."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "fmri_selection.py"


@pytest.fixture(scope="module")
def sel():
    spec = importlib.util.spec_from_file_location("fmri_selection", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


NAMES = ["T-shirt/top", "Trouser", "Shirt"]


def test_encoding_scores_pick_the_seen_image_among_perturbed_candidates(sel):
    rng = np.random.default_rng(0)
    n_train, n_test, vox = 600, 40, 120

    def images(n):
        return rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)

    def drive(imgs, cls):  # a linear-in-features brain, as the encoding model assumes, plus noise
        lum = np.sqrt(imgs.astype(np.float64).mean(-1).reshape(len(imgs), -1) / 255.0)
        return lum @ w + np.eye(3)[cls] @ u

    w, u = rng.standard_normal((1024, vox)) * 0.2, rng.standard_normal((3, vox))
    tr, te = images(n_train), images(n_test)
    ytr, yte = rng.integers(0, 3, n_train), rng.integers(0, 3, n_test)
    train_x = drive(tr, ytr) + 0.5 * rng.standard_normal((n_train, vox))
    test_x = drive(te, yte) + 0.5 * rng.standard_normal((n_test, vox))
    data = SimpleNamespace(train_images=tr, train_x=train_x, test_x=test_x, train_labels=ytr)
    others = [images(n_test) for _ in range(2)]
    cands = [others[0], te, others[1]]  # the seen image is candidate 1
    scores = sel.encoding_scores(data, yte, cands, NAMES)
    assert scores["loglik"].shape == scores["corr"].shape == (3, n_test)
    assert (scores["loglik"].argmax(0) == 1).mean() > 0.9
    assert (scores["corr"].argmax(0) == 1).mean() > 0.9


def test_encoding_scores_need_training_labels(sel):
    data = SimpleNamespace(train_labels=np.array([0, -1, 2]))
    with pytest.raises(ValueError, match="class labels of the training images"):
        sel.encoding_scores(data, np.array([0]), [], NAMES)
