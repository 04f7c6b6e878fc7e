"""FID, KID, IS and precision/recall of a set of images against a reference, with every setting recorded.

One defaults table (:data:`DEFAULTS`) serves the Python API and ``decodelab eval fid``. The result
of :func:`compute_metrics` is ``{"metrics": {...}, "settings": {...}}`` where ``settings`` holds
everything needed to reproduce the numbers: the extractor and the sha256 of its weights, the resize
mode and input size, each metric's options, both sources and their sizes, and library versions.

The default protocol is the one of LlamaGen / ADM ImageNet tables: Inception 2015-12-05 pool3,
TF1-bilinear resize, IS on 10 contiguous splits of the unbiased logits, precision/recall with
``k = 3`` against the reference batch's features. Metric names carry the extractor when it is not
the standard Inception (e.g. ``"fid (efficientnet-lite0 features)"``), so a domain number is never
shown as FID.

Example:
    >>> res = compute_metrics("samples.npz", "VIRTUAL_imagenet256_labeled.npz",
    ...                       extractor_kwargs={"weights": "pt_inception-2015-12-05-6726825d.pth"},
    ...                       metrics=("fid", "is", "pr"))  # doctest: +SKIP
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from decodelab.eval.distributed import gather_features, world_info
from decodelab.eval.features import FeatureExtractor, FeatureSet, create_extractor, extract_features
from decodelab.eval.fid import feature_statistics, frechet_distance, kid
from decodelab.eval.images import ImageSource
from decodelab.eval.refstats import ReferenceStats, load_reference
from decodelab.eval.scores import inception_score, precision_recall

__all__ = ["DEFAULTS", "METRIC_NAMES", "compute_metrics", "metric_key", "metrics_from_features", "versions"]

METRIC_NAMES = ("fid", "kid", "is", "pr")
STANDARD_EXTRACTOR = "inception-2015-12-05"

#: Shared defaults of the API and the CLI (torch-fidelity's pattern).
DEFAULTS: dict[str, Any] = {
    "extractor": STANDARD_EXTRACTOR,
    "metrics": ("fid",),
    "batch_size": 50,
    "is_splits": 10,
    "is_shuffle_seed": None,
    "pr_k": 3,
    "kid_subsets": 100,
    "kid_subset_size": 1000,
    "kid_degree": 3,
    "kid_seed": 2020,  # torch-fidelity's rng_seed: the same subsets, the same KID
}


def metric_key(metric: str, extractor: str) -> str:
    """Result name of ``metric``: plain for the standard Inception, labelled with the network otherwise."""
    base = {"fid": "fid", "kid": "kid", "is": "inception_score"}[metric]
    return base if extractor == STANDARD_EXTRACTOR else f"{base} ({extractor} features)"


def versions() -> dict[str, str]:
    """Library versions that can change numbers."""
    from importlib.metadata import PackageNotFoundError, version

    import scipy

    try:
        ours = version("decodelab")
    except PackageNotFoundError:  # running from a source tree that is not installed
        ours = "unknown"
    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
           "scipy": scipy.__version__, "decodelab": ours}  # fmt: skip
    try:
        from importlib.metadata import version

        out["torch-fidelity"] = version("torch-fidelity")
    except Exception:  # noqa: BLE001 - optional
        pass
    return out


def _check_metrics(metrics: Sequence[str]) -> tuple[str, ...]:
    metrics = tuple(dict.fromkeys(m.strip().lower() for m in metrics if m.strip()))
    bad = [m for m in metrics if m not in METRIC_NAMES]
    if bad or not metrics:
        raise ValueError(f"unknown metric(s) {bad or metrics!r}; choose from {', '.join(METRIC_NAMES)}")
    return metrics


def metrics_from_features(
    samples: FeatureSet,
    reference: ReferenceStats | None,
    metrics: Sequence[str] = ("fid",),
    *,
    extractor: str = STANDARD_EXTRACTOR,
    **options: Any,
) -> dict[str, float]:
    """Metrics of sample features against reference statistics (pure; no network).

    Args:
        samples: generated-image features (and logits for IS).
        reference: reference statistics; ``None`` is allowed when only ``"is"`` is asked.
        metrics: any of ``fid``, ``kid``, ``is``, ``pr``.
        extractor: extractor name, used to label the results.
        **options: keys of :data:`DEFAULTS` (``is_splits``, ``pr_k``, ``kid_subsets`` ...).

    Raises:
        ValueError: unknown metric or option, missing logits / reference features.
    """
    metrics = _check_metrics(metrics)
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)}; known: {', '.join(DEFAULTS)}")
    o = {**DEFAULTS, **options}
    if reference is None and any(m != "is" for m in metrics):
        raise ValueError("a reference is needed for fid, kid and pr")
    out: dict[str, float] = {}
    if "fid" in metrics:
        out[metric_key("fid", extractor)] = frechet_distance(*feature_statistics(samples.pool), reference.mu,
                                                             reference.sigma)  # fmt: skip
    if "kid" in metrics or "pr" in metrics:
        if reference.features is None:
            raise ValueError("kid and pr need reference features, but the reference holds only mu/sigma")
    if "kid" in metrics:
        mean, std = kid(samples.pool, reference.features, subsets=o["kid_subsets"], subset_size=o["kid_subset_size"],
                        degree=o["kid_degree"], seed=o["kid_seed"])  # fmt: skip
        out[metric_key("kid", extractor)] = mean
        out[metric_key("kid", extractor) + " std"] = std
    if "is" in metrics:
        if samples.logits is None:
            raise ValueError(f"the {extractor} extractor has no classifier logits: the inception score is undefined")
        mean, std = inception_score(samples.logits, splits=o["is_splits"], shuffle_seed=o["is_shuffle_seed"])
        out[metric_key("is", extractor)] = mean
        out[metric_key("is", extractor) + " std"] = std
    if "pr" in metrics:
        p, r = precision_recall(reference.features, samples.pool, k=o["pr_k"])
        suffix = "" if extractor == STANDARD_EXTRACTOR else f" ({extractor} features)"
        out["precision" + suffix], out["recall" + suffix] = p, r
    return out


def compute_metrics(
    samples: Any,
    reference: str | ReferenceStats | None,
    *,
    extractor: str | FeatureExtractor = DEFAULTS["extractor"],
    extractor_kwargs: dict[str, Any] | None = None,
    metrics: Sequence[str] = DEFAULTS["metrics"],
    batch_size: int = DEFAULTS["batch_size"],
    use_cache: bool = True,
    progress: bool = True,
    **options: Any,
) -> dict[str, Any] | None:
    """Extract features of ``samples`` (split across ``torchrun`` ranks) and score them.

    Args:
        samples: anything :class:`~decodelab.eval.images.ImageSource` reads (folder of PNGs,
            ADM ``.npz``, arrays, PIL images, an iterable of batches) or a :class:`FeatureSet`.
        reference: see :func:`~decodelab.eval.refstats.load_reference`, or ready statistics.
        extractor: registered name (``decodelab.registry.EXTRACTORS``) or an extractor.
        extractor_kwargs: e.g. ``{"weights": PATH, "resize_mode": "tf1-bilinear"}``.
        metrics: any of ``fid``, ``kid``, ``is``, ``pr``.
        batch_size: images per forward pass.
        use_cache: cache reference statistics on disk.
        progress: progress bars (rank 0 only).
        **options: metric options (keys of :data:`DEFAULTS`).

    Returns:
        ``{"metrics", "settings"}`` on rank 0; ``None`` on other ranks.
    """
    metrics = _check_metrics(metrics)
    rank, world = world_info()
    progress = progress and rank == 0
    if isinstance(extractor, FeatureExtractor):
        ext = extractor
    else:
        ext = create_extractor(extractor, **(extractor_kwargs or {}))
    if isinstance(samples, FeatureSet):
        feats, sample_desc = samples, {"kind": "features", "num_images": len(samples)}
    else:
        src = ImageSource(samples)
        part = extract_features(ext, src.batches(batch_size, rank, world), total=src.share(rank, world),
                                progress=progress, desc="sample features")  # fmt: skip
        feats = gather_features(part)
        sample_desc = src.describe()
    if rank != 0:
        return None
    if len(feats) < 2:
        raise ValueError(f"need at least 2 samples, got {len(feats)}")
    need_ref = any(m != "is" for m in metrics)
    if isinstance(reference, ReferenceStats) or not need_ref:
        ref = reference if isinstance(reference, ReferenceStats) else None
    else:
        if reference is None:
            raise ValueError("a reference is needed for fid, kid and pr")
        ref = load_reference(reference, ext, need_features=("kid" in metrics or "pr" in metrics),
                             use_cache=use_cache, batch_size=batch_size, progress=progress)  # fmt: skip
    values = metrics_from_features(feats, ref, metrics, extractor=ext.name, **options)
    settings = {
        **ext.settings(),
        "standard_protocol": ext.name == STANDARD_EXTRACTOR
        and ext.weights_sha256 is not None
        and ext.weights_sha256.startswith("6726825d"),
        "metrics": list(metrics),
        "options": {**DEFAULTS, **options, "metrics": list(metrics), "extractor": ext.name},
        "num_samples": len(feats),
        "samples": sample_desc,
        "reference": None if ref is None else {**ref.source, "num_images": ref.n},
        "batch_size": batch_size,
        "world_size": world,
        "versions": versions(),
    }
    return {"metrics": values, "settings": settings}
