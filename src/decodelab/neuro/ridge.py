"""Multi-target ridge regression at NSD scale: one factorisation, targets in chunks.

Brain-Diffuser (Ozcelik & VanRullen 2023, https://github.com/ozcelikfu/brain-diffuser) maps
15,724 nsdgeneral voxels of 8,859 training images to 91,168 VDVAE latents with
``sklearn.linear_model.Ridge(alpha=5e4)``; its fitted ``coef_`` alone is a 91,168 x 15,724 float64
matrix (11.5 GB). This module solves the same problem (the same loss: unnormalised squared error
plus ``alpha * ||w||^2``, unpenalised intercept) in a form whose memory does not grow with the
number of targets beyond one chunk of them:

- the centred design ``Xc`` is factorised once, through its Gram ``K = Xc Xc^T`` when there are
  fewer samples than features (``dual``) or its covariance ``C = Xc^T Xc`` otherwise (``primal``):
  a Cholesky factor of ``K + aI`` per distinct penalty ``a`` (``method="cholesky"``, the default for
  up to 4 distinct penalties), or one eigendecomposition ``V diag(s) V^T`` shared by every penalty
  (``method="eigen"``; per-target penalties, cross-validation). With the eigenbasis, writing ``B``
  for the basis (``Xc^T V`` or ``W``, ``[p, r]``) and ``Q`` for the target projector (``V^T`` or
  ``W^T Xc^T``, ``[r, n]``), the weights for one target ``y`` are ``B diag(1 / (s + a)) Q yc``;
- targets are read in chunks of ``chunk_size`` columns (``Y`` may be a NumPy array, a memmap or an
  ``h5py`` dataset), so only ``[n, chunk_size]`` of them is ever in memory;
- per chunk only the coefficients ``[r, chunk]`` are kept: in memory, in an HDF5 file
  (``store="file.h5"``), or not at all (``store="targets"``: the model keeps a reference to the
  training targets and predicts through the ``[m, n]`` smoother matrix, which for few test samples
  is also the cheapest way: ``m n t`` instead of ``n^2 t`` multiply-adds);
- every penalty of a cross-validation reuses the same eigendecomposition: the exact leave-one-out
  residuals of all ``alphas`` (:class:`MultiTargetRidgeCV`) come from ``Q``, ``s`` and the chunk.

Why not a library. scikit-learn's ``Ridge`` (the reference of the tests) materialises ``coef_``
``[t, p]`` (11.5 GB here) and solves each alpha anew. himalaya's ``KernelRidge`` /
``KernelRidgeCV`` share the eigendecomposition across alphas and batch targets during CV, but the
fitted ``dual_coef_`` is a full ``[n, t]`` array kept next to the full targets: at NSD size that is
8,859 x 91,168 float32 twice (6.5 GB), over the 4 GB bound, and its predict needs the whole
``dual_coef_``. ``benchmarks/bench_ridge_nsd.py`` times all of them on a subsample
(``benchmarks/results/bench_ridge_nsd_subsample.json``: 1,500 samples x 3,000 features x 6,000
targets, alpha 5e4, 1 thread, CPU seconds on a shared 2-core machine): this module 2.4 (Cholesky,
coefficients in memory), 1.9 (``store="targets"``), 10.5 (eigen); scikit-learn 4.7; himalaya
``KernelRidge`` 15.0 (numpy backend) and 35.4 (torch backend), whose single-alpha solver is an
eigendecomposition. All agree to 3e-12. This module is kept: it is the fastest here and the only
one that meets the memory bound at NSD size; scikit-learn stays the reference of the tests.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import scipy.linalg
from scipy.linalg import get_blas_funcs
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_array, check_is_fitted
from tqdm import tqdm

__all__ = ["MultiTargetRidge", "MultiTargetRidgeCV"]

_SOLVERS = ("auto", "primal", "dual")


def _check_targets(Y: Any, n: int) -> tuple[Any, bool]:
    """Validate targets without reading them: ``(2-D array-like, was_1d)``."""
    if Y is None:
        raise ValueError("ridge regression requires y to be passed, but the target y is None")
    if not (hasattr(Y, "shape") and hasattr(Y, "__getitem__") and hasattr(Y, "ndim")):
        Y = np.asarray(Y)
    if Y.ndim not in (1, 2):
        raise ValueError(f"targets must be 1-D or 2-D [n_samples, n_targets], got shape {tuple(Y.shape)}")
    if Y.shape[0] != n:
        raise ValueError(f"X has {n} samples but the targets have {Y.shape[0]} rows")
    if Y.ndim == 1:
        return np.asarray(Y[...])[:, None], True
    if Y.shape[1] == 0:
        raise ValueError("the targets have no columns")
    return Y, False


def _chunks(total: int, size: int) -> Iterator[tuple[int, int]]:
    for a in range(0, total, size):
        yield a, min(a + size, total)


def _read_columns(Y: Any, a: int, b: int, dtype: np.dtype) -> np.ndarray:
    """Columns ``a:b`` as a new ``[n, b - a]`` array the caller may modify (never a view of ``Y``)."""
    block = Y[:, a:b]
    if isinstance(block, np.ndarray) and not isinstance(Y, np.ndarray):
        block = block.astype(dtype, copy=False)  # h5py & co. return a fresh array already
    else:
        block = np.array(block, dtype=dtype, copy=True)  # a view of the caller's array (or a tensor)
    if not np.isfinite(block).all():
        raise ValueError(f"targets {a}..{b - 1} contain NaN or infinity")
    return block


class MultiTargetRidge(RegressorMixin, BaseEstimator):
    """Ridge regression with many targets, target chunk by target chunk.

    Minimises ``||Y - X W - 1 b||^2 + alpha ||W||^2`` per target, exactly as
    ``sklearn.linear_model.Ridge`` (tested equal to 1e-6). The centred design is factorised once:
    a Cholesky factor of ``Gram + alpha I`` per distinct alpha, or one eigendecomposition shared by
    all alphas (see the module docstring); then targets are solved in chunks.

    Args:
        alpha: penalty, a positive number or one per target (``[n_targets]``).
        fit_intercept: fit an unpenalised intercept (centre ``X`` and ``Y``).
        solver: ``"dual"`` (factorise the ``[n, n]`` Gram ``Xc Xc^T``), ``"primal"`` (the ``[p, p]``
            covariance ``Xc^T Xc``) or ``"auto"`` (dual when ``n_samples <= n_features``).
        method: ``"cholesky"`` (one factorisation per distinct alpha), ``"eigen"`` (one
            eigendecomposition for every alpha) or ``"auto"`` (Cholesky for up to 4 distinct
            alphas: a symmetric eigendecomposition costs about 10-15 Cholesky factorisations).
        chunk_size: targets per chunk (memory ``~ n_samples x chunk_size``).
        feature_chunk_size: features (dual) or samples (primal) per block while building the Gram.
        dtype: ``"float64"`` or ``"float32"`` for the linear algebra.
        store: where the per-target coefficients ``[r, n_targets]`` go: ``"memory"`` (an array), a
            path ending in ``.h5``/``.hdf5`` (an HDF5 file, written chunk by chunk and kept open for
            reading), or ``"targets"`` (nothing per target: the model keeps a reference to ``Y`` and
            predicts through the smoother matrix; ``Y`` must stay unchanged).
        progress: show a progress bar over target chunks.

    Attributes:
        n_features_in_: number of features.
        n_targets_: number of targets.
        solver_: ``"primal"`` or ``"dual"``.
        method_: ``"cholesky"`` or ``"eigen"``.
        alpha_: ``[n_targets]`` penalties used.
        X_mean_: ``[p]`` feature means (zeros without intercept).
        y_mean_: ``[n_targets]`` target means (zeros without intercept).
        X_fit_: the training inputs (dual only; a reference, as sklearn's ``KernelRidge``): the
            features of new inputs are their kernel ``(x - X_mean_) Xc^T`` with them.
        eigvecs_: ``[n, n]`` eigenvectors ``V`` of the Gram (dual eigen); features ``k(x) V``.
        basis_: ``[p, p]`` eigenvectors ``W`` of the covariance (primal eigen); features ``xc W``.
        projector_: ``[r, n]`` maps centred targets into the coefficient space before the penalty
            (``V^T``, ``W^T Xc^T``, ``Xc^T`` for primal Cholesky, ``None`` for dual Cholesky).
        eigvals_: ``[r]`` eigenvalues of the centred Gram / covariance (eigen only).
        factors_: alpha -> Cholesky factor of ``Gram + alpha I`` (Cholesky only).
        coef_store_: ``[r, n_targets]`` coefficients (array or ``h5py.Dataset``), ``None`` with
            ``store="targets"``; ``predict(x) = features(x) coef_store_ + y_mean_``.
    """

    def __init__(
        self,
        alpha: float | Sequence[float] | np.ndarray = 1.0,
        *,
        fit_intercept: bool = True,
        solver: str = "auto",
        method: str = "auto",
        chunk_size: int = 4096,
        feature_chunk_size: int = 4096,
        dtype: str = "float64",
        store: str | os.PathLike[str] = "memory",
        progress: bool = False,
    ) -> None:
        self.alpha = alpha
        self.fit_intercept = fit_intercept
        self.solver = solver
        self.method = method
        self.chunk_size = chunk_size
        self.feature_chunk_size = feature_chunk_size
        self.dtype = dtype
        self.store = store
        self.progress = progress

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    # ------------------------------------------------------------------------------ validation
    def _check_params(self) -> np.dtype:
        if self.solver not in _SOLVERS:
            raise ValueError(f"solver must be one of {_SOLVERS}, got {self.solver!r}")
        if self.dtype not in ("float64", "float32"):
            raise ValueError(f"dtype must be 'float64' or 'float32', got {self.dtype!r}")
        for name in ("chunk_size", "feature_chunk_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        store = os.fspath(self.store)
        if store not in ("memory", "targets") and not store.endswith((".h5", ".hdf5")):
            raise ValueError(f"store must be 'memory', 'targets' or a path ending in .h5/.hdf5, got {store!r}")
        return np.dtype(self.dtype)

    @staticmethod
    def _check_alphas(alpha: Any, n_targets: int, what: str = "alpha") -> np.ndarray:
        a = np.asarray(alpha, dtype=np.float64)
        if a.ndim == 0:
            a = np.full(n_targets, float(a))
        if a.ndim != 1 or len(a) != n_targets:
            raise ValueError(f"{what} must be a number or one value per target ({n_targets}), got shape {a.shape}")
        if not (np.isfinite(a).all() and (a > 0).all()):
            raise ValueError(f"{what} must be positive and finite")
        return a

    # --------------------------------------------------------------------------- factorisations
    def _gram(self, X: np.ndarray, dtype: np.dtype) -> np.ndarray:
        """Upper triangle of ``Xc Xc^T`` (dual) or ``Xc^T Xc`` (primal), Fortran order, built in blocks."""
        n, p = X.shape
        mean = self.X_mean_.astype(dtype)
        step = int(self.feature_chunk_size)
        syrk = get_blas_funcs("syrk", dtype=dtype)
        if self.solver_ == "dual":
            gram = np.zeros((n, n), dtype=dtype, order="F")
            for a, b in _chunks(p, step):
                xj = np.asarray(X[:, a:b], dtype=dtype) - mean[a:b]  # [n, pc]
                gram = syrk(1.0, xj.T, beta=1.0, c=gram, trans=1, lower=0, overwrite_c=1)
        else:
            gram = np.zeros((p, p), dtype=dtype, order="F")
            for a, b in _chunks(n, step):
                xi = np.asarray(X[a:b], dtype=dtype) - mean  # [b, p]
                gram = syrk(1.0, xi.T, beta=1.0, c=gram, trans=0, lower=0, overwrite_c=1)
        return gram

    def _centred_rows_t(self, X: np.ndarray, dtype: np.dtype, right: np.ndarray | None = None) -> np.ndarray:
        """Primal: ``Xc^T`` ``[p, n]`` or ``(Xc right)^T`` when ``right`` is given, in row blocks."""
        n, p = X.shape
        mean = self.X_mean_.astype(dtype)
        out = np.empty((p if right is None else right.shape[1], n), dtype=dtype)
        for a, b in _chunks(n, int(self.feature_chunk_size)):
            xi = np.asarray(X[a:b], dtype=dtype) - mean  # [b, p]
            out[:, a:b] = xi.T if right is None else (xi @ right).T
        return out

    def _eigen(self, X: np.ndarray, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        """Eigendecompose the centred design: ``(eigvals [r], projector [r, n])``; sets the basis."""
        gram = self._gram(X, dtype)
        s, vecs = scipy.linalg.eigh(gram, lower=False, overwrite_a=True, check_finite=False, driver="evd")
        del gram
        self.eigvals_ = np.clip(s, 0.0, None)
        if self.solver_ == "dual":  # features k(x) V, projector V^T
            self.eigvecs_, self.basis_ = vecs, None
            return self.eigvals_, vecs.T
        self.eigvecs_, self.basis_ = None, vecs  # features x W, projector W^T Xc^T
        return self.eigvals_, self._centred_rows_t(X, dtype, vecs)

    def _cholesky(self, X: np.ndarray, dtype: np.dtype) -> None:
        """One Cholesky factor of ``gram + alpha I`` per distinct alpha (``factors_``)."""
        gram = self._gram(X, dtype)
        alphas = np.unique(self.alpha_)
        self.factors_ = {}
        for i, alpha in enumerate(alphas):
            g = gram if i == len(alphas) - 1 else gram.copy(order="F")  # the last one factorises in place
            g[np.diag_indices_from(g)] += dtype.type(alpha)
            self.factors_[float(alpha)] = scipy.linalg.cho_factor(g, lower=False, overwrite_a=True, check_finite=False)
        del gram
        # dual: features k(x), coefficients (K + aI)^-1 yc; primal: features x, coefficients (C + aI)^-1 Xc^T yc
        self.eigvecs_, self.basis_ = None, None
        self.projector_ = None if self.solver_ == "dual" else self._centred_rows_t(X, dtype)

    def _coef_chunk(self, yc: np.ndarray, alphas: np.ndarray) -> np.ndarray:
        """Coefficients ``[r, chunk]`` in the fitted feature space for centred targets ``yc``."""
        if self.method_ == "eigen":
            z = self.projector_ @ yc  # [r, chunk]
            return z / (self.eigvals_[:, None] + alphas[None, :]).astype(z.dtype)
        rhs = yc if self.projector_ is None else self.projector_ @ yc
        out = np.empty_like(rhs)
        for alpha in np.unique(alphas):
            cols = alphas == alpha
            out[:, cols] = scipy.linalg.cho_solve(self.factors_[float(alpha)], rhs[:, cols], check_finite=False)
        return out

    def _smoother(self, feats: np.ndarray, alpha: float) -> np.ndarray:
        """``[m, n]`` matrix mapping centred training targets to predictions at ``feats``."""
        if self.method_ == "eigen":
            return (feats / (self.eigvals_ + alpha).astype(feats.dtype)) @ self.projector_
        s = scipy.linalg.cho_solve(self.factors_[float(alpha)], feats.T, check_finite=False).T  # [m, r]
        return s if self.projector_ is None else s @ self.projector_

    def _open_store(self, r: int, t: int, dtype: np.dtype) -> Any:
        store = os.fspath(self.store)
        if store == "targets":
            return None
        if store == "memory":
            return np.empty((r, t), dtype=dtype)
        import h5py

        self._h5 = h5py.File(store, "w")
        return self._h5.create_dataset("coef", shape=(r, t), dtype=dtype, chunks=(r, min(t, self.chunk_size)))

    # ------------------------------------------------------------------------------------ fit
    def _prepare(self, X: Any, Y: Any) -> tuple[np.ndarray, Any, np.dtype]:
        dtype = self._check_params()
        X = check_array(X, dtype=[np.float64, np.float32], copy=False)
        n, p = X.shape
        if n < 2:
            raise ValueError(f"ridge needs at least 2 samples, got n_samples = {n}")
        Y, self._y_1d = _check_targets(Y, n)
        self.n_features_in_ = p
        self.n_targets_ = int(Y.shape[1])
        self.solver_ = ("dual" if n <= p else "primal") if self.solver == "auto" else self.solver
        self.X_mean_ = X.mean(axis=0, dtype=np.float64) if self.fit_intercept else np.zeros(p)
        self.y_mean_ = np.zeros(self.n_targets_)
        return X, Y, dtype

    def _target_chunks(self, Y: Any, dtype: np.dtype, desc: str) -> Iterator[tuple[int, int, np.ndarray]]:
        """Centred target chunks ``(a, b, Yc [n, b - a])``; records ``y_mean_``."""
        t = Y.shape[1]
        bar = tqdm(total=t, disable=not self.progress, desc=desc, unit="target")
        for a, b in _chunks(t, int(self.chunk_size)):
            yc = _read_columns(Y, a, b, dtype)
            if self.fit_intercept:
                self.y_mean_[a:b] = yc.mean(axis=0)
                yc -= self.y_mean_[a:b].astype(dtype)  # yc is a copy
            yield a, b, yc
            bar.update(b - a)
        bar.close()

    def fit(self, X: Any, Y: Any) -> MultiTargetRidge:
        """Fit on ``X [n, p]`` and targets ``Y [n, t]`` (or ``[n]``; array, memmap or h5py dataset)."""
        X, Y, dtype = self._prepare(X, Y)
        self.alpha_ = self._check_alphas(self.alpha, self.n_targets_)
        distinct = len(np.unique(self.alpha_))
        if self.method not in ("auto", "eigen", "cholesky"):
            raise ValueError(f"method must be 'auto', 'eigen' or 'cholesky', got {self.method!r}")
        self.method_ = self.method if self.method != "auto" else ("cholesky" if distinct <= 4 else "eigen")
        self.X_fit_ = X if self.solver_ == "dual" else None  # a reference, not a copy
        if self.method_ == "eigen":
            _, self.projector_ = self._eigen(X, dtype)
        else:
            self._cholesky(X, dtype)
        r = X.shape[0] if self.solver_ == "dual" else X.shape[1]
        coef_dtype = np.float32 if np.dtype(getattr(Y, "dtype", dtype)) == np.float32 else dtype
        out = self._open_store(r, self.n_targets_, coef_dtype)
        for a, b, yc in self._target_chunks(Y, dtype, "ridge fit"):
            if out is not None:
                out[:, a:b] = self._coef_chunk(yc, self.alpha_[a:b])
        self._finish(out, Y)
        return self

    def _finish(self, out: Any, Y: Any) -> None:
        self.coef_store_ = out
        self.targets_ = Y if out is None else None

    # -------------------------------------------------------------------------------- predict
    def _features(self, X: Any) -> np.ndarray:
        """Inputs in the coefficient space: ``[m, r]``."""
        check_is_fitted(self, "coef_store_")
        X = check_array(X, dtype=[np.float64, np.float32])
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, but {type(self).__name__} is expecting "
                             f"{self.n_features_in_} features as input")  # fmt: skip
        dtype = np.dtype(self.dtype)
        mean = self.X_mean_.astype(dtype)
        xc = X.astype(dtype, copy=False) - mean  # [m, p]
        if self.solver_ == "primal":
            return xc if self.basis_ is None else xc @ self.basis_
        kernel = np.zeros((len(xc), self.X_fit_.shape[0]), dtype=dtype)  # (x - mean) Xc^T, [m, n]
        for a, b in _chunks(self.n_features_in_, int(self.feature_chunk_size)):
            kernel += xc[:, a:b] @ (np.asarray(self.X_fit_[:, a:b], dtype=dtype) - mean[a:b]).T
        return kernel if self.eigvecs_ is None else kernel @ self.eigvecs_

    def _lift(self, c: np.ndarray) -> np.ndarray:
        """Coefficients ``[r, k]`` -> input-space weights ``[p, k]``."""
        if self.solver_ == "primal":
            return c if self.basis_ is None else self.basis_ @ c
        d = c if self.eigvecs_ is None else self.eigvecs_ @ c  # [n, k]
        dtype, mean = d.dtype, self.X_mean_.astype(d.dtype)
        out = np.empty((self.n_features_in_, d.shape[1]), dtype=dtype)
        for a, b in _chunks(self.n_features_in_, int(self.feature_chunk_size)):
            out[a:b] = (np.asarray(self.X_fit_[:, a:b], dtype=dtype) - mean[a:b]).T @ d
        return out

    def predict(self, X: Any, *, out: np.ndarray | None = None) -> np.ndarray:
        """Predict ``[m, n_targets]`` (``[m]`` for 1-D targets), target chunk by target chunk.

        Args:
            X: ``[m, p]`` inputs.
            out: optional preallocated ``[m, n_targets]`` array to write into (e.g. a float32
                memmap, so the predictions need not fit in memory twice).
        """
        feats = self._features(X)  # [m, r]
        m, t = feats.shape[0], self.n_targets_
        if out is None:
            out = np.empty((m, t), dtype=np.result_type(feats.dtype, getattr(self.coef_store_, "dtype", feats.dtype)))
        elif out.shape != (m, t):
            raise ValueError(f"out must have shape {(m, t)}, got {out.shape}")
        smoothers: dict[float, np.ndarray] = {}
        for a, b in _chunks(t, int(self.chunk_size)):
            if self.coef_store_ is not None:
                pred = feats @ np.asarray(self.coef_store_[:, a:b], dtype=feats.dtype)
            else:  # store="targets": smoother [m, n] per distinct alpha, applied to the training targets
                yc = _read_columns(self.targets_, a, b, feats.dtype)
                yc -= self.y_mean_[a:b].astype(feats.dtype)
                pred = np.empty((m, b - a), dtype=feats.dtype)
                for alpha in np.unique(self.alpha_[a:b]):
                    if alpha not in smoothers:
                        smoothers[alpha] = self._smoother(feats, alpha)
                    cols = self.alpha_[a:b] == alpha
                    pred[:, cols] = smoothers[alpha] @ yc[:, cols]
            out[:, a:b] = pred + self.y_mean_[a:b]
        return out[:, 0] if self._y_1d else out

    # ------------------------------------------------------------------------- primal weights
    @property
    def coef_(self) -> np.ndarray:
        """``[n_targets, p]`` weights (``[p]`` for 1-D targets), as sklearn's; built on demand.

        At NSD size this is the 11.5 GB matrix the chunked form avoids: use :meth:`predict`.
        """
        check_is_fitted(self, "coef_store_")
        t, p = self.n_targets_, self.n_features_in_
        dtype = np.dtype(self.dtype)
        coef = np.empty((t, p), dtype=dtype)
        for a, b in _chunks(t, int(self.chunk_size)):
            if self.coef_store_ is not None:
                c = np.asarray(self.coef_store_[:, a:b], dtype=dtype)
            else:
                c = self._coef_chunk(_read_columns(self.targets_, a, b, dtype) - self.y_mean_[a:b], self.alpha_[a:b])
            coef[a:b] = self._lift(c).T
        return coef[0] if self._y_1d else coef

    @property
    def intercept_(self) -> np.ndarray | float:
        """``[n_targets]`` intercepts (a float for 1-D targets)."""
        coef = np.atleast_2d(self.coef_)
        b = self.y_mean_ - coef @ self.X_mean_
        return float(b[0]) if self._y_1d else b


class MultiTargetRidgeCV(MultiTargetRidge):
    """:class:`MultiTargetRidge` with the penalty chosen by exact leave-one-out error.

    One eigendecomposition serves every alpha: with ``g(s, a) = -s / (a (s + a))`` (dual) or
    ``-1 / (a (s + a))`` (primal), the inverse of ``Xc Xc^T + a I`` restricted to centred vectors is
    ``Q^T diag(g) Q + (I - 11^T / n) / a``, whose product with the centred targets ``c`` and diagonal
    ``d`` give the leave-one-out residuals ``c_i / d_i`` (unpenalised intercept refitted without
    sample ``i``, as sklearn's ``RidgeCV`` with ``cv=None``). Each alpha costs one ``[n, r] x [r, chunk]``
    product per target chunk.

    Args:
        alphas: candidate penalties.
        alpha_per_target: choose the best alpha for each target separately (else the alpha with
            the lowest mean error over all targets).
        **kwargs: as :class:`MultiTargetRidge` (``alpha`` excluded).

    Attributes:
        cv_errors_: ``[n_alphas, n_targets]`` mean squared leave-one-out error.
        alpha_: ``[n_targets]`` chosen penalties.
    """

    def __init__(
        self,
        alphas: Sequence[float] | np.ndarray = (0.1, 1.0, 10.0),
        *,
        alpha_per_target: bool = False,
        fit_intercept: bool = True,
        solver: str = "auto",
        chunk_size: int = 4096,
        feature_chunk_size: int = 4096,
        dtype: str = "float64",
        store: str | os.PathLike[str] = "memory",
        progress: bool = False,
    ) -> None:
        self.fit_intercept = fit_intercept
        self.solver = solver
        self.chunk_size = chunk_size
        self.feature_chunk_size = feature_chunk_size
        self.dtype = dtype
        self.store = store
        self.progress = progress
        self.alphas = alphas
        self.alpha_per_target = alpha_per_target

    def fit(self, X: Any, Y: Any) -> MultiTargetRidgeCV:
        """Fit every alpha by leave-one-out, keep the best (per target or overall)."""
        X, Y, dtype = self._prepare(X, Y)
        alphas = np.asarray(self.alphas, dtype=np.float64).ravel()
        self._check_alphas(alphas, len(alphas), "alphas")
        n = X.shape[0]
        self.method_ = "eigen"
        self.X_fit_ = X if self.solver_ == "dual" else None
        s, projector = self._eigen(X, dtype)
        self.projector_ = projector
        if self.solver_ == "dual":
            g = -s[:, None] / (alphas * (s[:, None] + alphas))  # [r, A]
        else:
            g = -1.0 / (alphas * (s[:, None] + alphas))
        shift = (1.0 - 1.0 / n if self.fit_intercept else 1.0) / alphas  # [A]
        diag = np.zeros((n, len(alphas)))  # [n, A] diagonal of the restricted inverse
        for a, b in _chunks(len(s), int(self.feature_chunk_size)):
            diag += (projector[a:b].astype(np.float64) ** 2).T @ g[a:b]
        diag += shift
        coef_dtype = np.float32 if np.dtype(getattr(Y, "dtype", dtype)) == np.float32 else dtype
        out = self._open_store(len(s), self.n_targets_, coef_dtype)
        errors = np.empty((len(alphas), self.n_targets_))
        for a, b, yc in self._target_chunks(Y, dtype, "ridge cv"):
            z = projector @ yc  # [r, chunk]
            for k, alpha in enumerate(alphas):
                c = projector.T @ (g[:, k, None].astype(dtype) * z) + yc / dtype.type(alpha)  # [n, chunk]
                errors[k, a:b] = np.mean((c / diag[:, k, None]) ** 2, axis=0)
            if out is not None:
                out[:, a:b] = z
        self.cv_errors_ = errors
        if self.alpha_per_target:
            self.alpha_ = alphas[np.argmin(errors, axis=0)]
        else:
            self.alpha_ = np.full(self.n_targets_, alphas[np.argmin(errors.mean(axis=1))])
        if out is not None:  # second pass: projected targets -> eigen-coefficients
            for a, b in _chunks(self.n_targets_, int(self.chunk_size)):
                out[:, a:b] = np.asarray(out[:, a:b]) / (s[:, None] + self.alpha_[None, a:b]).astype(out.dtype)
        self._finish(out, Y)
        return self
