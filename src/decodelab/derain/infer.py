"""Deraining inference: horizontal-flip self-ensemble and overlapping tiles with blended seams.

:func:`derain` runs any image-to-image module (an :class:`~decodelab.derain.model.MCWNet` or a
user's network) on one image or a batch. Images larger than ``tile`` are processed in overlapping
``tile x tile`` windows, one at a time, and the window outputs are blended with weights that ramp
linearly across each overlap (weight 1 at the image border), so memory stays bounded by one tile
plus the full-size output, whatever the photo size. The authors' test script (github.com/yechanp/
MCW-Net ``test.py``) uses the same 512-pixel windows with 32-pixel overlaps (averaged uniformly
there) and averages the prediction with the flipped prediction of the flipped image.

Example:
    >>> from decodelab.derain import derain, load_derainer
    >>> model = load_derainer("mcwnet-small-synthetic")  # doctest: +SKIP
    >>> clean = derain(model, "rainy.jpg")  # a PIL image  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from decodelab.datasets.sr import read_image as load_image  # one image reader for the package

__all__ = ["DEFAULT_MODEL", "derain", "load_derainer", "load_image", "save_image", "tile_starts"]

#: The shipped embedded-default derainer (``src/decodelab/assets/<name>``).
DEFAULT_MODEL = "mcwnet-small-synthetic"
DEFAULT_TILE = 512
DEFAULT_OVERLAP = 32


# ---------------------------------------------------------------------------------------- image IO
def save_image(image: Tensor, path: str | Path) -> Path:
    """Write a ``[3, H, W]`` float image in ``[0, 1]`` (clamped, rounded to 8 bits); format from the suffix."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    Image.fromarray(arr).save(path)
    return path


def _to_batch(image: Any) -> tuple[Tensor, str]:
    """Any supported input as float ``[B, 3, H, W]`` plus a tag saying how to convert back."""
    if isinstance(image, (str, Path)):
        return load_image(image)[None], "pil"
    if isinstance(image, Tensor):
        if image.dim() == 3 and image.shape[0] == 3:
            return image.float()[None], "chw"
        if image.dim() == 4 and image.shape[1] == 3:
            return image.float(), "bchw"
        raise ValueError(f"expected an RGB tensor [3, H, W] or [B, 3, H, W] in [0, 1], got {tuple(image.shape)}")
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an RGB array [H, W, 3], got shape {image.shape}")
        scale = 255.0 if image.dtype == np.uint8 else 1.0
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()[None] / scale, (
            "uint8" if image.dtype == np.uint8 else "hwc"
        )
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a core dependency
        Image = None
    if Image is not None and isinstance(image, Image.Image):
        from decodelab.datasets.sr import pil_to_tensor

        return pil_to_tensor(image)[None], "pil"  # 16-bit and float modes scaled, EXIF orientation applied
    raise ValueError(
        f"unsupported image type {type(image).__name__}: pass a tensor, an RGB array, a PIL image or a path"
    )


def _from_batch(x: Tensor, kind: str) -> Any:
    if kind == "bchw":
        return x
    if kind == "chw":
        return x[0]
    if kind == "hwc":
        return x[0].permute(1, 2, 0).numpy()
    arr = (x[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    if kind == "uint8":
        return arr
    from PIL import Image

    return Image.fromarray(arr)


# ------------------------------------------------------------------------------------------ tiling
def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Window starts covering ``range(size)`` with windows of ``tile`` overlapping by at least ``overlap``.

    The last window is aligned to the end (as the authors' test script does).

    Raises:
        ValueError: when ``overlap`` is not in ``[0, tile)``.
    """
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile), got overlap={overlap}, tile={tile}")
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


def _ramp(length: int, overlap: int, ramp_start: bool, ramp_end: bool) -> Tensor:
    """1-D blending weights: linear ramps ``1/(o+1) .. o/(o+1)`` over the overlaps, 1 elsewhere."""
    w = torch.ones(length)
    n = min(overlap, length)
    if n > 0:
        up = torch.arange(1, n + 1, dtype=torch.float32) / (n + 1)
        if ramp_start:
            w[:n] = torch.minimum(w[:n], up)
        if ramp_end:
            w[length - n :] = torch.minimum(w[length - n :], up.flip(0))
    return w


def _tiled(run: Any, x: Tensor, tile: int, overlap: int, device: torch.device, progress: bool) -> Tensor:
    b, c, h, w = x.shape
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    th, tw = min(tile, h), min(tile, w)
    acc = torch.zeros(b, c, h, w)  # [B, 3, H, W] on the CPU: bounded by the output size
    wsum = torch.zeros(1, 1, h, w)
    windows = [(y0, x0) for y0 in ys for x0 in xs]
    it: Any = windows
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(windows, desc="tiles")
    for y0, x0 in it:
        wy = _ramp(th, overlap, y0 > 0, y0 + th < h)
        wx = _ramp(tw, overlap, x0 > 0, x0 + tw < w)
        weight = (wy[:, None] * wx[None, :])[None, None]  # [1, 1, th, tw]
        out = run(x[:, :, y0 : y0 + th, x0 : x0 + tw].to(device)).float().cpu()
        acc[:, :, y0 : y0 + th, x0 : x0 + tw] += out * weight
        wsum[:, :, y0 : y0 + th, x0 : x0 + tw] += weight
    return acc.div_(wsum)


# ----------------------------------------------------------------------------------------- derain
@torch.no_grad()
def derain(
    model: nn.Module,
    image: Any,
    *,
    tile: int | None = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    self_ensemble: bool = True,
    clamp: bool = True,
    progress: bool = False,
) -> Any:
    """Derain one image or a batch.

    Args:
        model: a module mapping ``[B, 3, h, w]`` in ``[0, 1]`` to the derained ``[B, 3, h, w]``
            (run in eval mode on its own device).
        image: a float tensor ``[3, H, W]`` / ``[B, 3, H, W]`` in ``[0, 1]``, an RGB array
            ``[H, W, 3]`` (``uint8`` or float in ``[0, 1]``), a PIL image, or an image path.
        tile: window size for images larger than it (``None``: the whole image at once).
        overlap: minimum overlap of neighbouring windows, blended linearly.
        self_ensemble: average with the flipped output of the horizontally flipped input.
        clamp: clamp the result to ``[0, 1]``.
        progress: show a progress bar over the windows.

    Returns:
        The derained image in the input's form (tensor, array, PIL image; a path gives a PIL image).

    Raises:
        ValueError: for an unsupported input or invalid ``tile``/``overlap``.
    """
    if tile is not None and tile < 8:
        raise ValueError(f"tile must be >= 8 pixels (or None for no tiling), got {tile}")
    x, kind = _to_batch(image)
    was_training = model.training
    model.eval()
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32

    def run(t: Tensor) -> Tensor:  # [B, 3, h, w] on ``device``
        t = t.to(dtype)
        out = model(t)
        if self_ensemble:
            out = (out + model(t.flip(-1)).flip(-1)) / 2
        return out

    try:
        h, w = x.shape[-2:]
        if tile is None or (h <= tile and w <= tile):
            out = run(x.to(device)).float().cpu()
        else:
            out = _tiled(run, x, tile, overlap, device, progress)
    finally:
        model.train(was_training)
    if clamp:
        out = out.clamp_(0, 1)
    return _from_batch(out, kind)


# -------------------------------------------------------------------------------------- loading
def load_derainer(name_or_path: str | Path = DEFAULT_MODEL, **kwargs: Any) -> nn.Module:
    """Load a deraining model by shipped-asset name, native directory or upstream ``.pth`` file.

    Args:
        name_or_path: a shipped asset (``mcwnet-small-synthetic``), a directory with ``config.json``
            + ``model.safetensors`` (``save_pretrained``), a Hugging Face id in the local cache, or
            the authors' ``.pth`` checkpoint (architecture inferred from its shapes).
        **kwargs: passed to :func:`decodelab.hub.load_pretrained` (e.g. ``cache_dir``).

    Raises:
        FileNotFoundError: when nothing is found; for the default asset the message says how to train it.
    """
    from decodelab import hub
    from decodelab.assets import ASSETS_DIR

    from .importer import import_mcwnet

    path = Path(str(name_or_path)).expanduser()
    if path.suffix in (".pth", ".pt", ".tar") and path.is_file():
        return import_mcwnet(path, None)
    if path.is_dir():
        return hub.load_pretrained(path, **kwargs).eval()
    asset = ASSETS_DIR / str(name_or_path)
    if (asset / hub.CONFIG_NAME).is_file():
        return hub.load_pretrained(asset, **kwargs).eval()
    if str(name_or_path) == DEFAULT_MODEL:
        raise FileNotFoundError(
            f"the default derainer {DEFAULT_MODEL!r} is not in this installation ({asset} is missing). Train it "
            "on synthetic rain over the bundled photos with `decodelab train --config configs/mcwnet/"
            "synthetic-small.yaml` (about 45 minutes on one CPU thread) and copy the run's final/ directory to "
            f"{asset}, or pass --model <directory with config.json + model.safetensors>."
        )
    from decodelab.registry import MODELS

    if str(name_or_path) in MODELS:
        raise FileNotFoundError(
            f"{name_or_path!r} is an architecture without trained weights; pass a checkpoint directory "
            "(config.json + model.safetensors) or the authors' .pth file"
        )
    return hub.load_pretrained(name_or_path, **kwargs).eval()
