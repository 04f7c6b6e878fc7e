"""Super-resolution and continuous-reconstruction data: benchmark sets, DIV2K, bundled photos, samplers.

Where the files are looked for (first hit wins): the ``data_dir`` argument (the set's own folder,
or a folder holding ``<Name>/`` or ``sr/<Name>/``), then ``$DECODELAB_DATA/sr/<Name>``, then
``~/decodelab_data/sr/<Name>``. Nothing is downloaded; a missing set is a ``FileNotFoundError``
saying where to put it.

Layouts understood for Set5, Set14, B100, Urban100 and Kodak:

- benchmark (EDSR / LIIF ``load/benchmark``): ``<Name>/HR/*.png`` and ``<Name>/LR_bicubic/X{s}/*``,
  the LR file named ``<stem>x{s}.png`` (or ``<stem>.png``);
- SelfExSR (``jbhuang0604/SelfExSR``): ``<Name>/image_SRF_{s}/<stem>_SRF_{s}_{HR,LR}.png``;
- flat: the images directly in ``<Name>/`` (e.g. Kodak's ``kodim01.png``); LR images are then made
  with :func:`~decodelab.datasets.resize.imresize` (MATLAB bicubic).

DIV2K: ``DIV2K/DIV2K_{train,valid}_HR/0001.png`` and ``DIV2K/DIV2K_{train,valid}_LR_bicubic/X{s}/0001x{s}.png``.

Every sample's HR image is cropped so that it is exactly ``scale`` times its LR image (the usual
"mod crop"); for a non-integer scale the LR side is ``floor(H / scale)`` and the HR image is cropped
to ``round(h_lr * scale)``. The offline ``bundled`` set uses the real photos that ship with
scikit-image / scikit-learn / matplotlib (:mod:`decodelab.datasets.photos`) with their fixed split.

Training samplers follow LIIF's ``sr-implicit-downsampled`` wrapper (scale ``~ U(1, 4)``, a
``48 x 48`` LR input, 2304 query pixels, flips and transpose) and GB-LSR's native crops; a sample
is a pure function of ``(index, generator)``, so runs resume exactly.
"""

from __future__ import annotations

import math
import os
import re
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "BENCHMARKS",
    "NativeCropSampler",
    "SRDataset",
    "SRSample",
    "SRImplicitSampler",
    "MAX_INPUT_PIXELS",
    "find_sr_root",
    "image_size",
    "load_sr_dataset",
    "make_lr",
    "read_image",
]

#: canonical folder names of the benchmark sets (lower-case aliases accepted).
BENCHMARKS = {"set5": "Set5", "set14": "Set14", "b100": "B100", "bsd100": "B100", "urban100": "Urban100",
              "kodak": "Kodak"}  # fmt: skip
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm")


@dataclass
class SRSample:
    """One evaluation pair: ``hr`` ``[3, s h, s w]`` and ``lr`` ``[3, h, w]``, floats in ``[0, 1]``."""

    name: str
    hr: Tensor
    lr: Tensor | None
    scale: float | None


#: Largest input image (pixels) the command-line readers accept unless told otherwise (64 MP, about
#: 768 MiB as float RGB); each image-reading command takes ``--max-input-pixels`` to change it.
MAX_INPUT_PIXELS = 64_000_000
#: Integer modes holding more than 8 bits per sample, and the value that maps to 1.0.
_WIDE_INT_MODES = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535}
_PIL_LIMIT_LOCK = threading.Lock()


def _open_image(path: Path, max_pixels: int | None):  # -> PIL.Image.Image (lazy: header only)
    """Open ``path`` lazily and refuse it from its header when it has more than ``max_pixels`` pixels."""
    from PIL import Image, UnidentifiedImageError

    guard = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            # decodelab checks the size itself (below); PIL's early warning would only add noise
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if max_pixels is not None and guard is not None and max_pixels > 2 * guard:
                # the caller accepts images beyond PIL's decompression-bomb guard: lift it for this open
                with _PIL_LIMIT_LOCK:
                    Image.MAX_IMAGE_PIXELS = max_pixels
                    try:
                        im = Image.open(path)
                    finally:
                        Image.MAX_IMAGE_PIXELS = guard
            else:
                im = Image.open(path)
    except Image.DecompressionBombError as e:
        limit = f"the input limit of {max_pixels:,} pixels" if max_pixels is not None else "PIL's size limit"
        raise ValueError(
            f"{path} is over {limit} according to its header ({e}); refusing to decode it: downscale or crop it, or "
            "raise the limit (--max-input-pixels)"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ValueError(f"could not read {path} as an image: {e}") from e
    w, h = im.size
    if max_pixels is not None and w * h > max_pixels:
        im.close()
        raise ValueError(
            f"{path} is {w}x{h} = {w * h:,} pixels according to its header, over the input limit of "
            f"{max_pixels:,} pixels; downscale or crop it, or raise the limit (--max-input-pixels)"
        )
    return im


def image_size(path: str | Path, max_pixels: int | None = None) -> tuple[int, int]:
    """``(width, height)`` of an image file, read from its header (no pixel is decoded).

    The size is that of the stored pixels, before any EXIF rotation (which keeps the pixel count).

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: when it is not an image, or has more than ``max_pixels`` pixels.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    with _open_image(path, max_pixels) as im:
        return im.size


def read_image(path: str | Path, *, max_pixels: int | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """An image file as an RGB tensor ``[3, H, W]`` in ``[0, 1]``, upright.

    - The size is checked from the header before any pixel is decoded: more than ``max_pixels``
      pixels is an error (``None``: only PIL's decompression-bomb guard applies).
    - The EXIF orientation is applied (a portrait photo stored sideways comes out upright).
    - 8-bit modes (``1``, ``L``, ``P``, ``RGB``, ``CMYK``, ``YCbCr``, ...) are divided by 255;
      16-bit greyscale (``I;16*``, and ``I`` as PIL reads 16-bit PNGs) by 65535; 32-bit float
      (``F``) must already hold values in ``[0, 1]``. Grey is replicated to three channels and
      alpha is dropped. 16-bit colour PNG/TIFF files are read by PIL at 8 bits per channel.

    Args:
        path: the image file.
        max_pixels: largest accepted ``width * height``.
        dtype: floating dtype of the result.

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: when it cannot be decoded as an image, is too large, or holds values that
            cannot be mapped to ``[0, 1]`` without guessing (an ``I`` image outside ``0..65535``,
            an ``F`` image outside ``[0, 1]``).
    """

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    with _open_image(path, max_pixels) as im:
        try:
            im.load()
        except (OSError, ValueError, SyntaxError) as e:  # truncated / corrupt data
            raise ValueError(f"could not read {path} as an image: {e}") from e
        return pil_to_tensor(im, dtype=dtype, name=str(path))


def pil_to_tensor(im: Any, *, dtype: torch.dtype = torch.float32, name: str = "image") -> Tensor:
    """A PIL image as an RGB tensor ``[3, H, W]`` in ``[0, 1]``, upright, by the rules of :func:`read_image`."""
    from PIL import ImageOps

    try:
        im = ImageOps.exif_transpose(im)
        if im.mode not in _WIDE_INT_MODES and im.mode != "F":
            im = im.convert("RGB")
    except (OSError, ValueError, SyntaxError) as e:  # unsupported conversions
        raise ValueError(f"could not read {name} as an image: {e}") from e
    return _to_rgb_tensor(im, Path(name), dtype)


def _to_rgb_tensor(im, path: Path, dtype: torch.dtype) -> Tensor:  # im: PIL.Image.Image
    mode = im.mode
    if mode in _WIDE_INT_MODES:
        arr = np.asarray(im).astype(np.int64)
        if arr.size and (arr.min() < 0 or arr.max() > _WIDE_INT_MODES[mode]):
            raise ValueError(
                f"{path}: a {mode} image with values in [{arr.min()}, {arr.max()}], outside 0..65535; decodelab reads "
                "integer images as 8- or 16-bit intensities: convert it to 8- or 16-bit first"
            )
        t = torch.from_numpy(arr).to(dtype) / float(_WIDE_INT_MODES[mode])
    elif mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        if arr.size and (not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1):
            raise ValueError(
                f"{path}: a 32-bit float image with values in [{np.nanmin(arr)}, {np.nanmax(arr)}]; decodelab reads "
                "float images as intensities in [0, 1]: rescale it to [0, 1] (or save it as 8/16-bit)"
            )
        t = torch.from_numpy(arr).to(dtype)
    else:  # an 8-bit RGB image (converted by the caller)
        arr = np.asarray(im)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).to(dtype) / 255.0
    return t[None].expand(3, -1, -1).contiguous()


def _user_data_dir() -> Path:
    return Path.home() / "decodelab_data"


def find_sr_root(name: str, data_dir: str | Path | None = None) -> Path:
    """The folder of the set ``name`` (see the module docstring for the search order).

    Raises:
        FileNotFoundError: listing every place that was searched.
    """
    folder = BENCHMARKS.get(name.lower(), "DIV2K" if name.lower() == "div2k" else name)
    candidates: list[Path] = []
    if data_dir is not None:
        d = Path(data_dir).expanduser()
        candidates += [d / folder, d / "sr" / folder, d]
    if os.environ.get("DECODELAB_DATA"):
        candidates.append(Path(os.environ["DECODELAB_DATA"]).expanduser() / "sr" / folder)
    candidates.append(_user_data_dir() / "sr" / folder)
    for c in candidates:
        if c.is_dir() and (c.name.lower() == folder.lower() or _looks_like_a_set(c)):
            return c
    raise FileNotFoundError(
        f"the {folder} dataset was not found (looked in {', '.join(map(str, candidates))}). decodelab does not "
        f"download it: get it (benchmark sets: the EDSR/LIIF 'benchmark' archive; DIV2K: "
        f"data.vision.ee.ethz.ch/cvl/DIV2K) and put it at $DECODELAB_DATA/sr/{folder}/, or pass data_dir"
    )


def _looks_like_a_set(path: Path) -> bool:
    """A folder holding ``HR/``, ``image_SRF_*/``, ``DIV2K_*`` folders or images (not just other sets)."""
    if (path / "HR").is_dir() or any(path.glob("image_SRF_*")) or any(path.glob("DIV2K_*")):
        return True
    return any(p.suffix.lower() in IMAGE_EXTS for p in path.iterdir() if p.is_file())


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def make_lr(hr: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Crop ``hr`` ``[3, H, W]`` to a multiple of ``scale`` and bicubic-downsample it (MATLAB ``imresize``).

    Returns:
        ``(hr_cropped, lr)`` with ``lr`` of side ``floor(H / scale)`` and ``hr_cropped`` of side
        ``round(h_lr * scale)`` (exactly ``h_lr * scale`` for integer scales).

    Raises:
        ValueError: for ``scale <= 0`` or an image smaller than ``scale``.
    """
    from decodelab.datasets.resize import imresize

    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    H, W = hr.shape[-2:]
    h, w = math.floor(H / scale + 1e-9), math.floor(W / scale + 1e-9)
    if h < 1 or w < 1:
        raise ValueError(f"a {H}x{W} image is too small for scale {scale}")
    hr = hr[..., : round(h * scale), : round(w * scale)]
    return hr, imresize(hr, size=(h, w)).clamp(0, 1)


def _scale_tag(scale: float) -> str:
    return str(int(scale)) if float(scale).is_integer() else f"{scale:g}"


class SRDataset(Sequence):
    """HR images (and LR pairs when ``scale`` is given) from files or tensors.

    Args:
        hr_files: HR image paths (or ``None`` when ``hr_images`` is given).
        lr_files: per HR image, its LR file for ``scale`` or ``None`` (generated then).
        scale: SR factor; ``None`` gives HR-only samples (native reconstruction).
        names: sample names.
        hr_images: in-memory HR images ``[3, H, W]`` in ``[0, 1]`` instead of files.
        info: provenance (dataset name, root, layout).
    """

    def __init__(
        self,
        hr_files: Sequence[Path] | None,
        lr_files: Sequence[Path | None] | None = None,
        scale: float | None = None,
        names: Sequence[str] | None = None,
        hr_images: Sequence[Tensor] | None = None,
        info: dict | None = None,
    ) -> None:
        if scale is not None and not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.hr_files = list(hr_files) if hr_files is not None else None
        self.hr_images = hr_images
        n = len(self.hr_files) if self.hr_files is not None else len(hr_images or [])
        self.lr_files = list(lr_files) if lr_files is not None else [None] * n
        self.scale = scale
        self.names = list(names) if names is not None else [Path(f).stem for f in (self.hr_files or [])]
        self.info = dict(info or {})

    def __len__(self) -> int:
        return len(self.names)

    def hr(self, index: int) -> Tensor:
        if self.hr_images is not None:
            return self.hr_images[index]
        return read_image(self.hr_files[index])

    def __getitem__(self, index: int) -> SRSample:  # type: ignore[override]
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        hr = self.hr(index)
        if self.scale is None:
            return SRSample(self.names[index], hr, None, None)
        lr_file = self.lr_files[index]
        if lr_file is None:
            hr, lr = make_lr(hr, self.scale)
        else:
            lr = read_image(lr_file)
            h, w = round(lr.shape[-2] * self.scale), round(lr.shape[-1] * self.scale)
            if h > hr.shape[-2] or w > hr.shape[-1]:
                raise ValueError(f"{lr_file}: LR {tuple(lr.shape[-2:])} x{self.scale} exceeds its HR image")
            hr = hr[..., :h, :w]
        return SRSample(self.names[index], hr, lr, self.scale)


def _match_lr(hr: Path, lr_dir: Path, tag: str) -> Path | None:
    for stem in (f"{hr.stem}x{tag}", f"{hr.stem}X{tag}", hr.stem):
        for ext in IMAGE_EXTS:
            if (lr_dir / (stem + ext)).is_file():
                return lr_dir / (stem + ext)
    return None


def _benchmark(name: str, root: Path, scale: float | None) -> SRDataset:
    tag = None if scale is None else _scale_tag(scale)
    info = {"dataset": name, "root": str(root)}
    if (root / "HR").is_dir():
        hr = _images_in(root / "HR")
        lr_dir = root / "LR_bicubic" / f"X{tag}" if tag else None
        lr = [_match_lr(p, lr_dir, tag) for p in hr] if lr_dir is not None and lr_dir.is_dir() else None
        info["layout"] = "HR + LR_bicubic" if lr and all(lr) else "HR (LR generated)"
        return SRDataset(hr, lr, scale, info=info)
    srf = sorted(root.glob("image_SRF_*"))
    if srf:
        folder = root / f"image_SRF_{tag}" if tag else srf[0]
        if not folder.is_dir():
            raise FileNotFoundError(f"{root} has no image_SRF_{tag} folder (found {', '.join(p.name for p in srf)})")
        hr = sorted(p for p in _images_in(folder) if re.search(r"_HR\.\w+$", p.name))
        lr = [p.with_name(p.name.replace("_HR.", "_LR.")) for p in hr] if tag else None
        names = [re.sub(r"_SRF_\d+_HR$", "", p.stem) for p in hr]
        info["layout"] = "SelfExSR image_SRF"
        return SRDataset(hr, lr, scale, names, info=info)
    hr = _images_in(root)
    if not hr:
        raise FileNotFoundError(f"no images in {root} (expected HR/, image_SRF_*/ or image files)")
    info["layout"] = "flat (LR generated)"
    return SRDataset(hr, None, scale, info=info)


def _div2k(root: Path, split: str, scale: float | None) -> SRDataset:
    if split not in ("train", "valid"):
        raise ValueError(f"DIV2K split must be 'train' or 'valid', got {split!r}")
    hr_dir = root / f"DIV2K_{split}_HR"
    if not hr_dir.is_dir():
        raise FileNotFoundError(f"{hr_dir} not found: put DIV2K_{split}_HR/ (and DIV2K_{split}_LR_bicubic/) in {root}")
    hr = _images_in(hr_dir)
    lr = None
    if scale is not None:
        tag = _scale_tag(scale)
        lr_dir = root / f"DIV2K_{split}_LR_bicubic" / f"X{tag}"
        lr = [_match_lr(p, lr_dir, tag) for p in hr] if lr_dir.is_dir() else None
    return SRDataset(hr, lr, scale, info={"dataset": f"div2k-{split}", "root": str(root)})


def _bundled(split: str, scale: float | None) -> SRDataset:
    from decodelab.datasets.photos import BundledPhotos

    photos = BundledPhotos(split)
    images = [photos[i] for i in range(len(photos))]
    return SRDataset(None, None, scale, photos.names, images, info={"dataset": f"bundled-{split}"})


def load_sr_dataset(
    name: str, scale: float | None = None, data_dir: str | Path | None = None, split: str | None = None
) -> SRDataset:
    """Open an SR / reconstruction set.

    Args:
        name: ``set5``, ``set14``, ``b100``, ``urban100``, ``kodak``, ``div2k``, ``bundled``, or a
            folder path (read like a benchmark set).
        scale: SR factor (LR images read or generated); ``None`` for HR only.
        data_dir: where to look first (see :func:`find_sr_root`).
        split: DIV2K ``train``/``valid`` (default ``valid``); bundled ``train``/``test``/``all`` (default ``test``).

    Raises:
        FileNotFoundError: when the files are not there.
        ValueError: for an unknown name or split.
    """
    key = name.lower()
    if key == "bundled":
        return _bundled(split or "test", scale)
    if key == "div2k":
        return _div2k(find_sr_root("DIV2K", data_dir), split or "valid", scale)
    if key in BENCHMARKS:
        return _benchmark(BENCHMARKS[key], find_sr_root(key, data_dir), scale)
    if Path(name).expanduser().is_dir():
        return _benchmark(Path(name).name, Path(name).expanduser(), scale)
    raise ValueError(f"unknown SR dataset {name!r}; use one of {', '.join(sorted(set(BENCHMARKS)))}, div2k, bundled "
                     "or a folder path")  # fmt: skip


# ------------------------------------------------------------------------------------- samplers
def _draw_flips(gen: torch.Generator) -> tuple[bool, bool, bool]:
    """LIIF's ``augment``: h-flip, v-flip and transpose, each with probability 1/2."""
    hflip, vflip, transpose = (torch.rand(3, generator=gen) < 0.5).tolist()
    return bool(hflip), bool(vflip), bool(transpose)


def _augment(x: Tensor, flips: tuple[bool, bool, bool]) -> Tensor:
    """Apply ``(hflip, vflip, transpose)`` to ``[3, H, W]``."""
    hflip, vflip, transpose = flips
    if hflip:
        x = x.flip(-1)
    if vflip:
        x = x.flip(-2)
    if transpose:
        x = x.transpose(-2, -1)
    return x


def _random_crop(img: Tensor, h: int, w: int, gen: torch.Generator) -> Tensor:
    H, W = img.shape[-2:]
    y = int(torch.randint(0, H - h + 1, (1,), generator=gen))
    x = int(torch.randint(0, W - w + 1, (1,), generator=gen))
    return img[..., y : y + h, x : x + w]


def _to_float(img: Tensor) -> Tensor:
    return img.float() / 255.0 if img.dtype == torch.uint8 else img


def _queries(hr: Tensor, sample_q: int | None, gen: torch.Generator) -> dict[str, Tensor]:
    from decodelab.datasets.coords import make_cell, make_coord

    H, W = hr.shape[-2:]
    coord = make_coord((H, W))  # [HW, 2]
    gt = hr.reshape(3, -1).t()  # [HW, 3]
    if sample_q is not None:
        if sample_q > H * W:
            raise ValueError(f"sample_q={sample_q} exceeds the {H * W} pixels of a {H}x{W} target")
        pick = torch.randperm(H * W, generator=gen)[:sample_q]
        coord, gt = coord[pick], gt[pick]
    return {"coord": coord, "cell": make_cell((H, W), coord.shape[0]), "gt": gt}


class SRImplicitSampler:
    """LIIF's ``sr-implicit-downsampled`` training samples.

    Per sample: ``s ~ U(scale_min, scale_max)`` (capped by the image size), a random
    ``round(inp_size * s)`` HR crop, its bicubic (MATLAB ``imresize``) down-sampling to
    ``inp_size x inp_size``, the same random flips/transpose on both, and ``sample_q`` random HR
    pixels with their coordinates and cell size.

    Args:
        images: HR images ``[3, H, W]`` (uint8 or float in ``[0, 1]``).
        inp_size: LR side (48).
        scale_min, scale_max: the scale range (1, 4).
        sample_q: query pixels per sample (2304 = 48^2).
        augment: random flips and transpose.
    """

    def __init__(self, images: Sequence[Tensor], inp_size: int = 48, scale_min: float = 1.0, scale_max: float = 4.0,
                 sample_q: int | None = 2304, augment: bool = True) -> None:  # fmt: skip
        if not images:
            raise ValueError("the training set is empty")
        if not 0 < scale_min <= scale_max:
            raise ValueError(f"need 0 < scale_min <= scale_max, got {scale_min}, {scale_max}")
        self.images, self.inp_size = list(images), int(inp_size)
        self.scale_min, self.scale_max, self.sample_q, self.augment = scale_min, scale_max, sample_q, augment

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, index: int, gen: torch.Generator) -> dict[str, Tensor]:
        from decodelab.datasets.resize import imresize

        img = self.images[index]
        s_cap = min(self.scale_max, min(img.shape[-2:]) / self.inp_size)
        if s_cap < self.scale_min:
            raise ValueError(f"image {index} ({tuple(img.shape[-2:])}) is too small for inp_size {self.inp_size}")
        s = self.scale_min + float(torch.rand(1, generator=gen)) * (s_cap - self.scale_min)
        side = min(round(self.inp_size * s), *img.shape[-2:])
        hr = _to_float(_random_crop(img, side, side, gen))
        lr = imresize(hr, size=(self.inp_size, self.inp_size)).clamp(0, 1)
        if self.augment:
            flips = _draw_flips(gen)
            hr, lr = _augment(hr, flips), _augment(lr, flips)
        return {"inp": lr, **_queries(hr, self.sample_q, gen)}

    def batch(self, indices: Sequence[int], gen: torch.Generator) -> dict[str, Tensor]:
        items = [self.sample(int(i), gen) for i in indices]
        return {k: torch.stack([it[k] for it in items]) for k in items[0]}


class NativeCropSampler(SRImplicitSampler):
    """GB-LSR's native-reconstruction samples: a random ``crop x crop`` patch is input and target.

    Args:
        images: images ``[3, H, W]``.
        crop: crop side (GB-LSR: 256).
        sample_q: query pixels per sample (``None``: every pixel).
        augment: random flips and transpose.
        downscale: ``(lo, hi)`` with ``0 < lo <= hi <= 1``: each patch is a random ``crop / z`` square
            bicubic-resized (MATLAB ``imresize``, anti-aliased) to ``crop``, ``z ~ U(lo, hi)`` (capped by
            the image size), i.e. the image seen at a random smaller scale. ``(1, 1)`` (the default) is
            GB-LSR's recipe and draws nothing extra from the generator.
    """

    def __init__(self, images: Sequence[Tensor], crop: int = 256, sample_q: int | None = None,
                 augment: bool = True, downscale: tuple[float, float] = (1.0, 1.0)) -> None:  # fmt: skip
        super().__init__(images, crop, 1.0, 1.0, sample_q, augment)
        lo, hi = (float(v) for v in downscale)
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"downscale needs 0 < lo <= hi <= 1, got {tuple(downscale)}")
        self.downscale = (lo, hi)

    def sample(self, index: int, gen: torch.Generator) -> dict[str, Tensor]:
        from decodelab.datasets.resize import imresize

        img = self.images[index]
        if min(img.shape[-2:]) < self.inp_size:  # GB-LSR up-samples images smaller than the crop
            scale = self.inp_size / min(img.shape[-2:])
            img = imresize(_to_float(img), scale=scale).clamp(0, 1)
        lo, hi = self.downscale
        if lo == hi == 1.0:
            x = _to_float(_random_crop(img, self.inp_size, self.inp_size, gen))
        else:
            z = lo + float(torch.rand(1, generator=gen)) * (hi - lo)
            side = min(round(self.inp_size / z), *img.shape[-2:])
            region = _to_float(_random_crop(img, side, side, gen))
            x = region if side == self.inp_size else imresize(region, size=(self.inp_size,) * 2).clamp(0, 1)
        if self.augment:
            x = _augment(x, _draw_flips(gen))
        return {"inp": x, **_queries(x, self.sample_q, gen)}
