"""Offline rain synthesis over the photos bundled with scikit-image / scikit-learn / matplotlib.

Real deraining sets (Rain200H/L, Rain1400, SPA) cannot be downloaded here, so decodelab trains and
evaluates its embedded default on synthetic rain over the bundled photos
(:mod:`decodelab.datasets.photos`, fixed train/test split of photos). The streaks follow the recipe
behind the Rain100/Rain200 family (Yang et al., JORDER, CVPR'17; the Photoshop "rain" tutorial):

1. sparse random seeds (density = seeds per pixel) with random brightness;
2. motion blur of the seeds along a line of random length and angle, with a random width
   (anti-aliased line kernel, brighter in the middle) = one streak layer;
3. one to three layers with directions around a main angle (heavy rain mixes directions);
4. an optional light veil (rain accumulation) and a blend of the streak map ``R`` with the clean
   image ``B``: additive (``clip(B + R)``, JORDER's model) or screen (``1 - (1 - B)(1 - R)``);
5. the rainy image is quantised to 8 bits, as stored datasets are.

Everything is a deterministic function of a ``torch.Generator``: :class:`SyntheticRainTrain`
draws batch ``s`` from a generator seeded with ``(seed, s)``, so a run resumed at step ``s`` sees
exactly the batches it would have seen; :func:`synthetic_test_pairs` derives photo ``i``'s rain
from ``(seed, i)``.

Example:
    >>> from decodelab.derain.synth import synthetic_test_pairs
    >>> name, rainy, clean = synthetic_test_pairs()[0]  # 'astronaut', [3, 512, 512] x 2
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "RAIN_STYLES",
    "RainStyle",
    "SyntheticRainTrain",
    "add_rain",
    "cutout_",
    "rain_layer",
    "streak_kernel",
    "synthetic_test_pairs",
]


@dataclass(frozen=True)
class RainStyle:
    """Ranges the rain parameters are drawn from (uniformly), per image.

    Attributes:
        angle: main streak direction in degrees from vertical (positive = leaning right).
        angle_jitter: per-layer deviation from the main direction (degrees).
        length: streak length in pixels.
        width: streak width in pixels.
        density: streak seeds per pixel, per layer.
        intensity: peak brightness of a streak.
        layers: number of streak layers (inclusive range).
        haze: strength of the light veil blended in before the streaks.
        screen_prob: probability of the screen blend (otherwise additive).
    """

    angle: tuple[float, float] = (-30.0, 30.0)
    angle_jitter: float = 8.0
    length: tuple[float, float] = (8.0, 40.0)
    width: tuple[float, float] = (0.8, 2.4)
    density: tuple[float, float] = (0.0006, 0.005)
    intensity: tuple[float, float] = (0.35, 0.9)
    layers: tuple[int, int] = (1, 3)
    haze: tuple[float, float] = (0.0, 0.08)
    screen_prob: float = 0.5


#: Named styles: ``light`` ~ Rain200L (thin, sparse, one direction), ``heavy`` ~ Rain200H (dense,
#: long, several directions, veil), ``mixed`` spans both (the training and test default).
RAIN_STYLES: dict[str, RainStyle] = {
    "light": RainStyle(length=(8.0, 25.0), width=(0.8, 1.5), density=(0.0005, 0.002), intensity=(0.3, 0.7),
                       layers=(1, 1), haze=(0.0, 0.0)),
    "heavy": RainStyle(length=(20.0, 50.0), width=(1.2, 3.0), density=(0.002, 0.006), intensity=(0.5, 0.95),
                       layers=(2, 4), haze=(0.03, 0.12)),
    "mixed": RainStyle(),
}  # fmt: skip


def _style(style: str | RainStyle) -> RainStyle:
    if isinstance(style, RainStyle):
        return style
    if style not in RAIN_STYLES:
        raise ValueError(f"unknown rain style {style!r}; use one of {', '.join(RAIN_STYLES)} or a RainStyle")
    return RAIN_STYLES[style]


def _u(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


# ------------------------------------------------------------------------------------------ streaks
def streak_kernel(length: float, angle: float, width: float) -> Tensor:
    """Anti-aliased line ``[K, K]`` of ``length`` px at ``angle`` degrees from vertical, ``width`` px wide.

    Brightness is highest in the middle and falls to 40% at the ends (streaks fade in and out).
    """
    if length <= 0 or width <= 0:
        raise ValueError(f"length and width must be positive, got {length}, {width}")
    k = 2 * math.ceil((length + width) / 2) + 3  # odd, with a margin
    r = torch.arange(k, dtype=torch.float32) - k // 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")  # [K, K]
    a = math.radians(angle)
    dx, dy = math.sin(a), math.cos(a)  # direction of fall (y points down)
    t = (xx * dx + yy * dy).clamp(-length / 2, length / 2)  # position along the segment
    dist = torch.hypot(xx - t * dx, yy - t * dy)  # distance to the segment
    line = (width / 2 + 0.5 - dist).clamp(0, 1)
    taper = 1 - 0.6 * (2 * t / length) ** 2
    return line * taper


def _fft_conv_valid(x: Tensor, kernel: Tensor) -> Tensor:
    """'valid' 2-D convolution of ``x [H+K-1, W+K-1]`` with ``kernel [K, K]`` via the FFT."""
    hp, wp = x.shape
    k = kernel.shape[0]
    fx = torch.fft.rfft2(x, s=(hp, wp))
    fk = torch.fft.rfft2(kernel, s=(hp, wp))
    full = torch.fft.irfft2(fx * fk, s=(hp, wp))  # circular; the valid part is exact
    return full[k - 1 :, k - 1 :]


def rain_layer(
    height: int, width: int, gen: torch.Generator, *, length: float, angle: float, streak_width: float,
    density: float, intensity: float,
) -> Tensor:  # fmt: skip
    """One streak layer ``[H, W]`` in ``[0, 1]``: motion-blurred sparse seeds (seeds outside the frame
    contribute streaks that enter it)."""
    kernel = streak_kernel(length, angle, streak_width)
    k = kernel.shape[0]
    hp, wp = height + k - 1, width + k - 1
    seeds = (torch.rand(hp, wp, generator=gen) < density).float()
    seeds *= intensity * (0.6 + 0.4 * torch.rand(hp, wp, generator=gen))
    return _fft_conv_valid(seeds, kernel).clamp_(0, 1)


def add_rain(clean: Tensor, gen: torch.Generator, style: str | RainStyle = "mixed") -> Tensor:
    """Rainy version of ``clean`` (float ``[3, H, W]`` or ``[B, 3, H, W]`` in ``[0, 1]``), 8-bit quantised.

    Each image gets its own parameters drawn from ``style`` with ``gen``.
    """
    st = _style(style)
    if clean.dim() == 4:
        return torch.stack([add_rain(c, gen, st) for c in clean])
    if clean.dim() != 3 or clean.shape[0] != 3:
        raise ValueError(f"expected an RGB image [3, H, W] or a batch [B, 3, H, W], got {tuple(clean.shape)}")
    _, h, w = clean.shape
    main = _u(gen, *st.angle)
    n_layers = int(torch.randint(st.layers[0], st.layers[1] + 1, (), generator=gen))
    streaks = torch.zeros(h, w)
    for _ in range(n_layers):
        streaks += rain_layer(
            h, w, gen, length=_u(gen, *st.length), angle=main + _u(gen, -st.angle_jitter, st.angle_jitter),
            streak_width=_u(gen, *st.width), density=_u(gen, *st.density), intensity=_u(gen, *st.intensity),
        )  # fmt: skip
    streaks = streaks.clamp_(0, 1)[None]  # [1, H, W], white rain
    haze = _u(gen, *st.haze)
    base = clean.float() * (1 - haze) + haze * 0.85
    screen = float(torch.rand((), generator=gen)) < st.screen_prob
    rainy = 1 - (1 - base) * (1 - streaks) if screen else (base + streaks)
    return (rainy.clamp(0, 1) * 255).round() / 255


def cutout_(rainy: Tensor, clean: Tensor, gen: torch.Generator, p: float = 0.5, max_ratio: float = 0.5) -> None:
    """MCW-Net's CUT_OUT augmentation, in place: with probability ``p`` per image, paste a clean square
    of side ``U(0, max_ratio) * size`` at a uniform position into the rainy input (``[B, 3, S, S']``)."""
    _, _, h, w = rainy.shape
    for i in range(rainy.shape[0]):
        if float(torch.rand((), generator=gen)) >= p:
            continue
        side = int(min(h, w) * max_ratio * float(torch.rand((), generator=gen)))
        y = int(torch.randint(0, h - side + 1, (), generator=gen))
        x = int(torch.randint(0, w - side + 1, (), generator=gen))
        rainy[i, :, y : y + side, x : x + side] = clean[i, :, y : y + side, x : x + side]


# ------------------------------------------------------------------------------------------- sets
def _photos(split: str) -> tuple[list[str], list[Tensor]]:
    from decodelab.datasets.photos import BundledPhotos

    photos = BundledPhotos(split)
    return list(photos.names), [photos[i] for i in range(len(photos))]


class SyntheticRainTrain:
    """Random training crops with fresh synthetic rain; batch ``step`` is a pure function of ``(seed, step)``.

    Args:
        crop: square crop side (after scaling).
        seed: base seed.
        style: rain style name or :class:`RainStyle`.
        scale: range of the random down-scaling applied to the photo region before cropping
            (more background variety from the few bundled photos); ``(1, 1)`` disables it.
        flip: random horizontal flips (p = 0.5).
        cutout: probability of MCW-Net's cut-out augmentation (0 disables it).
        split: photo split (``train``).
    """

    def __init__(
        self,
        crop: int = 128,
        seed: int = 0,
        style: str | RainStyle = "mixed",
        scale: tuple[float, float] = (0.5, 1.0),
        flip: bool = True,
        cutout: float = 0.5,
        split: str = "train",
    ) -> None:
        if crop < 8:
            raise ValueError(f"crop must be >= 8, got {crop}")
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < lo <= hi <= 1, got {scale}")
        self.crop, self.seed, self.style = int(crop), int(seed), _style(style)
        self.scale, self.flip, self.cutout = (float(scale[0]), float(scale[1])), bool(flip), float(cutout)
        self.split = split
        self.names, self.images = _photos(split)
        small = [n for n, im in zip(self.names, self.images) if min(im.shape[1:]) < crop]
        if small:
            raise ValueError(f"crop {crop} is larger than the photos {small}; use a smaller crop")

    def info(self) -> dict[str, Any]:
        return {"dataset": f"synthetic rain over photos (split {self.split})", "photos": self.names, "crop": self.crop,
                "seed": self.seed, "style": asdict(self.style), "scale": list(self.scale), "flip": self.flip,
                "cutout": self.cutout}  # fmt: skip

    def _crop(self, img: Tensor, gen: torch.Generator) -> Tensor:
        _, h, w = img.shape
        s = _u(gen, *self.scale)
        side = min(int(round(self.crop / s)), h, w)
        y = int(torch.randint(0, h - side + 1, (), generator=gen))
        x = int(torch.randint(0, w - side + 1, (), generator=gen))
        patch = img[:, y : y + side, x : x + side]
        if side != self.crop:
            patch = F.interpolate(patch[None], size=(self.crop, self.crop), mode="bilinear", antialias=True,
                                  align_corners=False)[0].clamp(0, 1)  # fmt: skip
            patch = (patch * 255).round() / 255
        return patch

    def batch(self, step: int, batch_size: int) -> tuple[Tensor, Tensor]:
        """``(rainy, clean)``, each ``[B, 3, crop, crop]`` in ``[0, 1]``."""
        gen = torch.Generator().manual_seed(self.seed * 7_919_993 + int(step))
        clean = []
        for _ in range(batch_size):
            patch = self._crop(self.images[int(torch.randint(len(self.images), (), generator=gen))], gen)
            if self.flip and float(torch.rand((), generator=gen)) < 0.5:
                patch = patch.flip(-1)
            clean.append(patch)
        clean_t = torch.stack(clean)  # [B, 3, S, S]
        rainy = add_rain(clean_t, gen, self.style)
        if self.cutout > 0:
            cutout_(rainy, clean_t, gen, p=self.cutout)
        return rainy, clean_t


def synthetic_test_pairs(
    split: str = "test",
    seed: int = 2024,
    style: str | RainStyle = "mixed",
    multiple_of: int = 8,
    crop: int | None = None,
) -> list[tuple[str, Tensor, Tensor]]:
    """Held-out ``(name, rainy, clean)`` triples: each photo of ``split`` with rain drawn from ``(seed, i)``.

    Args:
        split: photo split (``test``: photos never seen in training).
        seed: rain seed (the test set uses the default; validation uses another).
        style: rain style.
        multiple_of: crop full photos (top-left anchored) to multiples of this (MCW-Net needs 8).
        crop: if given, a centred ``crop x crop`` window of each pair instead of the full photo.
    """
    names, images = _photos(split)
    out = []
    for i, (name, img) in enumerate(zip(names, images)):
        h, w = (img.shape[1] // multiple_of) * multiple_of, (img.shape[2] // multiple_of) * multiple_of
        clean = img[:, :h, :w]
        gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + i)
        rainy = add_rain(clean, gen, style)
        if crop is not None:
            c = min(crop, h, w)
            y, x = (h - c) // 2, (w - c) // 2
            rainy, clean = rainy[:, y : y + c, x : x + c], clean[:, y : y + c, x : x + c]
        out.append((name, rainy, clean.contiguous()))
    return out
