"""Image sources for the FID family: folders of PNGs, ADM ``.npz`` sample files, arrays, generators.

Every source becomes a stream of ``(indices, uint8 [B, 3, H, W])`` batches through
:class:`ImageSource`, which can also restrict itself to one process's share (``rank``/``world``)
so that several processes extract features of disjoint parts and gather them in sample order.

- **folder**: image files sorted by relative path (so ``shard_00000/000000.png`` order = sample
  order), PNG by default; decodelab sample folders (``manifest.json``) are read shard by shard.
- **.npz**: the ADM / LlamaGen layout, ``arr_0`` uint8 ``[N, H, W, 3]``. The array is streamed
  from the zip member in batches, so a 50k x 256 x 256 file never sits in memory at once.
- **arrays / tensors**: uint8 ``[N, H, W, C]`` (numpy) or ``[N, C, H, W]`` (torch), or float in
  [0, 1]; a list of PIL images.
- **generator**: any iterable of batches in one of the forms above (consumed once, rank 0 only
  in distributed runs).

Grey images are repeated to RGB and RGBA loses its alpha.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

__all__ = ["ImageSource", "as_uint8_batch", "list_image_files", "read_npz_header"]

IMAGE_EXTENSIONS = (".png",)


def as_uint8_batch(x: Any) -> Tensor:
    """One batch (array, tensor, PIL image or list of PIL images) -> uint8 ``[B, 3, H, W]``.

    Raises:
        ValueError: for shapes or types that are not images.
    """
    if isinstance(x, Image.Image):
        x = [x]
    if isinstance(x, (list, tuple)) and x and all(isinstance(i, Image.Image) for i in x):
        x = np.stack([np.asarray(i.convert("RGB")) for i in x])
    if isinstance(x, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(x))
        if t.ndim == 3:
            t = t[..., None]
        if t.ndim != 4 or t.shape[-1] not in (1, 3, 4):
            raise ValueError(f"numpy images must be [N, H, W] or [N, H, W, C] with C in 1, 3, 4; got {tuple(t.shape)}")
        t = t.permute(0, 3, 1, 2)
    elif isinstance(x, Tensor):
        t = x.detach().cpu()
        if t.ndim == 3:
            t = t[:, None]
        if t.ndim != 4 or t.shape[1] not in (1, 3, 4):
            raise ValueError(f"tensor images must be [N, C, H, W] with C in 1, 3, 4; got {tuple(t.shape)}")
    else:
        raise ValueError(f"cannot read images from {type(x).__name__}")
    if t.dtype != torch.uint8:
        if t.is_floating_point() and (t.min() < 0 or t.max() > 1):
            raise ValueError("float images must be in [0, 1] (or pass uint8 0..255)")
        if not t.is_floating_point():
            raise ValueError(f"integer images must be uint8, got {t.dtype}")
        t = (t.float() * 255).round().clamp(0, 255).to(torch.uint8)
    if t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1)
    elif t.shape[1] == 4:
        t = t[:, :3]
    return t.contiguous()


def list_image_files(folder: str | os.PathLike[str], extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Image files under ``folder`` (recursive), sorted by relative path; temporary files skipped."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    exts = tuple(e.lower() for e in extensions)
    files = [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in exts and ".tmp" not in p.name]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def read_npz_header(path: str | os.PathLike[str], key: str = "arr_0") -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of ``key`` in an ``.npz`` without reading the array."""
    with zipfile.ZipFile(path) as zf, zf.open(f"{key}.npy") as f:
        shape, _, dtype = _npy_header(f)
    return shape, dtype


def _npy_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    return np.lib.format.read_array_header_2_0(f)


class ImageSource:
    """A set of images read in batches, optionally only one process's share of it.

    Args:
        source: folder, ``.npz`` / ``.npy`` path, array, tensor, list of PIL images, or an iterable
            of batches (generator).
        npz_key: array name inside an ``.npz`` (ADM: ``arr_0``).
        extensions: image file extensions of a folder.
    """

    def __init__(self, source: Any, npz_key: str = "arr_0", extensions: Sequence[str] = IMAGE_EXTENSIONS) -> None:
        self.source = source
        self.npz_key = npz_key
        self.files: list[Path] | None = None
        self.array: Any = None
        self.kind = ""
        if isinstance(source, (str, os.PathLike)):
            p = Path(source)
            if p.is_dir():
                self.kind, self.files = "folder", list_image_files(p, extensions)
                if not self.files:
                    raise ValueError(f"no {'/'.join(extensions)} images in {p}")
            elif p.suffix == ".npz" and p.is_file():
                self.kind = "npz"
                with zipfile.ZipFile(p) as zf:
                    names = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
                if npz_key not in names:
                    raise ValueError(f"{p} has no array {npz_key!r} (arrays: {', '.join(names)}); ADM files use arr_0")
                shape, dtype = read_npz_header(p, npz_key)
                if len(shape) != 4 or shape[-1] not in (1, 3) or dtype != np.uint8:
                    raise ValueError(f"{p}:{npz_key} must be uint8 [N, H, W, 3] (ADM layout), got {dtype} {shape}")
                self._npz_shape = shape
            elif p.suffix == ".npy" and p.is_file():
                self.kind, self.array = "array", np.load(p, mmap_mode="r")
            else:
                raise FileNotFoundError(f"no image folder, .npz or .npy file at {p}")
        elif isinstance(source, (np.ndarray, Tensor)):
            self.kind, self.array = "array", source
        elif isinstance(source, (list, tuple)) and source and all(isinstance(i, Image.Image) for i in source):
            self.kind, self.array = "pil", list(source)
        elif isinstance(source, Iterable):
            self.kind = "iterable"
        else:
            raise ValueError(f"cannot read images from {type(source).__name__}")

    def __len__(self) -> int:
        if self.kind == "folder":
            return len(self.files)
        if self.kind == "npz":
            return int(self._npz_shape[0])
        if self.kind in ("array", "pil"):
            return len(self.array)
        raise TypeError("the length of a generator source is unknown")

    def describe(self) -> dict[str, Any]:
        """JSON-friendly description for result files."""
        if isinstance(self.source, (str, os.PathLike)):
            return {"kind": self.kind, "path": str(Path(self.source).resolve()), "num_images": len(self)}
        return {"kind": self.kind, "num_images": len(self) if self.kind != "iterable" else None}

    def _read(self, idx: Sequence[int]) -> Tensor:
        if self.kind == "folder":
            return as_uint8_batch([Image.open(self.files[i]) for i in idx])
        if self.kind == "pil":
            return as_uint8_batch([self.array[i] for i in idx])
        return as_uint8_batch(self.array[list(idx)] if isinstance(self.array, Tensor) else self.array[idx])

    def _npz_batches(self, batch_size: int, keep) -> Iterator[tuple[np.ndarray, Tensor]]:
        n, h, w, c = self._npz_shape
        item = h * w * c
        with zipfile.ZipFile(self.source) as zf, zf.open(f"{self.npz_key}.npy") as f:
            _npy_header(f)
            for s in range(0, n, batch_size):
                m = min(batch_size, n - s)
                buf = f.read(m * item)
                if len(buf) != m * item:
                    raise ValueError(f"{self.source}: truncated array {self.npz_key}")
                ids = np.arange(s, s + m)
                sel = keep(ids)
                if sel.any():
                    arr = np.frombuffer(buf, dtype=np.uint8).reshape(m, h, w, c)[sel]
                    yield ids[sel], as_uint8_batch(arr)

    def batches(self, batch_size: int = 50, rank: int = 0, world: int = 1) -> Iterator[tuple[np.ndarray, Tensor]]:
        """``(indices, uint8 [B, 3, H, W])`` batches of this process's share (index % world == rank).

        A generator source is read whole by rank 0 (other ranks get nothing).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if self.kind == "iterable":
            if rank != 0:
                return
            start = 0
            for batch in self.source:
                x = as_uint8_batch(batch)
                yield np.arange(start, start + len(x)), x
                start += len(x)
            return
        if self.kind == "npz":
            yield from self._npz_batches(batch_size, lambda ids: ids % world == rank)
            return
        mine = np.arange(rank, len(self), world)
        for s in range(0, len(mine), batch_size):
            ids = mine[s : s + batch_size]
            yield ids, self._read(ids.tolist())

    def share(self, rank: int = 0, world: int = 1) -> int | None:
        """Number of images this process reads (``None`` for a generator)."""
        if self.kind == "iterable":
            return None
        return len(range(rank, len(self), world))
