"""GenEval-style scoring of shapes-world images with a symbolic (weight-free) detector.

GenEval (Ghosh et al. 2023, djghosh13/geneval) scores a text-to-image model by detecting objects in
its images (Mask2Former), classifying their colours (CLIP) and checking the prompt's metadata. Here
the detector is symbolic and matched to :mod:`decodelab.datasets.shapes`:

1. **Colour fit.** Every pixel is modelled as a blend ``bg + a * (palette_k - bg)`` of the background
   and one palette colour; it is foreground when the best-fitting colour covers at least half of it
   (``a >= 0.5``), so blurred edges keep their object's extent instead of forming darker rings.
2. **Objects** are the 8-connected foreground components (``scipy.ndimage`` when available, else a
   pure-Python flood fill) of at least ``min_area`` pixels, holes filled. Each takes the majority
   colour of its confidently fitted pixels; a component with two substantial colours (touching
   objects) is split between them.
3. **Shape** from four mask features robust to blur: bounding-box fill ratio, convex-hull
   solidity, top/bottom mass asymmetry and aspect ratio; the nearest class prototype wins and the
   detection ``score`` is a soft-max confidence times an "is it any shape at all" term.

The rules are GenEval's, implemented once in :func:`decodelab.eval.geneval.evaluate_detections`
(re-exported here) and shared with the Mask2Former + CLIP detector; this detector knows each
object's colour, so no colour classifier is needed. :class:`ShapesDetector` plugs it into
:func:`decodelab.eval.geneval.score_folder` for folders in GenEval's layout.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from decodelab.datasets.shapes import BACKGROUND, PALETTE, SHAPES
from decodelab.eval.geneval import evaluate_detections, summarize
from decodelab.registry import register_metric

try:  # optional fast path
    from scipy import ndimage as _ndimage
except ImportError:  # pragma: no cover - exercised by forcing the fallback in tests
    _ndimage = None

__all__ = [
    "Detection",
    "ShapesDetector",
    "ShapesGenEval",
    "detect_objects",
    "evaluate_detections",
    "score_batch",
    "score_image",
    "shape_features",
    "to_uint8_image",
]

_COLOR_NAMES = tuple(PALETTE)
_PALETTE = np.asarray([PALETTE[c] for c in _COLOR_NAMES], dtype=np.float32)
#: Feature order of :func:`shape_features`.
FEATURE_NAMES = ("fill", "solidity", "asymmetry", "aspect", "diagonal")
#: Class prototypes in feature space (measured on clean and blurred renders of every size).
PROTOTYPES: dict[str, tuple[float, ...]] = {
    "circle": (0.79, 0.945, 0.0, 0.985, 1.04),
    "square": (0.98, 0.99, 0.0, 0.985, 1.37),
    "triangle": (0.575, 0.915, 0.43, 0.975, 1.08),
    "diamond": (0.57, 0.92, 0.0, 0.98, 0.80),
    "cross": (0.545, 0.74, 0.0, 0.985, 0.915),
}
#: Per-feature tolerance (one "unit" of distance; about 1.5x the spread seen over sizes and blurs).
FEATURE_SCALE = np.asarray([0.04, 0.035, 0.07, 0.05, 0.05], dtype=np.float32)
_PROTO = np.asarray([PROTOTYPES[s] for s in SHAPES], dtype=np.float32)
#: Distance (in tolerance units) beyond which a blob stops looking like any shape.
OUTLIER_DISTANCE = 4.0
_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass
class Detection:
    """One detected object.

    Attributes:
        shape: predicted class (one of ``SHAPES``).
        color: palette colour name.
        bbox: ``(x0, y0, x1, y1)`` in pixels (exclusive max edge, like the renderer's boxes).
        center: ``(x, y)`` box centre.
        area: mask area in pixels.
        score: confidence in [0, 1] (GenEval keeps > 0.3, > 0.9 for counting).
    """

    shape: str
    color: str
    bbox: tuple[float, float, float, float]
    center: tuple[float, float]
    area: int
    score: float

    @property
    def label(self) -> str:
        """The class name GenEval's rules match (the shape)."""
        return self.shape

    def to_dict(self) -> dict[str, Any]:
        return {
            "shape": self.shape,
            "color": self.color,
            "bbox": list(self.bbox),
            "center": list(self.center),
            "area": self.area,
            "score": round(self.score, 4),
        }


# -------------------- Image conversion and connected components ----------------------------------


def to_uint8_image(image: Any) -> np.ndarray:
    """Convert a PIL image, uint8/float ``[H, W, 3]`` array or ``[3, H, W]`` tensor to uint8 HWC.

    Float tensors/arrays are read as [-1, 1] (the datasets' convention) when they have negative
    values, as [0, 255] when their maximum exceeds 1.5, else as [0, 1]. A leading batch axis of
    size 1 is dropped.

    Raises:
        ValueError: for other shapes.
    """
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.ndim == 4 and t.shape[0] == 1:
            t = t[0]
        if t.ndim == 3 and t.shape[0] in (1, 3) and t.shape[-1] not in (1, 3):
            t = t.permute(1, 2, 0)
        image = t.numpy()
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3):
        raise ValueError(f"expected an RGB image [H, W, 3] / [3, H, W], got shape {arr.shape}")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if arr.dtype != np.uint8:
        arr = arr.astype(np.float32)
        if arr.min() < 0:
            arr = (arr + 1.0) * 127.5
        elif arr.max() <= 1.5:
            arr = arr * 255.0
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return arr


def _label_fallback(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected component labels by breadth-first flood fill (no SciPy)."""
    labels = np.zeros(mask.shape, dtype=np.int32)
    h, w = mask.shape
    n = 0
    for i0, j0 in zip(*np.nonzero(mask)):
        if labels[i0, j0]:
            continue
        n += 1
        labels[i0, j0] = n
        queue = deque([(i0, j0)])
        while queue:
            i, j = queue.popleft()
            for di in (-1, 0, 1):
                for dj in (-1, 0, 1):
                    a, b = i + di, j + dj
                    if 0 <= a < h and 0 <= b < w and mask[a, b] and not labels[a, b]:
                        labels[a, b] = n
                        queue.append((a, b))
    return labels, n


def _label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    if _ndimage is not None:
        labels, n = _ndimage.label(mask, structure=_EIGHT)
        return labels, int(n)
    return _label_fallback(mask)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill enclosed holes: background not 4-connected to the border becomes foreground."""
    if _ndimage is not None:
        return _ndimage.binary_fill_holes(mask)
    padded = np.pad(~mask, 1, constant_values=True)
    outside = np.zeros_like(padded)
    queue = deque([(0, 0)])
    outside[0, 0] = True
    h, w = padded.shape
    while queue:
        i, j = queue.popleft()
        for a, b in ((i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1)):
            if 0 <= a < h and 0 <= b < w and padded[a, b] and not outside[a, b]:
                outside[a, b] = True
                queue.append((a, b))
    return ~outside[1:-1, 1:-1]


# -------------------- Shape features and classification ------------------------------------------


def _hull_area(mask: np.ndarray) -> float:
    """Area of the convex hull of the mask's pixel squares (monotone chain on row extremes)."""
    rows = np.nonzero(mask.any(axis=1))[0]
    pts = set()
    for i in rows.tolist():
        cols = np.flatnonzero(mask[i])
        lo, hi = int(cols[0]), int(cols[-1]) + 1
        pts.update({(lo, i), (lo, i + 1), (hi, i), (hi, i + 1)})
    p = sorted(pts)
    if len(p) < 3:
        return float(mask.sum())

    def half(points: list[tuple[int, int]]) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        for q in points:
            while (
                len(out) >= 2
                and ((out[-1][0] - out[-2][0]) * (q[1] - out[-2][1]) - (out[-1][1] - out[-2][1]) * (q[0] - out[-2][0]))
                <= 0
            ):
                out.pop()
            out.append(q)
        return out

    hull = half(p)[:-1] + half(p[::-1])[:-1]
    xs = np.asarray([q[0] for q in hull], dtype=np.float64)
    ys = np.asarray([q[1] for q in hull], dtype=np.float64)
    return float(abs(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1))) / 2)


def shape_features(mask: np.ndarray) -> np.ndarray:
    """Blur-robust shape features of one object mask (cropped or not).

    Returns:
        float32 ``[5]`` (see :data:`FEATURE_NAMES`): fill ratio of the bounding box, convex-hull
        solidity, mass asymmetry ``(bottom half - top half) / area`` (apex-up triangle ~0.45),
        aspect ``min/max`` side, and diagonal extent over axis extent (diamond ~0.75, cross ~0.95,
        circle ~1.0, triangle ~1.05, square ~1.4).
    """
    mask = np.asarray(mask, dtype=bool)
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if rows.size == 0:
        return np.zeros(len(FEATURE_NAMES), dtype=np.float32)
    m = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = m.shape
    area = float(m.sum())
    per_row = m.sum(axis=1).astype(np.float64)
    y = np.arange(h) + 0.5 - h / 2  # row centre relative to the box middle
    asym = float((per_row * np.sign(y)).sum() / area)
    ys, xs = np.nonzero(m)
    u, v = xs + ys, xs - ys  # pixel squares span [u, u + 2] along (1, 1), [v - 1, v + 1] along (1, -1)
    diag = (float(u.max() - u.min()) + float(v.max() - v.min()) + 4.0) / (2 * np.sqrt(2.0))
    feats = [area / (h * w), area / max(_hull_area(m), 1.0), asym, min(h, w) / max(h, w), diag / ((h + w) / 2)]
    return np.asarray(feats, dtype=np.float32)


def classify_shape(features: np.ndarray) -> tuple[str, float]:
    """Nearest-prototype shape class and a confidence in [0, 1].

    The confidence is the soft-max probability of the winner over squared scaled distances, times
    ``exp(-(d_min - OUTLIER_DISTANCE)_+^2 / 2)`` so blobs unlike every shape get low scores.
    """
    d2 = (((features[None] - _PROTO) / FEATURE_SCALE) ** 2).sum(axis=1)
    logits = -0.5 * d2
    p = np.exp(logits - logits.max())
    p /= p.sum()
    k = int(np.argmin(d2))
    outlier = max(float(np.sqrt(d2[k])) - OUTLIER_DISTANCE, 0.0)
    return SHAPES[k], float(p[k] * np.exp(-0.5 * outlier**2))


# -------------------- Detection ------------------------------------------------------------------


def _pixel_colors(img: np.ndarray, max_residual: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Blend-model colour fit of every pixel.

    Returns:
        ``fg`` bool ``[H, W]`` (the best colour covers >= half the pixel), ``label`` int ``[H, W]``
        (best palette index), ``confident`` bool ``[H, W]`` (``fg`` and residual <= ``max_residual``)
        and ``resid2`` float ``[H, W, K]`` (squared residual to every colour's blend line).
    """
    bg = np.asarray(BACKGROUND, dtype=np.float32)
    p = img.reshape(-1, 3).astype(np.float32) - bg  # [P, 3]
    c = _PALETTE - bg  # [K, 3]
    pc = p @ c.T  # [P, K]
    cc = (c * c).sum(axis=1)  # [K]
    a = np.clip(pc / cc, 0.0, None)  # blend weight along each colour ray
    resid2 = (p * p).sum(axis=1, keepdims=True) - 2 * a * pc + a * a * cc
    k = np.argmin(resid2, axis=1)
    rows = np.arange(len(k))
    fg = a[rows, k] >= 0.5
    confident = fg & (resid2[rows, k] <= max_residual**2)
    hw = img.shape[:2]
    return fg.reshape(hw), k.reshape(hw), confident.reshape(hw), resid2.reshape(*hw, -1)


def _split_by_color(
    region: np.ndarray, label: np.ndarray, confident: np.ndarray, resid2: np.ndarray, min_area: float
) -> list[tuple[int, np.ndarray]]:
    """Split one foreground component into single-colour parts.

    Colour votes come from confidently fitted pixels. A colour is a part of its own when it has at
    least ``min_area`` votes and a quarter of all votes; otherwise the whole component takes the
    majority colour (so hue noise on blurred or compressed edges never breaks an object apart).
    """
    votes = np.bincount(label[region & confident], minlength=resid2.shape[-1])
    if votes.sum() == 0:
        return []  # no pixel looks like a palette colour
    order = np.argsort(-votes, kind="stable")
    colors = [int(k) for k in order if votes[k] >= min_area and votes[k] >= 0.25 * votes.sum()]
    if len(colors) <= 1:
        return [(int(order[0]), region)]
    nearest = np.asarray(colors)[np.argmin(resid2[..., colors], axis=-1)]
    parts = []
    for k in colors:
        comp, n = _label(region & (nearest == k))
        sizes = np.bincount(comp.ravel(), minlength=n + 1)
        parts += [(k, comp == i) for i in range(1, n + 1) if sizes[i] >= min_area]
    return parts


def detect_objects(image: Any, *, min_area: float | None = None, max_residual: float = 60.0) -> list[Detection]:
    """Find the coloured shapes in an image.

    Args:
        image: PIL image, uint8 ``[H, W, 3]`` array, or float ``[3, H, W]`` tensor in [-1, 1].
        min_area: smallest object in pixels (default ``0.006 * H * W``, 25 px at 64x64).
        max_residual: largest RGB distance from a palette colour's blend line for a pixel to vote
            for that colour.

    Returns:
        Detections sorted by decreasing score. Touching objects of one colour merge into a single
        (usually low-scoring) detection, as overlapping instances would for a real detector.
    """
    img = to_uint8_image(image)
    h, w = img.shape[:2]
    min_area = 0.006 * h * w if min_area is None else float(min_area)
    fg, label, confident, resid2 = _pixel_colors(img, max_residual)
    comp, n = _label(fg)
    sizes = np.bincount(comp.ravel(), minlength=n + 1)
    dets: list[Detection] = []
    for idx in range(1, n + 1):
        if sizes[idx] < min_area:
            continue
        ys, xs = np.nonzero(comp == idx)
        sl = (slice(int(ys.min()), int(ys.max()) + 1), slice(int(xs.min()), int(xs.max()) + 1))
        for k, part in _split_by_color(comp[sl] == idx, label[sl], confident[sl], resid2[sl], min_area):
            py, px = np.nonzero(part)
            y0, y1, x0, x1 = int(py.min()), int(py.max()) + 1, int(px.min()), int(px.max()) + 1
            mask = _fill_holes(part[y0:y1, x0:x1])
            shape, score = classify_shape(shape_features(mask))
            y0, y1, x0, x1 = y0 + sl[0].start, y1 + sl[0].start, x0 + sl[1].start, x1 + sl[1].start
            dets.append(
                Detection(
                    shape,
                    _COLOR_NAMES[k],
                    (float(x0), float(y0), float(x1), float(y1)),
                    ((x0 + x1) / 2, (y0 + y1) / 2),
                    int(mask.sum()),
                    score,
                )
            )
    dets.sort(key=lambda d: -d.score)
    return dets


# -------------------- GenEval rules --------------------------------------------------------------


class ShapesDetector:
    """:func:`detect_objects` as a GenEval detector (``detector(image) -> detections``).

    Args:
        min_area, max_residual: options of :func:`detect_objects`.
    """

    def __init__(self, min_area: float | None = None, max_residual: float = 60.0) -> None:
        self.min_area = min_area
        self.max_residual = max_residual

    def __call__(self, image: Any) -> list[Detection]:
        return detect_objects(image, min_area=self.min_area, max_residual=self.max_residual)

    def settings(self) -> dict[str, Any]:
        return {"detector": "shapes-symbolic", "min_area": self.min_area, "max_residual": self.max_residual,
                "color_classifier": "palette fit (detector)"}  # fmt: skip


def score_image(image: Any, metadata: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """Detect objects in ``image`` and judge it against ``metadata`` with GenEval's rules.

    Args:
        image: anything :func:`to_uint8_image` accepts.
        metadata: GenEval record.
        **kwargs: options of :func:`evaluate_detections` plus ``min_area``/``max_residual`` of
            :func:`detect_objects`.

    Returns:
        ``{"correct": bool, "reason": str, "detections": list[Detection], "tag": str}``.
    """
    det_kw = {k: kwargs.pop(k) for k in ("min_area", "max_residual") if k in kwargs}
    dets = detect_objects(image, **det_kw)
    correct, reason = evaluate_detections(dets, metadata, **kwargs)
    return {"correct": bool(correct), "reason": reason, "detections": dets, "tag": metadata.get("tag", "")}


def score_batch(images: Sequence[Any] | torch.Tensor, metadatas: Sequence[dict[str, Any]], **kwargs: Any) -> dict:
    """Score many images; GenEval's summary.

    Args:
        images: a sequence of images or a ``[B, 3, H, W]`` tensor.
        metadatas: one GenEval record per image.
        **kwargs: forwarded to :func:`score_image`.

    Returns:
        ``{"per_image": [...], "per_task": {tag: accuracy}, "overall": mean of the task scores,
        "image_accuracy": mean over images, "prompt_accuracy": share of distinct prompts with at
        least one correct image, "num_images": n}`` (GenEval's ``summary_scores.py`` numbers).

    Raises:
        ValueError: when the numbers of images and records differ.
    """
    if len(images) != len(metadatas):
        raise ValueError(f"got {len(images)} images but {len(metadatas)} metadata records")
    per_image = [score_image(img, md, **kwargs) for img, md in zip(images, metadatas)]
    records = [{"tag": r["tag"], "correct": r["correct"], "metadata": md} for r, md in zip(per_image, metadatas)]
    return {"per_image": per_image, **{k: v for k, v in summarize(records).items() if k != "num_prompts"}}


@register_metric("shapes_geneval", kind="geneval")
class ShapesGenEval:
    """GenEval-style metric for the shapes world (symbolic detector; no weights).

    Args:
        threshold: detection score kept for non-counting tasks (GenEval 0.3).
        counting_threshold: detection score kept for counting (GenEval 0.9).
        max_objects: detections kept per class (GenEval 16).
        position_threshold: relative-position margin (GenEval 0.1).

    Calling the metric with ``(images, metadatas)`` returns :func:`score_batch`'s dict.
    """

    def __init__(
        self,
        threshold: float = 0.3,
        counting_threshold: float = 0.9,
        max_objects: int = 16,
        position_threshold: float = 0.1,
    ) -> None:
        self.options = {
            "threshold": threshold,
            "counting_threshold": counting_threshold,
            "max_objects": max_objects,
            "position_threshold": position_threshold,
        }

    def __call__(self, images: Sequence[Any] | torch.Tensor, metadatas: Sequence[dict[str, Any]]) -> dict:
        return score_batch(images, metadatas, **self.options)

    def __repr__(self) -> str:
        return "ShapesGenEval(" + ", ".join(f"{k}={v}" for k, v in self.options.items()) + ")"
