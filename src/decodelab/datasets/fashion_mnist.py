"""Fashion-MNIST from its standard IDX files, as numpy arrays or a torch ``Dataset``.

The four files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``, each optionally gzipped) are looked up, in order, in:

1. the explicit ``root=`` argument (also ``root/fashion-mnist`` and torchvision's ``root/FashionMNIST/raw``);
2. ``$DECODELAB_DATA/fashion-mnist`` (and ``$DECODELAB_DATA/FashionMNIST/raw``);
3. ``~/decodelab_data/fashion-mnist``;
4. the Debian package location ``/usr/share/datasets/fashion-mnist``
   (``apt-get install dataset-fashion-mnist``).

An explicit ``root`` is authoritative: when it does not hold the files, nothing else is searched.
Nothing is ever downloaded.

Example:
    >>> images, labels = load_fashion_mnist("test")  # doctest: +SKIP
    >>> images.shape, labels.shape
    ((10000, 28, 28), (10000,))
"""

from __future__ import annotations

import functools
import gzip
import os
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from decodelab.registry import register_dataset

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FashionMNIST",
    "find_fashion_mnist",
    "load_fashion_mnist",
    "read_idx",
    "search_paths",
]

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

#: System-wide folders searched after the user folders (tests replace this tuple).
SYSTEM_DIRS: tuple[str, ...] = ("/usr/share/datasets/fashion-mnist",)
#: Folder under ``$DECODELAB_DATA`` / ``~/decodelab_data`` that holds the files.
SUBDIR = "fashion-mnist"

_SPLIT_PREFIX = {"train": "train", "test": "t10k"}
_GET_DATA_HINT = (
    "Get the data with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or put the four IDX "
    "files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
    "t10k-labels-idx1-ubyte.gz; gzipped or not) into one of these folders, or pass root=<folder>."
)

# IDX type codes (third magic byte) -> numpy big-endian dtype.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path: Path) -> bytes:
    """Read ``path``, transparently gunzipping it when it starts with the gzip magic."""
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{path}: corrupt or truncated gzip file ({err}); delete it and get the data again") from None


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Parse one IDX file (gzipped or raw) into a numpy array.

    The IDX header is two zero bytes, a type code (0x08 = uint8, ...), the number of dimensions,
    then one big-endian uint32 per dimension; the data follows in C order.

    Args:
        path: the file.

    Returns:
        The array with the header's shape, in native byte order.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when the magic number, the dimensions or the data length are wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX data type code 0x{code:02x}")
    if ndim == 0:
        raise ValueError(f"{path}: IDX header declares zero dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(data)} bytes, need {header})")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(
            f"{path}: IDX data has {len(data) - header} bytes but the header {dims} needs {expected}; "
            "the file is truncated or corrupt"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=False)


def search_paths(root: str | os.PathLike[str] | None = None) -> list[Path]:
    """The folders searched for the IDX files, in order.

    Args:
        root: an explicit folder; when given, only it (and its ``fashion-mnist`` and torchvision
            ``FashionMNIST/raw`` sub-folders) is searched.

    Returns:
        Candidate folders, most specific first (they need not exist).
    """

    def with_layouts(base: Path, sub: bool) -> list[Path]:
        out = [base / SUBDIR] if sub else [base]
        out.append(base / "FashionMNIST" / "raw")
        return out

    if root is not None:
        base = Path(root).expanduser()
        return [base, base / SUBDIR, base / "FashionMNIST" / "raw"]
    dirs: list[Path] = []
    env = os.environ.get("DECODELAB_DATA")
    if env:
        dirs += with_layouts(Path(env).expanduser(), sub=True)
    dirs += with_layouts(Path("~/decodelab_data").expanduser(), sub=True)
    for d in SYSTEM_DIRS:
        dirs += with_layouts(Path(d), sub=False)
    return dirs


def _split_files(folder: Path, split: str) -> tuple[Path, Path] | None:
    """The (images, labels) files of ``split`` in ``folder``, or ``None`` when either is missing."""
    prefix = _SPLIT_PREFIX[split]
    found = []
    for kind in ("images-idx3", "labels-idx1"):
        for name in (f"{prefix}-{kind}-ubyte.gz", f"{prefix}-{kind}-ubyte", f"{prefix}-{kind}.ubyte"):
            if (folder / name).is_file():
                found.append(folder / name)
                break
        else:
            return None
    return found[0], found[1]


def _check_split(split: str) -> str:
    if split not in _SPLIT_PREFIX:
        raise ValueError(f"unknown Fashion-MNIST split {split!r}; use 'train' or 'test'")
    return split


def find_fashion_mnist(split: str = "train", root: str | os.PathLike[str] | None = None) -> tuple[Path, Path]:
    """Locate the IDX files of ``split``.

    Args:
        split: ``"train"`` or ``"test"``.
        root: an explicit folder (see :func:`search_paths`).

    Returns:
        ``(images_file, labels_file)``.

    Raises:
        ValueError: for an unknown split.
        FileNotFoundError: listing every folder searched and how to get the data.
    """
    _check_split(split)
    candidates = search_paths(root)
    for folder in candidates:
        files = _split_files(folder, split)
        if files is not None:
            return files
    searched = "\n".join(f"  - {p}" for p in candidates)
    raise FileNotFoundError(f"Fashion-MNIST {split!r} IDX files not found. Searched:\n{searched}\n{_GET_DATA_HINT}")


@functools.lru_cache(maxsize=8)
def _parse_split(images_file: str, labels_file: str, _stamp: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Parse and validate one split (cached; ``_stamp`` invalidates the cache when files change)."""
    images = read_idx(images_file)
    labels = read_idx(labels_file)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(
            f"{images_file}: expected uint8 images of shape [N, 28, 28], got {images.dtype} {images.shape}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(f"{labels_file}: expected a 1-D uint8 label vector, got {labels.dtype} {labels.shape}")
    if len(labels) != len(images):
        raise ValueError(
            f"{images_file} has {len(images)} images but {labels_file} has {len(labels)} labels; "
            "the two files come from different splits or one is corrupt"
        )
    if labels.size and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
        raise ValueError(f"{labels_file}: label {int(labels.max())} is out of range 0..9")
    images = np.ascontiguousarray(images)
    labels = labels.astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_fashion_mnist(
    split: str = "train", root: str | os.PathLike[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Load one Fashion-MNIST split.

    Parsed arrays are cached in-process, so repeated calls are cheap. The returned arrays are
    **read-only** (they are the cached ones); copy them before modifying.

    Args:
        split: ``"train"`` (60000 images) or ``"test"`` (10000 images).
        root: an explicit folder holding the IDX files; ``None`` searches the default places.

    Returns:
        ``(images, labels)``: uint8 ``[N, 28, 28]`` (0 = background) and int64 ``[N]`` in 0..9
        (names in :data:`FASHION_MNIST_CLASSES`).

    Raises:
        ValueError: unknown split, or corrupt files.
        FileNotFoundError: when the files are nowhere to be found.
    """
    images_file, labels_file = find_fashion_mnist(split, root)
    stamp = tuple(v for p in (images_file, labels_file) for v in (p.stat().st_mtime_ns, p.stat().st_size))
    return _parse_split(str(images_file.resolve()), str(labels_file.resolve()), stamp)


@register_dataset("fashion_mnist", kind="image")
class FashionMNIST(torch.utils.data.Dataset):
    """Fashion-MNIST as float images in [-1, 1] with integer labels.

    Geometry: ``image_size=28`` keeps the raw images; otherwise each image is first padded to 32x32
    with 2 px of background on every side (the usual framing for 8x-downsampling tokenizers) and,
    when ``image_size != 32``, then resized bilinearly (antialiased) to ``image_size``.

    Args:
        split: ``"train"`` or ``"test"``.
        root: explicit data folder (see :func:`search_paths`); ``None`` searches the default places.
        image_size: output side length (default 32).
        channels: 1 (grey) or 3 (grey repeated to RGB).
        transform: optional callable applied to the final ``[C, S, S]`` tensor.

    Items are ``(image, label)`` with ``image`` float32 ``[C, S, S]`` in [-1, 1] (background = -1)
    and ``label`` an int in 0..9.
    """

    classes = FASHION_MNIST_CLASSES

    def __init__(
        self,
        split: str = "train",
        root: str | os.PathLike[str] | None = None,
        image_size: int = 32,
        channels: int = 1,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        _check_split(split)
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if not isinstance(image_size, int) or image_size < 4:
            raise ValueError(f"image_size must be an int >= 4, got {image_size!r}")
        self.split = split
        self.root = root
        self.image_size = image_size
        self.channels = channels
        self.transform = transform
        self.images, self.labels = load_fashion_mnist(split, root)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = torch.tensor(self.images[index], dtype=torch.float32)[None]  # [1, 28, 28], 0..255
        x = x / 127.5 - 1.0
        if self.image_size != 28:
            x = F.pad(x, (2, 2, 2, 2), value=-1.0)  # [1, 32, 32]
            if self.image_size != 32:
                x = F.interpolate(
                    x[None],
                    size=(self.image_size, self.image_size),
                    mode="bilinear",
                    align_corners=False,
                    antialias=True,
                )[0].clamp_(-1.0, 1.0)
        if self.channels == 3:
            x = x.expand(3, -1, -1).contiguous()
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.labels[index])

    def __repr__(self) -> str:
        return (
            f"FashionMNIST(split={self.split!r}, n={len(self)}, image_size={self.image_size}, channels={self.channels})"
        )
