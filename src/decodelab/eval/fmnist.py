"""Domain metrics for the Fashion-MNIST world: class accuracy and FID on a small CNN classifier's features.

The standard FID network (TF Inception-v3 of 2015-12-05) is not available offline and is a poor
judge of 32x32 grey clothing anyway, so the ``fmnist`` world is scored with decodelab's own
classifier (:class:`decodelab.vision.models.fmnist_classifier.FMNISTClassifier`, trained by decodelab on
the Fashion-MNIST train split and shipped in ``decodelab/assets/fmnist-classifier/``):

- **"class_accuracy (fmnist classifier)"**: how often the classifier recognises the class an image
  was generated for;
- **"fid (fmnist features)"**: the Fréchet distance (:mod:`decodelab.eval.fid`) between the
  classifier's penultimate features of the generated images and of the real test split.

Both are domain metrics: they are not comparable with Inception FID or ImageNet accuracy, and
they are always labelled as such.

Reference statistics of real splits are cached under
``decodelab.hub.default_cache_dir() / "fid_stats"`` (never inside the package), keyed by dataset,
split, image size and the sha256 of the classifier's weights file, so retraining the classifier
can never reuse stale statistics.

Example:
    >>> from decodelab.eval import fmnist
    >>> scores = fmnist.evaluate_generated(images, conds)  # doctest: +SKIP
    >>> floor = fmnist.noise_floor_fid(len(images))  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from decodelab.datasets.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist
from decodelab.eval.fid import feature_statistics, fid_from_features, frechet_distance
from decodelab.hub import default_cache_dir
from decodelab.registry import register_metric
from decodelab.vision.models.fmnist_classifier import DEFAULT_CLASSIFIER_DIR, FMNISTClassifier, load_classifier

__all__ = [
    "ACCURACY_KEY",
    "DEFAULT_CLASSIFIER_DIR",
    "FID_KEY",
    "FMNISTClassifier",
    "FMNISTDomainMetrics",
    "class_accuracy",
    "domain_fid",
    "evaluate_generated",
    "features",
    "load_classifier",
    "noise_floor_fid",
    "predict",
    "preprocess",
    "reference_statistics",
    "stats_cache_path",
    "subset_indices",
    "weights_sha256",
]

ACCURACY_KEY = "class_accuracy (fmnist classifier)"
FID_KEY = "fid (fmnist features)"


def weights_sha256(model: nn.Module) -> str:
    """sha256 identifying the classifier's weights.

    For a classifier read by :func:`load_classifier` it is the sha256 of its ``model.safetensors``
    file; for one in memory, the sha256 of the bytes ``save_pretrained`` would write (the same
    value once saved).
    """
    known = getattr(model, "weights_sha256", None)
    if isinstance(known, str):
        return known
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    return hashlib.sha256(safetensors_bytes(state, metadata={"format": "pt"})).hexdigest()


def _resolve(classifier: FMNISTClassifier | str | os.PathLike[str] | None) -> FMNISTClassifier:
    if isinstance(classifier, nn.Module):
        return classifier  # type: ignore[return-value]
    return load_classifier(classifier)


# ------------------------------------------------------------------------------------ preprocessing
def _to_grey_float(x: Tensor, value_range: tuple[float, float]) -> Tensor:
    """``[N, C, H, W]`` (C in 1, 3, 4) uint8 or float -> grey float ``[N, 1, H, W]`` in [-1, 1]."""
    if x.dtype == torch.uint8:
        x = x.float() / 127.5 - 1.0
    else:
        lo, hi = value_range
        x = (x.float() - lo) / (hi - lo) * 2.0 - 1.0
    c = x.shape[1]
    if c == 4:  # drop alpha
        x, c = x[:, :3], 3
    if c == 3:  # ITU-R 601 luma, as PIL's convert("L")
        x = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]
    elif c != 1:
        raise ValueError(f"images must have 1, 3 or 4 channels, got {c}")
    return x


def _batch_from_array(a: np.ndarray | Tensor) -> Tensor:
    """An array/tensor as ``[N, C, H, W]`` (see :func:`preprocess` for the accepted layouts)."""
    t = torch.from_numpy(np.array(a)) if isinstance(a, np.ndarray) else a.detach().cpu()
    channels_last = isinstance(a, np.ndarray)
    if t.ndim == 2:
        return t[None, None]
    if t.ndim == 3:
        return t[:, None]
    if t.ndim == 4:
        if channels_last and t.shape[-1] in (1, 3, 4):
            return t.permute(0, 3, 1, 2)
        if t.shape[1] in (1, 3, 4):
            return t
    raise ValueError(
        f"cannot read images of shape {tuple(t.shape)}: use [H, W], [N, H, W], numpy [N, H, W, C] or "
        "torch [N, C, H, W] with C in 1, 3, 4"
    )


def _frame(x: Tensor, size: int) -> Tensor:
    """Raw 28x28 -> padded by 2 px of background (-1) to 32 (then resized if ``size != 32``);
    any other size -> resized to ``size`` (bilinear, antialiased)."""
    if x.shape[-2:] == (28, 28):
        x = F.pad(x, (2, 2, 2, 2), value=-1.0)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.clamp_(-1.0, 1.0)


def preprocess(images: Any, image_size: int = 32, value_range: tuple[float, float] = (-1.0, 1.0)) -> Tensor:
    """Convert images to the classifier's input: float32 ``[N, 1, image_size, image_size]`` in [-1, 1].

    Accepted inputs:

    - a PIL image or a sequence of PIL images (any mode; converted to grey, ``"L"``);
    - numpy arrays: ``[H, W]`` (one image), ``[N, H, W]`` (grey batch) or ``[N, H, W, C]``;
    - torch tensors: ``[H, W]``, ``[N, H, W]`` or ``[N, C, H, W]``;
    - a sequence of the above (each converted separately, then concatenated).

    ``uint8`` values are read as 0..255; float values as ``value_range`` (default [-1, 1], the
    range of decodelab's datasets and generators). RGB is reduced to grey with ITU-R 601 luma.

    Geometry: 28x28 images are taken as raw Fashion-MNIST and padded by 2 px of background to
    32x32, exactly as ``FashionMNIST(image_size=32)``; images of any other size are taken as the
    whole 32x32 frame (e.g. generated images) and resized to ``image_size`` (bilinear, antialiased).

    Raises:
        ValueError: on an empty input or an unreadable shape / type.
    """
    if isinstance(images, Image.Image):
        images = [images]
    if isinstance(images, (np.ndarray, Tensor)):
        parts = [_to_grey_float(_batch_from_array(images), value_range)]
    elif isinstance(images, Sequence) and not isinstance(images, (str, bytes)):
        if len(images) == 0:
            raise ValueError("no images given")
        parts = []
        for im in images:
            if isinstance(im, Image.Image):
                arr = torch.from_numpy(np.asarray(im.convert("L"), dtype=np.uint8).copy())[None, None]
                parts.append(_to_grey_float(arr, value_range))
            elif isinstance(im, (np.ndarray, Tensor)):
                parts.append(_to_grey_float(_batch_from_array(im), value_range))
            else:
                raise ValueError(f"cannot read an image of type {type(im).__name__}")
    else:
        raise ValueError(f"cannot read images of type {type(images).__name__}")
    out = [_frame(p, image_size) for p in parts]
    if len({tuple(o.shape[1:]) for o in out}) != 1:  # pragma: no cover - _frame fixes the size
        raise ValueError("images could not be brought to one size")
    x = torch.cat(out).float()
    if x.shape[0] == 0:
        raise ValueError("no images given")
    return x.contiguous()


# -------------------------------------------------------------------------------------- inference
@torch.inference_mode()
def _run(model: FMNISTClassifier, x: Tensor, fn: str, batch_size: int) -> Tensor:
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].to(device).contiguous(memory_format=torch.channels_last)  # [b, 1, S, S]
        out.append(getattr(model, fn)(xb).float().cpu())
    return torch.cat(out)


def features(images: Any, classifier: Any = None, batch_size: int = 500) -> np.ndarray:
    """Penultimate classifier features of ``images`` (see :func:`preprocess`): float64 ``[N, D]``."""
    model = _resolve(classifier)
    x = preprocess(images, image_size=model.image_size)
    return _run(model, x, "features", batch_size).double().numpy()


def predict(images: Any, classifier: Any = None, batch_size: int = 500) -> np.ndarray:
    """Predicted class ids ``[N]`` (int64) of ``images``."""
    model = _resolve(classifier)
    x = preprocess(images, image_size=model.image_size)
    return _run(model, x, "forward", batch_size).argmax(1).numpy()


def _label_ids(labels: Any) -> np.ndarray:
    out = []
    for lab in np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels, dtype=object).reshape(-1):
        if isinstance(lab, str):
            if lab not in FASHION_MNIST_CLASSES:
                raise ValueError(f"unknown Fashion-MNIST class {lab!r}; classes: {', '.join(FASHION_MNIST_CLASSES)}")
            out.append(FASHION_MNIST_CLASSES.index(lab))
        else:
            out.append(int(lab))
    return np.asarray(out, dtype=np.int64)


def class_accuracy(images: Any, labels: Any, classifier: Any = None) -> float:
    """Fraction of ``images`` the classifier assigns to ``labels`` (class ids 0..9 or class names)."""
    ids = _label_ids(labels)
    pred = predict(images, classifier)
    if len(pred) != len(ids):
        raise ValueError(f"{len(pred)} images but {len(ids)} labels")
    return float((pred == ids).mean())


def domain_fid(images_a: Any, images_b: Any, classifier: Any = None) -> float:
    """The "FID (fmnist features)" of two image sets: Fréchet distance of their classifier features.

    Biased upward for small sets; compare sets of equal size (see :func:`noise_floor_fid`).
    """
    model = _resolve(classifier)
    return fid_from_features(features(images_a, model), features(images_b, model))


# ------------------------------------------------------------------------------ reference stats
def stats_cache_path(
    dataset: str,
    split: str,
    extractor_sha256: str,
    image_size: int,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """File of the cached reference statistics for one (dataset, split, extractor, image size)."""
    for name, value in (("dataset", dataset), ("split", split), ("extractor_sha256", extractor_sha256)):
        if not value or any(c in value for c in "/\\ ") or value.startswith("."):
            raise ValueError(f"invalid {name} {value!r} for a cache key")
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir() / "fid_stats"
    return root / f"{dataset}-{split}-{int(image_size)}px-{extractor_sha256}.npz"


def reference_statistics(
    split: str = "test",
    classifier: Any = None,
    root: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    refresh: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Feature mean and covariance of a whole real Fashion-MNIST split, cached on disk.

    Args:
        split: ``"train"`` or ``"test"``.
        classifier: a classifier, its directory, or ``None`` for the shipped one.
        root: Fashion-MNIST data folder (``None``: the standard search path).
        cache_dir: folder of the cache (``None``: ``default_cache_dir() / "fid_stats"``).
        refresh: recompute even when cached.

    Returns:
        ``(mu, sigma)`` in float64.
    """
    model = _resolve(classifier)
    sha = weights_sha256(model)
    path = stats_cache_path("fashion_mnist", split, sha, model.image_size, cache_dir)
    try:
        images, _ = load_fashion_mnist(split, root)
    except FileNotFoundError:
        # no data here: fall back to the statistics shipped next to the classifier, which were
        # computed from the full split by `write_shipped_statistics` for exactly these weights
        shipped = shipped_statistics_path(split, sha)
        if shipped.is_file() and not refresh:
            with np.load(shipped) as z:
                return z["mu"].copy(), z["sigma"].copy()
        raise
    if path.is_file() and not refresh:
        try:
            with np.load(path) as z:
                if int(z["n"]) == len(images):
                    return z["mu"].copy(), z["sigma"].copy()
        except (OSError, ValueError, KeyError):
            pass  # unreadable or foreign file: recompute and overwrite
    mu, sigma = feature_statistics(features(images, model))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
    np.savez(tmp, mu=mu, sigma=sigma, n=np.int64(len(images)))
    os.replace(tmp, path)
    return mu, sigma


def shipped_statistics_path(split: str, sha256: str) -> Path:
    """Where the classifier asset keeps the reference statistics of a real split (keyed by weights)."""
    return DEFAULT_CLASSIFIER_DIR / f"fid_stats-fashion_mnist-{split}-{sha256[:16]}.npz"


def write_shipped_statistics(split: str = "test", root: str | os.PathLike[str] | None = None) -> Path:
    """Compute the full-split statistics with the shipped classifier and store them in its asset folder."""
    model = _resolve(None)
    images, _ = load_fashion_mnist(split, root)
    mu, sigma = feature_statistics(features(images, model))
    path = shipped_statistics_path(split, weights_sha256(model))
    np.savez(path, mu=mu, sigma=sigma, n=np.int64(len(images)))
    return path


def noise_floor_fid(
    n: int,
    seed: int = 0,
    classifier: Any = None,
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
) -> float:
    """The "FID (fmnist features)" of ``n`` random *real* images against the test split's statistics.

    This is the value a perfect generator would get with ``n`` samples: FID is biased upward for
    small ``n``, so generated-image FIDs must be read next to this floor. The subset is drawn from
    the train split by default, so it is, like generated images, independent of the reference.
    """
    model = _resolve(classifier)
    images, _ = load_fashion_mnist(split, root)
    idx = subset_indices(len(images), n, seed)
    mu, sigma = feature_statistics(features(images[idx], model))
    return frechet_distance(mu, sigma, *reference_statistics("test", model, root))


def subset_indices(num_items: int, n: int, seed: int) -> np.ndarray:
    """The sorted random subset of ``n`` of ``num_items`` items used by :func:`noise_floor_fid`."""
    if not 2 <= n <= num_items:
        raise ValueError(f"n must be between 2 and the {num_items} images of the split, got {n}")
    return np.sort(np.random.default_rng(seed).choice(num_items, n, replace=False))


def evaluate_generated(images: Any, conds: Sequence[Any] | None, classifier: Any = None) -> dict[str, float]:
    """Domain metrics of generated Fashion-MNIST images.

    Args:
        images: generated images (PIL images, arrays or tensors; see :func:`preprocess`).
        conds: the class each image was generated for (ids or names); ``None`` skips accuracy.
        classifier: a classifier, its directory, or ``None`` for the shipped one.

    Returns:
        ``{"class_accuracy (fmnist classifier)": ..., "fid (fmnist features)": ...}``. FID compares
        the images with the cached statistics of the real test split (NaN for fewer than 2
        images). With few images FID is biased upward: read it next to
        ``noise_floor_fid(len(images))``, the FID of an equally large random real subset.
        Returns ``{}`` (with a warning) when the shipped classifier is not installed; the FID is
        left out (with a warning) when the Fashion-MNIST test split is not found.
    """
    try:
        model = _resolve(classifier)
    except FileNotFoundError as e:
        if classifier is not None:
            raise
        warnings.warn(f"fmnist domain metrics skipped: {e}", stacklevel=2)
        return {}
    x = preprocess(images, image_size=model.image_size)
    feats = _run(model, x, "features", 500).double().numpy()
    out: dict[str, float] = {}
    if conds is not None:
        ids = _label_ids(conds)
        if len(ids) != len(x):
            raise ValueError(f"{len(x)} images but {len(ids)} conditions")
        pred = _run(model, x, "forward", 500).argmax(1).numpy()
        out[ACCURACY_KEY] = float((pred == ids).mean())
    if len(feats) < 2:
        out[FID_KEY] = float("nan")
        return out
    try:
        ref = reference_statistics("test", model)
    except FileNotFoundError as e:
        warnings.warn(f"{FID_KEY} skipped: {e}", stacklevel=2)
        return out
    out[FID_KEY] = frechet_distance(*feature_statistics(feats), *ref)
    return out


@register_metric("fmnist_domain", kind="domain")
class FMNISTDomainMetrics:
    """Class accuracy and FID on the Fashion-MNIST classifier's features (domain metrics).

    Args:
        classifier: directory of a trained classifier (``None``: the shipped one).

    Calling the metric with ``(images, conds)`` returns :func:`evaluate_generated`'s dict.
    """

    def __init__(self, classifier: str | None = None) -> None:
        self.classifier = classifier

    def __call__(self, images: Any, conds: Sequence[Any] | None) -> dict[str, float]:
        return evaluate_generated(images, conds, classifier=self.classifier)

    def __repr__(self) -> str:
        return f"FMNISTDomainMetrics(classifier={self.classifier!r})"
