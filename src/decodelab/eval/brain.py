"""NSD image-reconstruction metrics: PixCorr, SSIM, 2-way identification, correlation distances, retrieval.

The definitions follow MindEye's evaluation (MedARC-AI/fMRI-reconstruction-NSD
``src/Reconstruction_Metrics.py``, identical in MindEyeV2 ``src/final_evaluations.ipynb``) and
Brain-Diffuser's (ozcelikfu/brain-diffuser ``scripts/eval_extract_features.py`` +
``scripts/evaluate_reconstruction.py``), read for their definitions only:

===============  ==========================================  ==========================================
metric           ``protocol="mindeye"``                      ``protocol="brain-diffuser"``
===============  ==========================================  ==========================================
``pixcorr``      both images resized to 425 (torch bilinear  reconstruction resized to 425 (PIL
                 without antialias), flattened RGB, Pearson  bicubic), ground truth native, Pearson r
``ssim``         425, ``rgb2gray``, skimage SSIM (Gaussian   same
                 sigma 1.5, population covariance,
                 ``data_range=1``)
``alexnet2/5``   torchvision AlexNet ``features.4`` /        same nodes, input 224
                 ``features.11``, input 256, ImageNet norm
``inception``    torchvision Inception-v3 ``avgpool``, 342   ``avgpool``, 224
``clip``         CLIP ViT-L/14 image embedding, 224, CLIP    same
                 mean/std
``effnet``       EfficientNet-B1 ``avgpool``, 255: mean      ``avgpool``, 224
                 correlation distance (lower is better)
``swav``         SwAV ResNet-50 ``avgpool``, 224: mean       same
                 correlation distance
===============  ==========================================  ==========================================

The four identification metrics are 2-way: for each reconstruction, the fraction of the other
ground-truth images whose features correlate less with it than its own ground truth does
(:func:`two_way_identification`; chance 50%). Network inputs are resized with torch bilinear
(no antialias) in both protocols; Brain-Diffuser's exact filter for the feature networks is not
recorded in the notes this was written from, so its network numbers may differ in the third digit.

300-way retrieval (:func:`retrieval_top1`, MindEye 1/2) compares brain-predicted embeddings with
image embeddings by cosine similarity on random 300-image subsets, both directions.

Every network is injectable (:class:`FeatureNetwork` around any callable) and the standard ones
load from local files only (:func:`standard_networks`): a missing file raises
``FileNotFoundError`` naming it and where to get it. Nothing is downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from decodelab.eval.assets import weights_dir
from decodelab.eval.resize import resize_images

__all__ = [
    "bootstrap_ci",
    "two_way_per_reconstruction",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "METRICS",
    "PROTOCOLS",
    "FeatureNetwork",
    "correlation_distance",
    "evaluate_reconstructions",
    "load_swav_resnet50",
    "pixcorr",
    "retrieval_top1",
    "row_correlation",
    "ssim",
    "standard_networks",
    "two_way_identification",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: metric -> (kind, network key); kinds: "pixel", "two_way" (higher is better), "distance" (lower).
METRICS: dict[str, tuple[str, str | None]] = {
    "pixcorr": ("pixel", None),
    "ssim": ("pixel", None),
    "alexnet2": ("two_way", "alexnet2"),
    "alexnet5": ("two_way", "alexnet5"),
    "inception": ("two_way", "inception"),
    "clip": ("two_way", "clip"),
    "effnet": ("distance", "effnet"),
    "swav": ("distance", "swav"),
}


@dataclass(frozen=True)
class Protocol:
    """Resize choices of one published evaluation.

    Attributes:
        pixel_size: side for PixCorr / SSIM.
        pixel_resize: resize mode (:mod:`decodelab.eval.resize`) of the pixel metrics.
        resize_ground_truth: resize the ground truth too for the pixel metrics (else it must
            already be ``pixel_size``, as NSD's 425 x 425 stimuli are).
        network_size: input side per network key.
        network_resize: resize mode of the network inputs.
    """

    pixel_size: int
    pixel_resize: str
    resize_ground_truth: bool
    network_size: Mapping[str, int]
    network_resize: str = "pytorch-bilinear"


PROTOCOLS: dict[str, Protocol] = {
    "mindeye": Protocol(425, "pytorch-bilinear", True,
                        {"alexnet2": 256, "alexnet5": 256, "inception": 342, "clip": 224, "effnet": 255, "swav": 224}),
    "brain-diffuser": Protocol(425, "pil-bicubic", False,
                               {"alexnet2": 224, "alexnet5": 224, "inception": 224, "clip": 224, "effnet": 224,
                                "swav": 224}),
}  # fmt: skip


# ------------------------------------------------------------------------------------ pure maths
def _row_standardise(x: np.ndarray, constant: str = "raise") -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    if (norm == 0).any():
        if constant == "raise":
            raise ValueError("a feature vector is constant: its correlation is undefined")
        norm = np.where(norm > 0, norm, 1.0)  # a constant row becomes zeros: it correlates 0 with anything
    return x / norm


def _paired(real: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    real = np.asarray(real).reshape(len(real), -1)
    pred = np.asarray(pred).reshape(len(pred), -1)
    if real.shape != pred.shape:
        raise ValueError(f"ground-truth and reconstruction features differ in shape: {real.shape} vs {pred.shape}")
    if len(real) < 2:
        raise ValueError(f"need at least 2 images, got {len(real)}")
    return real, pred


def two_way_identification(real: np.ndarray, pred: np.ndarray) -> float:
    """2-way identification accuracy of ``pred`` against ``real`` features (``[N, ...]`` each).

    ``r[i, j]`` is the Pearson correlation of ground truth ``i`` with reconstruction ``j``; a
    reconstruction wins against ground truth ``i != j`` when ``r[i, j] < r[j, j]``. The score is the
    mean over reconstructions of ``wins / (N - 1)`` (MindEye's and Brain-Diffuser's
    ``np.corrcoef(real, pred)[:N, N:]`` protocol; equal to it, computed without the ``2N x 2N`` matrix).
    """
    return float(np.mean(two_way_per_reconstruction(real, pred)))


def two_way_per_reconstruction(real: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Each reconstruction's share of won comparisons (``[N]``); :func:`two_way_identification` is the mean."""
    real, pred = _paired(real, pred)
    r = _row_standardise(real) @ _row_standardise(pred).T  # [N, N] rows: ground truth, cols: recon
    congruent = np.diag(r)
    wins = (r < congruent[None, :]).sum(axis=0)
    return wins / (len(r) - 1)


def bootstrap_ci(
    values: np.ndarray, *, level: float = 0.95, n_boot: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-image ``values`` (images resampled with replacement).

    Used for the uncertainty of a test-set mean such as 2-way identification over the test images
    (per-image scores from :func:`two_way_per_reconstruction`); deterministic for a given ``seed``.
    """
    values = np.asarray(values, np.float64).ravel()
    if values.size == 0 or not 0 < level < 1:
        raise ValueError(f"need values and a level in (0, 1), got {values.size} values and level {level}")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, (n_boot, values.size))].mean(axis=1)
    lo, hi = np.percentile(means, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def correlation_distance(real: np.ndarray, pred: np.ndarray) -> float:
    """Mean over pairs of ``1 - pearson(real_i, pred_i)`` (``scipy.spatial.distance.correlation``)."""
    real, pred = _paired(real, pred)
    return float(np.mean(1.0 - np.sum(_row_standardise(real) * _row_standardise(pred), axis=1)))


def row_correlation(a: np.ndarray, b: np.ndarray, *, constant: str = "raise") -> np.ndarray:
    """Pearson correlation of each flattened row of ``a`` with the same row of ``b`` (``[N]``).

    ``constant``: what a constant row gets — ``"raise"`` (undefined: a ``ValueError``) or ``"zero"``
    (a correlation of 0, e.g. to score an all-black candidate image as uninformative).
    """
    if constant not in ("raise", "zero"):
        raise ValueError(f"constant must be 'raise' or 'zero', got {constant!r}")
    a = np.asarray(a).reshape(len(a), -1)
    b = np.asarray(b).reshape(len(b), -1)
    if a.shape != b.shape:
        raise ValueError(f"rows differ in shape: {a.shape} vs {b.shape}")
    return np.sum(_row_standardise(a, constant) * _row_standardise(b, constant), axis=1)


def pixcorr(real: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Per-image Pearson correlation of flattened pixels (``[N]``); PixCorr is its mean."""
    if np.shape(real) != np.shape(pred):
        raise ValueError(f"images differ in shape: {np.shape(real)} vs {np.shape(pred)}")
    return row_correlation(real, pred)


def ssim(real: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Per-image SSIM of grey images ``[N, 3, H, W]`` in [0, 1] (``[N]``), MindEye's settings."""
    from skimage.color import rgb2gray
    from skimage.metrics import structural_similarity

    if real.shape != pred.shape or real.ndim != 4 or real.shape[1] != 3:
        raise ValueError(f"expected two [N, 3, H, W] batches of one shape, got {real.shape} and {pred.shape}")
    out = np.empty(len(real))
    for i in range(len(real)):
        g = rgb2gray(np.moveaxis(np.asarray(real[i], np.float64), 0, -1))
        p = rgb2gray(np.moveaxis(np.asarray(pred[i], np.float64), 0, -1))
        out[i] = structural_similarity(p, g, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                       data_range=1.0)  # fmt: skip
    return out


def retrieval_top1(brain: np.ndarray | Tensor, image: np.ndarray | Tensor, *, n_way: int = 300, n_draws: int = 30,
                   seed: int = 0) -> dict[str, float]:  # fmt: skip
    """MindEye's 300-way top-1 retrieval, both directions, averaged over random subsets.

    For each draw, ``n_way`` test items are chosen at random; embeddings are flattened and
    L2-normalised, and ``S = brain @ image^T`` is their cosine similarity. Forward (image
    retrieval, brain -> image): row ``i`` of ``S`` peaks at column ``i``; backward (brain retrieval):
    column ``i`` peaks at row ``i``. Ties count as misses.

    Args:
        brain: ``[N, ...]`` embeddings predicted from brain activity.
        image: ``[N, ...]`` embeddings of the seen images, same order.
        n_way: subset size (300 in MindEye 1 and 2).
        n_draws: random subsets averaged (30 in MindEye 2).
        seed: subset draw seed.

    Returns:
        ``{"fwd": accuracy, "bwd": accuracy, "fwd_std": ..., "bwd_std": ...}`` (fractions; std over draws).
    """
    b = torch.as_tensor(np.asarray(brain), dtype=torch.float64).flatten(1)
    i = torch.as_tensor(np.asarray(image), dtype=torch.float64).flatten(1)
    if b.shape != i.shape:
        raise ValueError(f"brain and image embeddings differ in shape: {tuple(b.shape)} vs {tuple(i.shape)}")
    if not 2 <= n_way <= len(b):
        raise ValueError(f"n_way must be in 2..{len(b)} (the number of items), got {n_way}")
    b = nn.functional.normalize(b, dim=1)
    i = nn.functional.normalize(i, dim=1)
    rng = np.random.default_rng(seed)
    fwd, bwd = [], []
    for _ in range(n_draws):
        idx = torch.as_tensor(rng.choice(len(b), size=n_way, replace=False))
        s = b[idx] @ i[idx].T  # [n_way, n_way]
        diag = torch.diagonal(s)
        fwd.append(float(((s < diag[:, None]).sum(1) == n_way - 1).double().mean()))
        bwd.append(float(((s < diag[None, :]).sum(0) == n_way - 1).double().mean()))
    return {"fwd": float(np.mean(fwd)), "bwd": float(np.mean(bwd)), "fwd_std": float(np.std(fwd)),
            "bwd_std": float(np.std(bwd))}  # fmt: skip


# ------------------------------------------------------------------------------------- networks
@dataclass
class FeatureNetwork:
    """A feature network for one metric: normalised images ``[B, 3, S, S]`` -> features ``[B, ...]``.

    Attributes:
        module: any callable (an ``nn.Module``, ``create_feature_extractor`` output, a CLIP image
            encoder ...); a dict output is reduced to its single value.
        mean: per-channel mean subtracted from [0, 1] images.
        std: per-channel std they are divided by.
        name: shown in results.
    """

    module: Callable[[Tensor], Any]
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    name: str = ""

    @torch.inference_mode()
    def __call__(self, images01: Tensor) -> Tensor:
        mean = torch.tensor(self.mean, dtype=images01.dtype, device=images01.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=images01.dtype, device=images01.device).view(1, 3, 1, 1)
        out = self.module((images01 - mean) / std)
        if isinstance(out, Mapping):
            if len(out) != 1:
                raise ValueError(f"feature network {self.name!r} returned {len(out)} outputs, expected one")
            out = next(iter(out.values()))
        return out.float().flatten(1)


def _node(net: nn.Module, node: str) -> nn.Module:
    """``net`` cut at ``node`` (torchvision's FX feature extractor, as MindEye's evaluation)."""
    import warnings

    from torchvision.models.feature_extraction import create_feature_extractor

    with warnings.catch_warnings():  # Inception's train-mode graph has extra (auxiliary) nodes: irrelevant here
        warnings.filterwarnings("ignore", message="NOTE: The nodes obtained by tracing")
        return create_feature_extractor(net.eval(), return_nodes=[node])


SWAV_FILE = "swav_800ep_pretrain.pth.tar"
SWAV_SOURCE = "https://dl.fbaipublicfiles.com/deepcluster/swav_800ep_pretrain.pth.tar (torch.hub facebookresearch/swav)"


def load_swav_resnet50(weights: str | os.PathLike[str] | None = None) -> nn.Module:
    """torchvision ResNet-50 trunk with SwAV's self-supervised weights (no classifier: ``fc`` = identity).

    The file holds the trunk as ``module.``-prefixed ResNet-50 keys plus SwAV's projection head and
    prototypes, which are dropped; every trunk key must be present with the right shape.

    Args:
        weights: the file (``None``: ``$DECODELAB_CACHE/weights/swav_800ep_pretrain.pth.tar``).

    Raises:
        FileNotFoundError: the file is missing (the message says where to get it).
        ValueError: the file does not fit ResNet-50 (every bad key is named).
    """
    import torchvision

    from decodelab.hub import load_state_dict_strict, read_torch_checkpoint

    path = Path(weights).expanduser() if weights is not None else weights_dir() / SWAV_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"SwAV weights not found at {path}. Get {SWAV_FILE} from {SWAV_SOURCE} on a machine with network "
            f"access, then pass its path or put it in {weights_dir()}. decodelab never downloads scoring networks."
        )
    state = read_torch_checkpoint(path)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    net = torchvision.models.resnet50(weights=None)
    net.fc = nn.Identity()
    load_state_dict_strict(net, state, source=str(path), ignore=("projection_head", "prototypes"))
    return net.eval().requires_grad_(False)


class _ClipImageEncoder(nn.Module):
    def __init__(self, clip_model: Any) -> None:
        super().__init__()
        self.clip = clip_model

    def forward(self, x: Tensor) -> Tensor:
        if self.clip.backend == "open_clip":
            return self.clip.model.encode_image(x.to(self.clip.device))
        out = self.clip.model.get_image_features(pixel_values=x.to(self.clip.device))
        return out if isinstance(out, Tensor) else out.pooler_output


def standard_networks(
    weights: Mapping[str, str | os.PathLike[str] | None] | None = None,
    *,
    metrics: Sequence[str] = ("alexnet2", "alexnet5", "inception", "clip", "effnet", "swav"),
    check_hash: bool = True,
) -> dict[str, FeatureNetwork]:
    """The published feature networks, each from a local file.

    Args:
        weights: network key -> file (``alexnet``, ``inception``, ``clip``, ``effnet``, ``swav``);
            a missing key looks in the weights cache (:mod:`decodelab.eval.assets`).
        metrics: which of :data:`METRICS` need a network.
        check_hash: verify the torchvision files' sha256 prefixes.

    Raises:
        FileNotFoundError: a file is missing; the message names it and where to get it.
    """
    from decodelab.eval import features

    weights = dict(weights or {})
    nets: dict[str, FeatureNetwork] = {}
    alexnet = None
    for m in metrics:
        if m in ("alexnet2", "alexnet5"):
            alexnet = alexnet or features.load_alexnet(weights.get("alexnet"), check_hash=check_hash)
            nets[m] = FeatureNetwork(_node(alexnet, "features.4" if m == "alexnet2" else "features.11"), name=m)
        elif m == "inception":
            net = features.load_inception_v3(weights.get("inception"), check_hash=check_hash)
            nets[m] = FeatureNetwork(_node(net, "avgpool"), name=m)
        elif m == "effnet":
            net = features.load_efficientnet_b1(weights.get("effnet"), check_hash=check_hash)
            nets[m] = FeatureNetwork(_node(net, "avgpool"), name=m)
        elif m == "swav":
            nets[m] = FeatureNetwork(_node(load_swav_resnet50(weights.get("swav")), "avgpool"), name=m)
        elif m == "clip":
            from decodelab.eval.clip_score import ClipModel

            clip = ClipModel(weights.get("clip"))
            nets[m] = FeatureNetwork(_ClipImageEncoder(clip), CLIP_MEAN, CLIP_STD, name=m)
        elif m not in METRICS or METRICS[m][1] is not None:
            raise ValueError(f"unknown metric {m!r}; known: {', '.join(METRICS)}")
    return nets


# ------------------------------------------------------------------------------------ protocol
def _as_float01(images: Any, what: str) -> Tensor:
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, Tensor) else images)
    if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != x.shape[3]:
        raise ValueError(f"{what} must be square RGB images [N, 3, H, H], got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    x = x.float()
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError(f"{what} must be uint8 or floats in [0, 1] (got values in [{x.min():.3g}, {x.max():.3g}])")
    return x


def _resize01(x: Tensor, size: int, mode: str) -> Tensor:
    return resize_images(x * 255.0, size, mode) / 255.0


@dataclass
class _Accumulator:
    pixcorr: list[np.ndarray] = field(default_factory=list)
    ssim: list[np.ndarray] = field(default_factory=list)
    real: dict[str, list[np.ndarray]] = field(default_factory=dict)
    pred: dict[str, list[np.ndarray]] = field(default_factory=dict)


def evaluate_reconstructions(
    ground_truth: Any,
    reconstructions: Any,
    *,
    networks: Mapping[str, FeatureNetwork] | None = None,
    metrics: Sequence[str] | None = None,
    protocol: str = "mindeye",
    batch_size: int = 32,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Score reconstructions against the seen images with the NSD metrics.

    Args:
        ground_truth: ``[N, 3, H, H]`` seen images (uint8, or floats in [0, 1]); any array that
            slices by batch (NumPy, memmap, h5py, torch).
        reconstructions: ``[N, 3, h, h]`` reconstructions, same order.
        networks: network key -> :class:`FeatureNetwork` (see :func:`standard_networks`);
            metrics whose network is not given are an error when requested.
        metrics: names from :data:`METRICS` (default: the pixel metrics plus every metric whose
            network is given).
        protocol: ``"mindeye"`` or ``"brain-diffuser"`` (:data:`PROTOCOLS`).
        batch_size: images per batch.
        device: where the networks run.

    Returns:
        ``{metric: value}`` (identification as fractions, chance 0.5) plus ``"n_images"``.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    proto = PROTOCOLS[protocol]
    networks = dict(networks or {})
    if metrics is None:
        metrics = [m for m, (kind, key) in METRICS.items() if key is None or key in networks]
    for m in metrics:
        if m not in METRICS:
            raise ValueError(f"unknown metric {m!r}; known: {', '.join(METRICS)}")
        key = METRICS[m][1]
        if key is not None and key not in networks:
            raise ValueError(f"metric {m!r} needs the network {key!r}: pass networks={{'{key}': ...}} "
                             "(standard_networks() loads the published one from a local file)")  # fmt: skip
    n = len(ground_truth)
    if len(reconstructions) != n:
        raise ValueError(f"{n} ground-truth images but {len(reconstructions)} reconstructions")
    acc = _Accumulator()
    for a in range(0, n, batch_size):
        gt = _as_float01(ground_truth[a : a + batch_size], "ground_truth")
        rec = _as_float01(reconstructions[a : a + batch_size], "reconstructions")
        if {"pixcorr", "ssim"} & set(metrics):
            if proto.resize_ground_truth:
                g = _resize01(gt, proto.pixel_size, proto.pixel_resize)
            elif gt.shape[-1] != proto.pixel_size:
                raise ValueError(f"protocol {protocol!r} compares pixels at the ground truth's native "
                                 f"{proto.pixel_size} x {proto.pixel_size}; got {gt.shape[-1]}")  # fmt: skip
            else:
                g = gt
            r = _resize01(rec, proto.pixel_size, proto.pixel_resize).clamp(0, 1)
            if "pixcorr" in metrics:
                acc.pixcorr.append(pixcorr(g.numpy(), r.numpy()))
            if "ssim" in metrics:
                acc.ssim.append(ssim(g.numpy(), r.numpy()))
        for m in metrics:
            key = METRICS[m][1]
            if key is None:
                continue
            size = proto.network_size[key]
            both = torch.cat([gt, rec.to(gt.dtype)]) if gt.shape == rec.shape else None
            if both is not None:
                feats = networks[key](_resize01(both, size, proto.network_resize).to(device)).cpu().numpy()
                fr, fp = feats[: len(gt)], feats[len(gt) :]
            else:
                fr = networks[key](_resize01(gt, size, proto.network_resize).to(device)).cpu().numpy()
                fp = networks[key](_resize01(rec, size, proto.network_resize).to(device)).cpu().numpy()
            acc.real.setdefault(m, []).append(fr)
            acc.pred.setdefault(m, []).append(fp)
    out: dict[str, float] = {"n_images": float(n)}
    for m in metrics:
        kind = METRICS[m][0]
        if m == "pixcorr":
            out[m] = float(np.mean(np.concatenate(acc.pixcorr)))
        elif m == "ssim":
            out[m] = float(np.mean(np.concatenate(acc.ssim)))
        else:
            real, pred = np.concatenate(acc.real[m]), np.concatenate(acc.pred[m])
            out[m] = two_way_identification(real, pred) if kind == "two_way" else correlation_distance(real, pred)
    return out
