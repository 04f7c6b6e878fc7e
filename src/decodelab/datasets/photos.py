"""Real photographs that ship inside installed packages, with a fixed train/test split.

scikit-image, scikit-learn and matplotlib carry a handful of real photos in their wheels, so they
are available offline on every machine that has decodelab's dependencies. decodelab uses them as a
small stand-in for DIV2K/Kodak-style data (super-resolution, continuous reconstruction) and as
clean backgrounds for synthetic rain.

The split is fixed by name (never by a random draw) so numbers stay comparable across versions:
``test`` holds five RGB photos; the stereo pair ``motorcycle_left``/``motorcycle_right`` shows the
same scene, so both sit in ``test`` to avoid leakage. ``train`` holds the other RGB photos and the
greyscale photos (replicated to three channels).

A second, larger photo set comes from Debian's desktop-background packages
(:mod:`decodelab.datasets.wallpapers`: 23 curated high-resolution photographs, long side reduced to
1280 px). Its splits are named ``wallpapers-train`` (19 photos), ``wallpapers-val`` (4) and
``wallpapers-all``, so a training config selects it with ``train_split: wallpapers-train`` (trainers
read photo splits through this module). ``all`` stays the bundled photos only, and the bundled
``test`` photos stay the held-out evaluation set: they come from another source than the wallpapers.

Example:
    >>> from decodelab.datasets.photos import BundledPhotos
    >>> test = BundledPhotos("test")
    >>> test.names[0], tuple(test[0].shape)
    ('astronaut', (3, 512, 512))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from decodelab.datasets import wallpapers

__all__ = ["PHOTO_SOURCES", "SPLITS", "WALLPAPER_SPLITS", "BundledPhotos", "list_photos", "load_photo"]


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, name)()

    return load


def _stereo(index: int) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return skimage.data.stereo_motorcycle()[index]

    return load


def _sklearn(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(filename)

    return load


def _matplotlib(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from matplotlib import cbook
        from PIL import Image

        with cbook.get_sample_data(filename) as f:  # a packaged file, opened locally
            return np.asarray(Image.open(f).convert("RGB"))

    return load


#: name -> (package it ships in, loader). All are real photographs (no synthetic test patterns).
PHOTO_SOURCES: dict[str, tuple[str, Callable[[], np.ndarray]]] = {
    "astronaut": ("scikit-image", _skimage("astronaut")),
    "coffee": ("scikit-image", _skimage("coffee")),
    "motorcycle_left": ("scikit-image", _stereo(0)),
    "motorcycle_right": ("scikit-image", _stereo(1)),
    "flower": ("scikit-learn", _sklearn("flower.jpg")),
    "chelsea": ("scikit-image", _skimage("chelsea")),
    "rocket": ("scikit-image", _skimage("rocket")),
    "hubble_deep_field": ("scikit-image", _skimage("hubble_deep_field")),
    "retina": ("scikit-image", _skimage("retina")),
    "immunohistochemistry": ("scikit-image", _skimage("immunohistochemistry")),
    "china": ("scikit-learn", _sklearn("china.jpg")),
    "grace_hopper": ("matplotlib", _matplotlib("grace_hopper.jpg")),
    "camera": ("scikit-image", _skimage("camera")),
    "brick": ("scikit-image", _skimage("brick")),
    "grass": ("scikit-image", _skimage("grass")),
    "gravel": ("scikit-image", _skimage("gravel")),
    "moon": ("scikit-image", _skimage("moon")),
    "coins": ("scikit-image", _skimage("coins")),
    "cell": ("scikit-image", _skimage("cell")),
    "clock": ("scikit-image", _skimage("clock")),
}

_TEST = ("astronaut", "coffee", "flower", "motorcycle_left", "motorcycle_right")
#: wallpaper split name here -> split name in :mod:`decodelab.datasets.wallpapers`
WALLPAPER_SPLITS = {"wallpapers-train": "train", "wallpapers-val": "val", "wallpapers-all": "all"}
SPLITS: dict[str, tuple[str, ...]] = {
    "test": _TEST,
    "train": tuple(n for n in PHOTO_SOURCES if n not in _TEST),
    "all": tuple(PHOTO_SOURCES),
    **{k: tuple(wallpapers.list_wallpapers(v)) for k, v in WALLPAPER_SPLITS.items()},
}


def list_photos(split: str = "all") -> list[str]:
    """Names of the photos in ``split`` (``train``/``test``/``all``, ``wallpapers-{train,val,all}``), fixed order."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    return list(SPLITS[split])


@lru_cache(maxsize=32)
def _load_cached(name: str) -> np.ndarray:
    package, loader = PHOTO_SOURCES[name]
    try:
        img = np.asarray(loader())
    except (ImportError, ModuleNotFoundError, OSError) as e:
        raise FileNotFoundError(
            f"the bundled photo {name!r} ships with {package}, which could not provide it ({e}); "
            f"install decodelab's dependencies (make install) to get it"
        ) from e
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    img = img[:, :, :3]
    if img.dtype != np.uint8:
        raise ValueError(f"bundled photo {name!r} has dtype {img.dtype}, expected uint8")
    img.setflags(write=False)
    return img


def load_photo(name: str) -> np.ndarray:
    """One photo as a read-only ``uint8`` array ``[H, W, 3]`` (greyscale replicated).

    Wallpaper photos (names from ``list_photos("wallpapers-all")``) are read with
    :func:`decodelab.datasets.wallpapers.load_wallpaper` and its defaults.

    Raises:
        ValueError: for a name not in :data:`PHOTO_SOURCES` or the wallpaper list.
        FileNotFoundError: when the package that ships it is not installed (for wallpapers, the
            message names the ``apt-get install`` command).
    """
    if name in SPLITS["wallpapers-all"]:
        return wallpapers.load_wallpaper(name)
    if name not in PHOTO_SOURCES:
        raise ValueError(f"unknown bundled photo {name!r}; available: {', '.join(PHOTO_SOURCES)}")
    return _load_cached(name)


class BundledPhotos(Sequence):
    """The photos of one split as float tensors ``[3, H, W]`` in ``[0, 1]``.

    Args:
        split: ``train``, ``test`` or ``all`` (bundled photos), or ``wallpapers-train``,
            ``wallpapers-val``, ``wallpapers-all`` (:mod:`decodelab.datasets.wallpapers`).
        multiple_of: crop each photo (top-left anchored) so both sides are multiples of this.
    """

    def __init__(self, split: str = "test", multiple_of: int = 1) -> None:
        if multiple_of < 1:
            raise ValueError(f"multiple_of must be >= 1, got {multiple_of}")
        self.split = split
        self.names = list_photos(split)
        self.multiple_of = int(multiple_of)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> Tensor:  # type: ignore[override]
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} photos")
        img = load_photo(self.names[index])
        m = self.multiple_of
        h, w = (img.shape[0] // m) * m, (img.shape[1] // m) * m
        return torch.from_numpy(np.array(img[:h, :w])).permute(2, 0, 1).float() / 255.0  # a writable copy

    def __repr__(self) -> str:
        return f"BundledPhotos(split={self.split!r}, n={len(self)})"
