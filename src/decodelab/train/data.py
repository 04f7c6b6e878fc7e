"""In-memory image sets of the VQ and GPT tasks: Fashion-MNIST, the shapes world, smooth random (noise) images.

:func:`load_image_data` reads the ``train`` or ``eval`` split a
:class:`~decodelab.train.config.DataConfig` describes into an :class:`ImageData` (uint8 images plus
labels / captions and a JSON description for the provenance card).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from decodelab.train.common import file_sha256

__all__ = ["ImageData", "load_image_data", "to_float"]


@dataclass
class ImageData:
    """A training or held-out set held in memory.

    Attributes:
        images: uint8 ``[N, C, H, W]`` (converted to ``[-1, 1]`` floats per batch by :func:`to_float`).
        labels: int64 ``[N]`` class ids, or ``None``.
        captions: one caption per image, or ``None``.
        class_names: names of the label values, or ``None``.
        info: a JSON description of where the data came from (for the provenance card).
    """

    images: Tensor
    labels: Tensor | None = None
    captions: list[str] | None = None
    class_names: list[str] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, n: int | None) -> ImageData:
        """The first ``n`` items (all when ``n`` is ``None`` or larger than the set)."""
        if n is None or n >= len(self):
            return self
        return ImageData(
            self.images[:n],
            None if self.labels is None else self.labels[:n],
            None if self.captions is None else self.captions[:n],
            self.class_names,
            {**self.info, "num_images": int(n)},
        )


def to_float(images: Tensor) -> Tensor:
    """uint8 ``[B, C, H, W]`` -> float32 in ``[-1, 1]``."""
    return images.float().div_(127.5).sub_(1.0)


def load_image_data(cfg: Any, split: str) -> ImageData:
    """Load the ``train`` or ``eval`` set described by a :class:`~decodelab.train.config.DataConfig`.

    Raises:
        ValueError: for an unknown dataset or split name.
        FileNotFoundError: when Fashion-MNIST's files are missing (the message says how to get them).
    """
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    if cfg.name == "fashion_mnist":
        data = _fashion_mnist(cfg, cfg.train_split if split == "train" else cfg.eval_split)
        return data.subset(cfg.num_train if split == "train" else None)
    n = cfg.num_train if split == "train" else max(cfg.num_eval, cfg.final_eval_samples or 0)
    seed = cfg.seed if split == "train" else cfg.eval_seed
    if cfg.name == "shapes_world":
        return _shapes(cfg, int(n), seed)
    if cfg.name == "noise":
        return _noise(cfg, int(n), seed)
    raise ValueError(f"unknown training dataset {cfg.name!r}")


def _resize_uint8(x: Tensor, size: int) -> Tensor:
    out = []
    for part in x.split(4096):
        y = torch.nn.functional.interpolate(
            part.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
        out.append(y.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)


def _fashion_mnist(cfg: Any, split: str) -> ImageData:
    from decodelab.datasets.fashion_mnist import FASHION_MNIST_CLASSES, find_fashion_mnist, load_fashion_mnist

    raw, labels = load_fashion_mnist(split, cfg.root)
    x = torch.from_numpy(np.array(raw))[:, None]  # [N, 1, 28, 28] uint8, 0 = background
    if cfg.image_size != 28:
        x = torch.nn.functional.pad(x, (2, 2, 2, 2), value=0)  # [N, 1, 32, 32]
        if cfg.image_size != 32:
            x = _resize_uint8(x, cfg.image_size)
    if cfg.channels == 3:
        x = x.expand(-1, 3, -1, -1).contiguous()
    files = find_fashion_mnist(split, cfg.root)
    info = {
        "dataset": "fashion_mnist",
        "split": split,
        "num_images": len(x),
        "files": [str(f) for f in files],
        "sha256": [file_sha256(f)[:16] for f in files],
        "geometry": f"28x28 padded to 32x32 with background, then {cfg.image_size}px, {cfg.channels} channel(s)",
    }
    return ImageData(x, torch.from_numpy(np.array(labels)), None, list(FASHION_MNIST_CLASSES), info)


def _shapes(cfg: Any, n: int, seed: int) -> ImageData:
    from decodelab.datasets.shapes import ShapesWorld

    world = ShapesWorld(num_samples=n, seed=seed, size=cfg.image_size, max_count=cfg.max_count)
    images, captions = [], []
    for i in range(n):
        metadata, _, image = world.sample(i)
        images.append(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
        captions.append(metadata["prompt"])
    x = torch.stack(images) if images else torch.zeros(0, 3, cfg.image_size, cfg.image_size, dtype=torch.uint8)
    if cfg.channels == 1:
        raise ValueError("the shapes world is RGB: set data.channels: 3")
    info = {"dataset": "shapes_world", "num_images": n, "seed": seed, "size": cfg.image_size,
            "max_count": cfg.max_count}  # fmt: skip
    return ImageData(x, None, captions, None, info)


_SYNTH_WORDS = ("red", "green", "blue", "round", "square", "striped", "dark", "bright")


def _noise(cfg: Any, n: int, seed: int) -> ImageData:
    """Smooth random images (bilinear upsampling of 4x4 noise), random labels and captions."""
    g = torch.Generator().manual_seed(int(seed))
    low = torch.rand(n, cfg.channels, 4, 4, generator=g)
    x = torch.nn.functional.interpolate(low, size=(cfg.image_size,) * 2, mode="bilinear", align_corners=False)
    x = (x * 255).round().to(torch.uint8)
    labels = torch.randint(cfg.num_classes, (n,), generator=g)
    words = torch.randint(len(_SYNTH_WORDS), (n, 2), generator=g).tolist()
    captions = [f"a {_SYNTH_WORDS[a]} {_SYNTH_WORDS[b]} thing" for a, b in words]
    names = [f"class_{i}" for i in range(cfg.num_classes)]
    info = {"dataset": "noise", "num_images": n, "seed": seed, "size": cfg.image_size}
    return ImageData(x, labels, captions, names, info)
