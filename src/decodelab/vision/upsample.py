"""Pixel-space up-sampler between two token grids (MuLo-SD's training-free ``U_r`` and its ``D_r``).

:class:`PixelUpsampler` implements :class:`decodelab.speculative.mulo.Upsampler`: drafter tokens are
decoded by the drafter's tokenizer, the image is resized to the target tokenizer's input size and
re-encoded, which gives ``r^2`` times more tokens (MuLo-SD, arXiv:2601.05149: decode, off-the-shelf
super-resolution, re-encode). The reverse map down-samples the target's image (antialiased) and
encodes it with the drafter's tokenizer, giving the drafter its next prefix.

The resize is ``"bicubic"`` (default), ``"bilinear"``, ``"nearest"`` or any callable
``(images [B, C, h, w] in [-1, 1], size (H, W)) -> images [B, C, H, W]`` — e.g. :class:`LSRResize`,
which renders the images with a continuous super-resolution model (decodelab's shipped
``lsr-sr-small``, the model ``decodelab upscale`` uses; grey images go through it as RGB and come
back as their channel mean).

Example:
    >>> from decodelab.vision.tokenizers import test_vq
    >>> low_vq, high_vq = test_vq().eval(), test_vq().eval()
    >>> up = PixelUpsampler(low_vq, high_vq)
    >>> up.upsample(torch.zeros(1, 2, 2, dtype=torch.long), (4, 4)).shape
    torch.Size([1, 4, 4])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["RESIZE_MODES", "LSRResize", "PixelUpsampler"]

RESIZE_MODES = ("bicubic", "bilinear", "nearest")

Resize = Callable[[Tensor, tuple[int, int]], Tensor]


def _resize(images: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    if mode == "nearest":
        return F.interpolate(images, size=size, mode="nearest")
    down = size[0] < images.shape[-2] or size[1] < images.shape[-1]
    return F.interpolate(images, size=size, mode=mode, align_corners=False, antialias=down)


class LSRResize:
    """A continuous image model as :class:`PixelUpsampler`'s resize: ``(images [-1, 1], (H, W)) -> images``.

    Args:
        model: a :class:`~decodelab.vision.lsr.ContinuousImageModel` (``render(images [0, 1], size)``),
            e.g. ``load_lsr_model(<assets>/lsr-sr-small)``.
        chunk: queries per rendering pass (bounds memory; ``None``: all at once).
        name: how records name this resize (e.g. ``"lsr"`` or the model's directory).
    """

    def __init__(self, model: Any, chunk: int | None = 4096, name: str = "lsr") -> None:
        if not hasattr(model, "render"):
            raise ValueError(f"{type(model).__name__} has no render(images, size): pass a continuous image model")
        self.model, self.chunk, self.name = model.eval(), chunk, name

    def __repr__(self) -> str:
        return f"LSRResize({self.name!r})"

    @torch.no_grad()
    def __call__(self, images: Tensor, size: tuple[int, int]) -> Tensor:
        C = images.shape[1]  # [B, C, h, w] in [-1, 1]
        if C not in (1, 3):
            raise ValueError(f"the LSR up-sampler takes grey or RGB images, got {C} channels")
        x = ((images.float() + 1) / 2).expand(-1, 3, -1, -1)  # [B, 3, h, w] in [0, 1]
        dev = next(self.model.parameters()).device
        out = self.model.render(x.to(dev), (int(size[0]), int(size[1])), chunk=self.chunk)  # [B, 3, H, W]
        if C == 1:
            out = out.mean(1, keepdim=True)
        return (out * 2 - 1).to(images.device, images.dtype)


class PixelUpsampler:
    """Decode with one tokenizer, resize, re-encode with the other.

    Args:
        drafter_tokenizer: the low-resolution model's tokenizer (``decode``/``encode``, ``downsample_factor``).
        target_tokenizer: the target model's tokenizer.
        method: resize used by :meth:`upsample`: one of :data:`RESIZE_MODES` or a callable
            ``(images, (H, W)) -> images``.
        down_method: resize used by :meth:`downsample` (antialiased when shrinking): one of :data:`RESIZE_MODES`.
    """

    def __init__(
        self,
        drafter_tokenizer: Any,
        target_tokenizer: Any,
        method: str | Resize = "bicubic",
        down_method: str = "bicubic",
    ) -> None:
        for label, m in (("method", method), ("down_method", down_method)):
            if isinstance(m, str) and m not in RESIZE_MODES:
                raise ValueError(f"{label} must be one of {RESIZE_MODES} or a callable (images, size), got {m!r}")
        if not isinstance(down_method, str):
            raise ValueError(f"down_method must be one of {RESIZE_MODES}, got {down_method!r}")
        if not (isinstance(method, str) or callable(method)):
            raise ValueError(f"method must be one of {RESIZE_MODES} or a callable (images, size), got {method!r}")
        for label, tok in (("drafter_tokenizer", drafter_tokenizer), ("target_tokenizer", target_tokenizer)):
            missing = [a for a in ("encode", "decode", "downsample_factor") if not hasattr(tok, a)]
            if missing:
                raise ValueError(f"{label} ({type(tok).__name__}) lacks {', '.join(missing)}: pass a VQ tokenizer")
        self.drafter_tokenizer, self.target_tokenizer = drafter_tokenizer, target_tokenizer
        self.method, self.down_method = method, down_method

    def _apply(self, images: Tensor, size: tuple[int, int]) -> Tensor:
        if callable(self.method):
            out = self.method(images, size)
            if tuple(out.shape[-2:]) != tuple(size):
                raise ValueError(f"the up-sampling callable returned {tuple(out.shape[-2:])} images, not {size}")
            return out
        return _resize(images, size, self.method)

    @staticmethod
    def _pixels(tokenizer: Any, grid: tuple[int, int]) -> tuple[int, int]:
        f = tokenizer.downsample_factor
        return grid[0] * f, grid[1] * f

    @torch.no_grad()
    def upsample(self, low: Tensor, grid: tuple[int, int]) -> Tensor:
        """Drafter tokens ``[B, h, w]`` -> target tokens ``[B, H, W]``."""
        images = self.drafter_tokenizer.decode(low).clamp(-1, 1)
        images = self._apply(images, self._pixels(self.target_tokenizer, grid)).clamp(-1, 1)
        out = self.target_tokenizer.encode(images)
        if tuple(out.shape[-2:]) != tuple(grid):
            raise ValueError(f"the target tokenizer gave a {tuple(out.shape[-2:])} grid, expected {tuple(grid)}")
        return out

    @torch.no_grad()
    def downsample(self, tokens: Tensor, grid: tuple[int, int]) -> Tensor:
        """Target tokens ``[B, H, W]`` -> drafter tokens ``[B, h, w]``."""
        images = self.target_tokenizer.decode(tokens).clamp(-1, 1)
        images = _resize(images, self._pixels(self.drafter_tokenizer, grid), self.down_method).clamp(-1, 1)
        out = self.drafter_tokenizer.encode(images)
        if tuple(out.shape[-2:]) != tuple(grid):
            raise ValueError(f"the drafter tokenizer gave a {tuple(out.shape[-2:])} grid, expected {tuple(grid)}")
        return out

    def codebook_vectors(self) -> Tensor:
        """The target tokenizer's code vectors ``[V, D]`` as its lookup compares them (for k-NN pooling)."""
        quantize = getattr(self.target_tokenizer, "quantize", None)
        if quantize is None or not hasattr(quantize, "codebook"):
            raise ValueError(f"{type(self.target_tokenizer).__name__} exposes no codebook (quantize.codebook())")
        return quantize.codebook().detach()
