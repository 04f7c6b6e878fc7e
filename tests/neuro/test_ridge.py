"""MultiTargetRidge / MultiTargetRidgeCV equal scikit-learn's Ridge / RidgeCV on small problems."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import Ridge, RidgeCV
from sklearn.utils.estimator_checks import parametrize_with_checks

from decodelab.neuro.ridge import MultiTargetRidge, MultiTargetRidgeCV

SHAPES = {"wide": (20, 50), "tall": (60, 15)}  # n_samples <= n_features -> dual under "auto"


def _problem(n: int, p: int, t: int = 7, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p)) + 3.0  # off-centre: the intercept matters
    Y = X @ rng.normal(size=(p, t)) + rng.normal(size=(n, t)) + 5.0
    return X, Y, rng.normal(size=(9, p)) + 3.0


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("solver", ["auto", "primal", "dual"])
@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("method", ["cholesky", "eigen"])
def test_equals_sklearn_ridge(shape: str, solver: str, fit_intercept: bool, method: str) -> None:
    X, Y, Xt = _problem(*SHAPES[shape])
    ours = MultiTargetRidge(3.0, fit_intercept=fit_intercept, solver=solver, method=method, chunk_size=3).fit(X, Y)
    ref = Ridge(3.0, fit_intercept=fit_intercept, solver="svd").fit(X, Y)
    np.testing.assert_allclose(ours.predict(Xt), ref.predict(Xt), rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours.coef_, ref.coef_, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours.intercept_, ref.intercept_, rtol=0, atol=1e-6)
    assert ours.solver_ == (("dual" if shape == "wide" else "primal") if solver == "auto" else solver)
    assert MultiTargetRidge(3.0).fit(X, Y).method_ == "cholesky"  # one alpha: no eigendecomposition needed


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("store", ["memory", "targets", "h5"])
@pytest.mark.parametrize("method", ["cholesky", "eigen", "auto"])
def test_per_target_alphas_and_stores(shape: str, store: str, method: str, tmp_path) -> None:
    X, Y, Xt = _problem(*SHAPES[shape])
    alphas = np.array([0.5, 1.0, 2.0, 50.0, 0.5, 1e3, 7.0])
    where = str(tmp_path / "coef.h5") if store == "h5" else store
    ours = MultiTargetRidge(alphas, method=method, chunk_size=2, store=where).fit(X, Y)
    assert ours.method_ == ("eigen" if method == "auto" else method)  # 6 distinct alphas: auto picks eigen
    ref = Ridge(alphas, solver="svd").fit(X, Y)
    np.testing.assert_allclose(ours.predict(Xt), ref.predict(Xt), rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours.intercept_, ref.intercept_, rtol=0, atol=1e-6)
    if store == "h5":
        assert isinstance(ours.coef_store_, h5py.Dataset) and ours.coef_store_.shape[1] == 7
    if store == "targets":
        assert ours.coef_store_ is None


def test_chunking_h5_targets_float32_and_1d(tmp_path) -> None:
    X, Y, Xt = _problem(30, 40, t=11)
    whole = MultiTargetRidge(2.0, chunk_size=100).fit(X, Y).predict(Xt)
    with h5py.File(tmp_path / "y.h5", "w") as f:
        f["Y"] = Y
    with h5py.File(tmp_path / "y.h5", "r") as f:
        from_h5 = MultiTargetRidge(2.0, chunk_size=4, feature_chunk_size=7).fit(X, f["Y"]).predict(Xt)
    np.testing.assert_allclose(from_h5, whole, rtol=0, atol=1e-9)
    Y0 = Y.copy()
    one = MultiTargetRidge(2.0).fit(X, Y[:, 3])
    assert one.predict(Xt).shape == (9,) and np.ndim(one.intercept_) == 0
    np.testing.assert_allclose(one.predict(Xt), whole[:, 3], atol=1e-9)
    np.testing.assert_array_equal(Y, Y0)  # the caller's targets are never centred in place
    f32 = MultiTargetRidge(2.0, dtype="float32").fit(X.astype(np.float32), Y.astype(np.float32)).predict(Xt)
    assert f32.dtype == np.float32
    np.testing.assert_allclose(f32, whole, rtol=1e-3, atol=1e-2 * np.abs(whole).max())
    out = np.zeros((9, 11), np.float32)
    MultiTargetRidge(2.0).fit(X, Y).predict(Xt, out=out)
    np.testing.assert_allclose(out, whole, rtol=1e-5)


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("solver", ["primal", "dual"])
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_cv_equals_sklearn_ridgecv(shape: str, solver: str, fit_intercept: bool) -> None:
    X, Y, Xt = _problem(*SHAPES[shape], seed=1)
    Y[:, :3] += np.random.default_rng(5).normal(scale=30.0, size=(len(Y), 3))  # noisy targets want big alphas
    alphas = [0.1, 1.0, 10.0, 100.0, 1e3]
    for per_target in (True, False):
        ours = MultiTargetRidgeCV(alphas, alpha_per_target=per_target, fit_intercept=fit_intercept, solver=solver,
                                  chunk_size=3).fit(X, Y)  # fmt: skip
        ref = RidgeCV(alphas, alpha_per_target=per_target, fit_intercept=fit_intercept, store_cv_results=True)
        ref.fit(X, Y)
        np.testing.assert_allclose(ours.cv_errors_, ref.cv_results_.mean(axis=0).T, rtol=1e-6)
        np.testing.assert_array_equal(ours.alpha_, np.broadcast_to(ref.alpha_, (7,)))
        np.testing.assert_allclose(ours.predict(Xt), ref.predict(Xt), rtol=0, atol=1e-6)
    assert len(np.unique(ours.alpha_)) == 1
    per = MultiTargetRidgeCV(alphas, alpha_per_target=True, solver=solver).fit(X, Y)
    assert len(np.unique(per.alpha_)) > 1  # the constructed targets really need different penalties


def test_cv_store_targets_matches_memory() -> None:
    X, Y, Xt = _problem(25, 30, seed=2)
    a = MultiTargetRidgeCV([0.1, 10.0], alpha_per_target=True, store="targets").fit(X, Y)
    b = MultiTargetRidgeCV([0.1, 10.0], alpha_per_target=True).fit(X, Y)
    np.testing.assert_allclose(a.predict(Xt), b.predict(Xt), atol=1e-9)


def test_sklearn_conventions_and_errors() -> None:
    X, Y, Xt = _problem(20, 10)
    est = MultiTargetRidge(alpha=2.0, chunk_size=5)
    assert est.fit(X, Y) is est
    assert clone(est).get_params()["alpha"] == 2.0 and "alphas" in MultiTargetRidgeCV().get_params()
    assert est.score(X, Y) > 0.9
    with pytest.raises(NotFittedError):
        MultiTargetRidge().predict(Xt)
    with pytest.raises(ValueError, match="positive"):
        MultiTargetRidge(alpha=0.0).fit(X, Y)
    with pytest.raises(ValueError, match="one value per target"):
        MultiTargetRidge(alpha=[1.0, 2.0]).fit(X, Y)
    with pytest.raises(ValueError, match="19 rows"):
        MultiTargetRidge().fit(X, Y[:-1])
    with pytest.raises(ValueError, match="19 rows"):
        MultiTargetRidge(store="targets").fit(X, Y[:-1, 0])  # 1-D targets are checked too
    with pytest.raises(ValueError, match="features"):
        est.predict(Xt[:, :5])
    bad = Y.copy()
    bad[3, 6] = np.nan
    with pytest.raises(ValueError, match="targets 5..6 contain NaN"):
        MultiTargetRidge(chunk_size=5).fit(X, bad)
    with pytest.raises(ValueError, match="store"):
        MultiTargetRidge(store="coef.npy").fit(X, Y)
    with pytest.raises(ValueError, match="solver"):
        MultiTargetRidge(solver="svd").fit(X, Y)
    with pytest.raises(ValueError, match="method"):
        MultiTargetRidge(method="lsqr").fit(X, Y)


@pytest.mark.parametrize("store", ["memory", "targets"])
@pytest.mark.parametrize("method", ["cholesky", "eigen"])
def test_fit_predict_never_hold_the_weight_matrix(store: str, method: str) -> None:
    import tracemalloc

    rng = np.random.default_rng(0)
    n, p, t = 40, 400, 4000
    X, Y, Xt = rng.normal(size=(n, p)), rng.normal(size=(n, t)), rng.normal(size=(10, p))
    weights_bytes = p * t * 8  # what sklearn's coef_ would hold: 12.8 MB
    tracemalloc.start()
    try:
        model = MultiTargetRidge(5.0, method=method, store=store, chunk_size=256, feature_chunk_size=64).fit(X, Y)
        pred = model.predict(Xt)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 0.3 * weights_bytes, f"peak {peak / 1e6:.1f} MB"
    np.testing.assert_allclose(pred, Ridge(5.0, solver="svd").fit(X, Y).predict(Xt), atol=1e-6)


@parametrize_with_checks([MultiTargetRidge(), MultiTargetRidgeCV(), MultiTargetRidge(store="targets")])
def test_sklearn_estimator_checks(estimator, check) -> None:
    check(estimator)
