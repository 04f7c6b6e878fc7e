"""Shapes world: a deterministic procedural text-to-image dataset with GenEval-style captions.

Each sample is a small RGB image of flat-coloured shapes on a near-black background, a caption and
its ground truth: the drawn objects and a metadata record in the format of GenEval's
``prompts/evaluation_metadata.jsonl`` (djghosh13/geneval)::

    {"tag": "position",
     "include": [{"class": "square", "count": 1},
                 {"class": "circle", "count": 1, "position": ["left of", 0]}],
     "prompt": "a photo of a circle left of a square"}

The six task families (``tag``) and prompt templates follow GenEval's ``prompts/create_prompts.py``:
``single_object`` "a photo of a circle" (no colour word, as upstream); ``two_object`` "a photo of a
circle and a square"; ``counting`` "a photo of three triangles"; ``colors`` "a photo of a blue
square" / "an orange square"; ``position`` "a photo of a circle left of a square"; ``color_attr``
"a photo of a red circle and a green square" (two different shapes, two different colours).

Position convention (as upstream): the *reference* object is ``include[0]``; the described object
is ``include[1]`` with ``"position": [relation, 0]``, meaning "include[1] is <relation> include[0]".
Counting uses 2..4 objects like GenEval (a count of 1 is the single-object task) and stores an
``exclude`` entry with ``count = N + 1`` ("fewer than N+1", i.e. exactly N).

Scenes hold exactly the objects the metadata asks for, so no distractors: objects whose colour
the prompt leaves open get a random palette colour. Objects never overlap (their bounding boxes are
at least :data:`MIN_GAP` px apart) and stay inside the canvas; positional layouts satisfy GenEval's
``relative_position`` rule with a safety margin (see :func:`relative_position`).

Randomness: every function takes an explicit ``numpy.random.Generator``; :class:`ShapesWorld` seeds
item ``i`` with ``SeedSequence([seed, i])`` so an item never depends on which others were read.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from decodelab.registry import register_dataset

__all__ = [
    "BACKGROUND",
    "COLORS",
    "FAMILIES",
    "PALETTE",
    "RELATIONS",
    "SHAPES",
    "VOCAB",
    "ShapeObject",
    "ShapesWorld",
    "collate_shapes",
    "make_prompt_set",
    "read_jsonl",
    "relative_position",
    "render_scene",
    "sample_prompt",
    "sample_scene",
    "validate_metadata",
    "write_jsonl",
]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")
PLURALS: dict[str, str] = {s: (s + "es" if s.endswith("s") else s + "s") for s in SHAPES}
#: Colour name -> RGB. GenEval's colour words minus the ambiguous ones here (brown; black is the
#: background); chosen so every pair is far apart even as a blend with the background.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (235, 25, 30),
    "orange": (255, 125, 0),
    "yellow": (240, 235, 30),
    "green": (20, 205, 40),
    "blue": (35, 80, 255),
    "purple": (155, 35, 235),
    "pink": (255, 115, 190),
    "white": (245, 245, 245),
}
COLORS: tuple[str, ...] = tuple(PALETTE)
BACKGROUND: tuple[int, int, int] = (16, 16, 16)
FAMILIES: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
#: Count words; counting prompts go up to ``max_count`` <= 6 (more objects rarely fit on 64 px).
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six")
#: Object diameters (px) on a 64 px canvas; scaled linearly for other canvas sizes.
OBJECT_SIZES: tuple[int, ...] = (16, 19, 22, 26)
#: Minimum gap (px at 64) between object bounding boxes, and between a box and the canvas border.
MIN_GAP = 3
EDGE_MARGIN = 2
#: GenEval's ``position_threshold`` (evaluation/evaluate_images.py default).
POSITION_THRESHOLD = 0.1
#: Stricter threshold that generated layouts also satisfy, so small box jitter keeps the relation.
LAYOUT_POSITION_THRESHOLD = 0.25
#: Cross arm width as a fraction of the object size.
CROSS_ARM = 0.33

VOCAB: dict[str, tuple[Any, ...]] = {
    "shapes": SHAPES,
    "colors": COLORS,
    "families": FAMILIES,
    "relations": RELATIONS,
    "counts": (2, 3, 4),
    "sizes": OBJECT_SIZES,
}


@dataclass(frozen=True)
class ShapeObject:
    """One drawn object.

    Attributes:
        shape: one of :data:`SHAPES`.
        color: one of :data:`COLORS`.
        center: ``(x, y)`` in pixels (continuous; pixel ``(i, j)`` covers ``[j, j+1) x [i, i+1)``).
        size: diameter / side length in pixels (the bounding box is ``size`` x ``size``).
    """

    shape: str
    color: str
    center: tuple[float, float]
    size: float

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)`` in pixels, GenEval/mmdet box order."""
        r = self.size / 2
        return (self.center[0] - r, self.center[1] - r, self.center[0] + r, self.center[1] + r)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly record: shape, color, bbox, center, size."""
        return {
            "shape": self.shape,
            "color": self.color,
            "bbox": [round(v, 3) for v in self.bbox],
            "center": [round(v, 3) for v in self.center],
            "size": round(float(self.size), 3),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShapeObject:
        return cls(str(d["shape"]), str(d["color"]), (float(d["center"][0]), float(d["center"][1])), float(d["size"]))


# -------------------- Geometry -------------------------------------------------------------------


def relative_position(
    box_a: Sequence[float], box_b: Sequence[float], threshold: float = POSITION_THRESHOLD
) -> set[str]:
    """Relations of box A with respect to box B under GenEval's rule.

    GenEval (``evaluation/evaluate_images.py``, ``relative_position``) compares box centres: the
    offset ``c_a - c_b`` is shrunk per axis by ``threshold * (dim_a + dim_b)`` (never past zero);
    if both shrunk components are ~0 there is no relation, otherwise the shrunk offset is divided
    by the *unshrunk* offset's length and A is "left of" B when x < -0.5, "right of" when x > 0.5,
    "above" when y < -0.5 and "below" when y > 0.5 (image y points down).

    Args:
        box_a: ``(x0, y0, x1, y1)`` of A.
        box_b: ``(x0, y0, x1, y1)`` of B.
        threshold: the size-relative margin (GenEval's default 0.1).

    Returns:
        A set of relation names from :data:`RELATIONS` (possibly empty, possibly two).
    """
    ax0, ay0, ax1, ay1 = (float(v) for v in box_a[:4])
    bx0, by0, bx1, by1 = (float(v) for v in box_b[:4])
    ox, oy = (ax0 + ax1 - bx0 - bx1) / 2, (ay0 + ay1 - by0 - by1) / 2
    sx = math.copysign(max(abs(ox) - threshold * (abs(ax1 - ax0) + abs(bx1 - bx0)), 0.0), ox)
    sy = math.copysign(max(abs(oy) - threshold * (abs(ay1 - ay0) + abs(by1 - by0)), 0.0), oy)
    if abs(sx) < 1e-3 and abs(sy) < 1e-3:
        return set()
    norm = math.hypot(ox, oy)
    dx, dy = sx / norm, sy / norm
    rels = set()
    if dx < -0.5:
        rels.add("left of")
    if dx > 0.5:
        rels.add("right of")
    if dy < -0.5:
        rels.add("above")
    if dy > 0.5:
        rels.add("below")
    return rels


def _inside(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Boolean membership of points at offsets ``(dx, dy)`` from the centre, for half-size ``r``."""
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return (np.abs(dx) <= r) & (np.abs(dy) <= r)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= r
    if shape == "triangle":  # apex up at (0, -r), base on y = +r spanning x in [-r, r]
        return (dy <= r) & (np.abs(dx) <= (dy + r) / 2)
    if shape == "cross":
        h = CROSS_ARM * r
        ax, ay = np.abs(dx), np.abs(dy)
        return ((ax <= r) & (ay <= h)) | ((ax <= h) & (ay <= r))
    raise ValueError(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")


def _as_object(obj: ShapeObject | dict[str, Any]) -> ShapeObject:
    return obj if isinstance(obj, ShapeObject) else ShapeObject.from_dict(obj)


def render_scene(
    objects: Iterable[ShapeObject | dict[str, Any]],
    size: int = 64,
    *,
    supersample: int = 4,
    as_pil: bool = False,
) -> np.ndarray | Image.Image:
    """Draw objects on the uniform :data:`BACKGROUND`.

    Edges are anti-aliased by ``supersample**2`` samples per pixel; interiors are the pure palette
    colour.

    Args:
        objects: :class:`ShapeObject` s or their ``to_dict()`` records.
        size: canvas side length in pixels.
        supersample: anti-aliasing samples per pixel side (1 = aliased).
        as_pil: return a ``PIL.Image`` instead of an array.

    Returns:
        uint8 ``[size, size, 3]`` array (or an RGB PIL image).
    """
    canvas = np.empty((size, size, 3), dtype=np.float32)
    canvas[:] = BACKGROUND
    bg = np.asarray(BACKGROUND, dtype=np.float32)
    n = int(supersample)
    sub = (np.arange(n, dtype=np.float32) + 0.5) / n
    for obj in map(_as_object, objects):
        if obj.color not in PALETTE:
            raise ValueError(f"unknown color {obj.color!r}; choose from {', '.join(COLORS)}")
        x0, y0, x1, y1 = obj.bbox
        j0, i0 = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
        j1, i1 = min(int(np.ceil(x1)), size), min(int(np.ceil(y1)), size)
        if j1 <= j0 or i1 <= i0:
            continue
        xs = (np.arange(j0, j1, dtype=np.float32)[:, None] + sub).reshape(-1) - obj.center[0]
        ys = (np.arange(i0, i1, dtype=np.float32)[:, None] + sub).reshape(-1) - obj.center[1]
        hit = _inside(obj.shape, xs[None, :], ys[:, None], obj.size / 2)  # [h*n, w*n]
        alpha = hit.reshape(i1 - i0, n, j1 - j0, n).mean(axis=(1, 3), dtype=np.float32)[..., None]
        color = np.asarray(PALETTE[obj.color], dtype=np.float32)
        region = canvas[i0:i1, j0:j1]
        region += alpha * (color - bg)  # objects never overlap: blend against the background
    out = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return Image.fromarray(out, "RGB") if as_pil else out


# -------------------- Prompts (GenEval metadata) -------------------------------------------------


def _article(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _pick(rng: np.random.Generator, items: Sequence[str], k: int = 1) -> list[str]:
    return [items[i] for i in rng.choice(len(items), size=k, replace=False)]


def _check_max_count(max_count: int) -> None:
    if not 2 <= max_count < len(NUMBER_WORDS):
        raise ValueError(f"max_count must be in 2..{len(NUMBER_WORDS) - 1}, got {max_count}")


def sample_prompt(rng: np.random.Generator, family: str, max_count: int = 4) -> dict[str, Any]:
    """Draw one GenEval-format metadata record of task ``family``.

    Args:
        rng: the random generator.
        family: one of :data:`FAMILIES`.
        max_count: largest count of the ``counting`` task (counts are 2..max_count, as GenEval).

    Returns:
        ``{"tag", "include", ["exclude"], "prompt"}`` exactly as in GenEval's metadata file.
    """
    if family == "single_object":
        (a,) = _pick(rng, SHAPES)
        return {"tag": family, "include": [{"class": a, "count": 1}], "prompt": f"a photo of {_article(a)}"}
    if family == "two_object":
        a, b = _pick(rng, SHAPES, 2)
        return {
            "tag": family,
            "include": [{"class": a, "count": 1}, {"class": b, "count": 1}],
            "prompt": f"a photo of {_article(a)} and {_article(b)}",
        }
    if family == "counting":
        _check_max_count(max_count)
        (a,) = _pick(rng, SHAPES)
        n = int(rng.integers(2, max_count, endpoint=True))
        return {
            "tag": family,
            "include": [{"class": a, "count": n}],
            "exclude": [{"class": a, "count": n + 1}],
            "prompt": f"a photo of {NUMBER_WORDS[n]} {PLURALS[a]}",
        }
    if family == "colors":
        (a,) = _pick(rng, SHAPES)
        (c,) = _pick(rng, COLORS)
        return {
            "tag": family,
            "include": [{"class": a, "count": 1, "color": c}],
            "prompt": f"a photo of {_article(c)} {a}",
        }
    if family == "position":
        a, b = _pick(rng, SHAPES, 2)  # a is described relative to the reference b
        (rel,) = _pick(rng, RELATIONS)
        return {
            "tag": family,
            "include": [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [rel, 0]}],
            "prompt": f"a photo of {_article(a)} {rel} {_article(b)}",
        }
    if family == "color_attr":
        a, b = _pick(rng, SHAPES, 2)
        ca, cb = _pick(rng, COLORS, 2)
        return {
            "tag": family,
            "include": [{"class": a, "count": 1, "color": ca}, {"class": b, "count": 1, "color": cb}],
            "prompt": f"a photo of {_article(ca)} {a} and {_article(cb)} {b}",
        }
    raise ValueError(f"unknown task family {family!r}; choose from {', '.join(FAMILIES)}")


def validate_metadata(metadata: dict[str, Any]) -> None:
    """Check that a metadata record is well formed and uses this world's vocabulary.

    Raises:
        ValueError: naming the offending field.
    """
    if not isinstance(metadata, dict) or "include" not in metadata:
        raise ValueError(f"metadata must be a dict with an 'include' list, got {metadata!r}")
    include = metadata["include"]
    if not isinstance(include, list) or not include:
        raise ValueError(f"metadata 'include' must be a non-empty list, got {include!r}")
    for g, req in enumerate(include):
        if req.get("class") not in SHAPES:
            raise ValueError(f"include[{g}] class {req.get('class')!r} is not a shape ({', '.join(SHAPES)})")
        if not isinstance(req.get("count"), int) or req["count"] < 1:
            raise ValueError(f"include[{g}] count must be a positive int, got {req.get('count')!r}")
        if "color" in req and req["color"] not in PALETTE:
            raise ValueError(f"include[{g}] color {req['color']!r} is not one of {', '.join(COLORS)}")
        if "position" in req:
            pos = req["position"]
            if (
                not isinstance(pos, (list, tuple))
                or len(pos) != 2
                or pos[0] not in RELATIONS
                or not isinstance(pos[1], int)
                or not 0 <= pos[1] < g
            ):
                raise ValueError(f"include[{g}] position must be [relation, index of an earlier include], got {pos!r}")
    for req in metadata.get("exclude", []):
        if req.get("class") not in SHAPES or not isinstance(req.get("count"), int):
            raise ValueError(f"exclude entries need a shape 'class' and an int 'count', got {req!r}")


# -------------------- Layouts --------------------------------------------------------------------


def _gap_ok(box: tuple[float, ...], others: list[ShapeObject], gap: float) -> bool:
    for o in others:
        b = o.bbox
        sep = max(box[0] - b[2], b[0] - box[2], box[1] - b[3], b[1] - box[3])
        if sep < gap:
            return False
    return True


def _relation_ok(box: tuple[float, ...], targets: list[ShapeObject], rel: str) -> bool:
    """``rel`` is the only GenEval relation, and it also holds with the stricter layout margin."""
    return all(
        relative_position(box, t.bbox) == {rel} and rel in relative_position(box, t.bbox, LAYOUT_POSITION_THRESHOLD)
        for t in targets
    )


def sample_scene(
    metadata: dict[str, Any], rng: np.random.Generator, size: int = 64, max_attempts: int = 200
) -> list[ShapeObject]:
    """A random layout that satisfies ``metadata`` exactly (no distractor objects).

    Args:
        metadata: a GenEval-format record over this world's vocabulary.
        rng: the random generator.
        size: canvas side length in pixels (object sizes scale with ``size / 64``).
        max_attempts: layout restarts before giving up; later attempts use smaller objects.

    Returns:
        The objects in ``include`` order (``count`` objects per entry).

    Raises:
        ValueError: malformed or unsatisfiable metadata (e.g. an ``exclude`` count at or below the
            included count, or too many objects for the canvas).
    """
    validate_metadata(metadata)
    include = metadata["include"]
    for ex in metadata.get("exclude", []):
        n_inc = sum(r["count"] for r in include if r["class"] == ex["class"])
        if n_inc >= ex["count"]:
            raise ValueError(
                f"unsatisfiable metadata: include has {n_inc} {ex['class']} but exclude "
                f"requires fewer than {ex['count']}"
            )
    scale = size / 64.0
    sizes = [s * scale for s in OBJECT_SIZES]
    gap, margin = MIN_GAP * scale, EDGE_MARGIN * scale
    specs = [(g, req) for g, req in enumerate(include) for _ in range(req["count"])]
    colors = [req.get("color") or COLORS[int(rng.integers(len(COLORS)))] for _, req in specs]
    for attempt in range(max_attempts):
        # Shrink the size menu as attempts fail (crowded counting scenes on small canvases).
        menu = sizes[: max(1, len(sizes) - attempt // 20)]
        placed: list[ShapeObject] = []
        groups: dict[int, list[ShapeObject]] = {}
        for (g, req), color in zip(specs, colors):
            d = float(menu[int(rng.integers(len(menu)))])
            lo, hi = margin + d / 2, size - margin - d / 2
            if hi < lo:
                break
            pos = req.get("position")
            for cx, cy in rng.uniform(lo, hi, size=(100, 2)).tolist():
                obj = ShapeObject(req["class"], color, (cx, cy), d)
                if _gap_ok(obj.bbox, placed, gap) and (
                    pos is None or _relation_ok(obj.bbox, groups.get(pos[1], []), pos[0])
                ):
                    placed.append(obj)
                    groups.setdefault(g, []).append(obj)
                    break
            else:
                break
        if len(placed) == len(specs):
            return placed
    raise ValueError(
        f"could not lay out {len(specs)} objects for {metadata.get('prompt', metadata)!r} on a "
        f"{size}px canvas; use a larger size or fewer objects"
    )


# -------------------- Prompt files ---------------------------------------------------------------


def write_jsonl(records: Iterable[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write one JSON object per line (GenEval's ``evaluation_metadata.jsonl`` format)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec) + "\n")
    return path


def read_jsonl(
    path: str | os.PathLike[str], validate: Callable[[dict[str, Any]], str | None] | None = None
) -> list[dict[str, Any]]:
    """Read a jsonl metadata file (blank lines skipped).

    Args:
        path: the file.
        validate: an extra per-record check returning an error message (or ``None`` when fine); its
            message is raised with the file name and line number.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: naming the first line that is not a JSON object with ``tag``/``include``/``prompt``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file not found: {path} (create one with make_prompt_set)")
    out = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({err})") from None
            if not isinstance(rec, dict) or not {"tag", "include", "prompt"} <= rec.keys():
                raise ValueError(f"{path}:{lineno}: expected an object with 'tag', 'include' and 'prompt'")
            problem = validate(rec) if validate is not None else None
            if problem:
                raise ValueError(f"{path}:{lineno}: {problem}")
            out.append(rec)
    return out


def make_prompt_set(
    n: int,
    seed: int = 0,
    families: Sequence[str] = FAMILIES,
    path: str | os.PathLike[str] | None = None,
    unique: bool = False,
    max_count: int = 4,
) -> list[dict[str, Any]]:
    """An evaluation prompt set: ``n`` prompts per family, grouped by family (GenEval's order).

    Args:
        n: prompts per family (GenEval uses 100, then de-duplicates).
        seed: seed of the generator.
        families: which task families to include.
        path: when given, also write the set there as jsonl.
        unique: drop exact duplicates like GenEval does (with this small vocabulary a family may
            then have fewer than ``n`` prompts, e.g. only 5 single-object prompts).
        max_count: largest count of the counting task.

    Returns:
        The metadata records.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    for f in families:
        if f not in FAMILIES:
            raise ValueError(f"unknown task family {f!r}; choose from {', '.join(FAMILIES)}")
    rng = np.random.default_rng(seed)
    records, seen = [], set()
    for family in families:
        for _ in range(n):
            rec = sample_prompt(rng, family, max_count=max_count)
            key = json.dumps(rec, sort_keys=True)
            if unique and key in seen:
                continue
            seen.add(key)
            records.append(rec)
    if path is not None:
        write_jsonl(records, path)
    return records


# -------------------- Dataset --------------------------------------------------------------------


@register_dataset("shapes_world", kind="text-image")
class ShapesWorld(torch.utils.data.Dataset):
    """Procedural text-to-image pairs over the six GenEval task families.

    Item ``i`` uses family ``families[i % len(families)]`` (balanced) and the generator
    ``numpy.random.default_rng(SeedSequence([seed, i]))``, so it is identical across runs and
    independent of access order.

    Args:
        num_samples: dataset length.
        seed: dataset seed.
        size: image side length in pixels (default 64).
        families: task families to draw from (default all six).
        max_count: largest count of the counting task.

    Items are dicts: ``image`` float32 ``[3, S, S]`` in [-1, 1], ``caption`` (str), ``metadata``
    (GenEval record) and ``objects`` (list of :meth:`ShapeObject.to_dict` records). Use
    :func:`collate_shapes` as the ``DataLoader`` ``collate_fn``.
    """

    def __init__(
        self,
        num_samples: int = 10000,
        seed: int = 0,
        size: int = 64,
        families: Sequence[str] = FAMILIES,
        max_count: int = 4,
    ) -> None:
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        if size < 32:
            raise ValueError(f"size must be >= 32 px so that objects stay recognisable, got {size}")
        families = tuple(families)
        bad = [f for f in families if f not in FAMILIES]
        if bad or not families:
            raise ValueError(f"unknown or empty families {bad or families!r}; choose from {', '.join(FAMILIES)}")
        _check_max_count(max_count)
        self.num_samples = num_samples
        self.seed = seed
        self.size = size
        self.families = families
        self.max_count = max_count

    def __len__(self) -> int:
        return self.num_samples

    def sample(self, index: int) -> tuple[dict[str, Any], list[ShapeObject], np.ndarray]:
        """``(metadata, objects, uint8 image [S, S, 3])`` of item ``index``."""
        if not -self.num_samples <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        index %= max(self.num_samples, 1)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, index]))
        family = self.families[index % len(self.families)]
        metadata = sample_prompt(rng, family, max_count=self.max_count)
        objects = sample_scene(metadata, rng, size=self.size)
        return metadata, objects, render_scene(objects, self.size)

    def __getitem__(self, index: int) -> dict[str, Any]:
        metadata, objects, image = self.sample(index)
        x = torch.from_numpy(image).permute(2, 0, 1).float().div_(127.5).sub_(1.0)
        return {
            "image": x,
            "caption": metadata["prompt"],
            "metadata": metadata,
            "objects": [o.to_dict() for o in objects],
        }

    def __repr__(self) -> str:
        return f"ShapesWorld(num_samples={self.num_samples}, seed={self.seed}, size={self.size})"


def collate_shapes(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """``DataLoader`` collate: stacks images, keeps captions/metadata/objects as lists."""
    return {
        "image": torch.stack([b["image"] for b in batch]),
        "caption": [b["caption"] for b in batch],
        "metadata": [b["metadata"] for b in batch],
        "objects": [b["objects"] for b in batch],
    }
