"""GenEval (Ghosh et al. 2023): prompt files, GenEval's folder layout, and scoring.

Facts read at djghosh13/geneval (``prompts/evaluation_metadata.jsonl``,
``generation/diffusers_generate.py``, ``evaluation/evaluate_images.py``,
``evaluation/summary_scores.py``); no code copied.

**Prompts.** One JSON object per line: ``{"tag", "include": [{"class", "count", ["color"],
["position": [relation, group index]]}], ["exclude": [{"class", "count"}]], "prompt"}``; the
official file has 553 prompts over six tasks (:data:`TASKS`). The shapes world writes the same
format (:func:`decodelab.datasets.shapes.make_prompt_set`).

**Layout** (what the official evaluator reads)::

    <outdir>/00000/metadata.jsonl     the prompt's JSON line
    <outdir>/00000/samples/0000.png   4 images per prompt (0000..0003)

Generation into this layout is :func:`decodelab.vision.sampler.generate_geneval` (the one resumable
sampler with its GenEval layout): image ``j`` of every prompt uses the same random stream (GenEval
re-seeds with the same seed before each prompt).

**Rules** (:func:`evaluate_detections`, shared by every detector):

- per class keep detections with ``score > 0.3`` (``> 0.9`` when the tag is ``counting``),
  sorted by score, at most 16;
- ``include``: at least ``count`` kept detections; only the top ``count`` are used further, so
  counting's "exactly N" comes from ``include`` N plus ``exclude`` N+1;
- ``color``: the colour classifier labels those top-``count`` objects; at least ``count`` must
  have the colour (i.e. all of them);
- ``position [rel, g]``: every used object must stand in ``rel`` to every object of include group
  ``g`` (which must itself have matched), by box centres with a ``0.1 * (dim_a + dim_b)`` margin
  (:func:`decodelab.datasets.shapes.relative_position`);
- ``exclude``: the image fails when ``>= count`` kept detections of the class exist.

**Scores** (:func:`summarize`): task score = mean image correctness within the tag; overall =
plain mean of the task scores (not of the images); also image and prompt accuracy.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image
from tqdm import tqdm

from decodelab.config import dumps_json
from decodelab.datasets.shapes import read_jsonl, relative_position

__all__ = [
    "COLORS",
    "COLOR_TEMPLATES",
    "TASKS",
    "Detection",
    "Detector",
    "evaluate_detections",
    "read_metadata",
    "score_folder",
    "summarize",
    "write_prompt_folders",
]

TASKS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
COLORS: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
COLOR_TEMPLATES: tuple[str, ...] = (
    "a photo of a {c} {obj}",
    "a photo of a {c}-colored {obj}",
    "a photo of a {c} object",
)
THRESHOLD, COUNTING_THRESHOLD, MAX_OBJECTS, POSITION_THRESHOLD = 0.3, 0.9, 16, 0.1
RESULTS_FILE, SUMMARY_FILE = "results.jsonl", "summary.json"


@dataclass
class Detection:
    """One detected object (any detector).

    Attributes:
        label: class name (COCO name for Mask2Former, shape name for the shapes world).
        bbox: ``(x0, y0, x1, y1)`` in pixels.
        score: confidence in [0, 1].
        mask: optional boolean ``[H, W]`` instance mask (used for the colour crop).
        color: colour name when the detector knows it (symbolic detector), else ``None``.
    """

    label: str
    bbox: tuple[float, float, float, float]
    score: float
    mask: np.ndarray | None = None
    color: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"label": self.label, "bbox": [round(float(v), 2) for v in self.bbox],
               "score": round(float(self.score), 4)}  # fmt: skip
        if self.color is not None:
            out["color"] = self.color
        return out


class Detector(Protocol):
    """``detector(image) -> detections``; ``settings()`` describes it for result files."""

    def __call__(self, image: Image.Image) -> Sequence[Any]: ...


#: ``color_fn(detections, class_name) -> colour names`` (one per detection).
ColorFn = Callable[[Sequence[Any], str], list[str]]


def _label(d: Any) -> str:
    return d.label if hasattr(d, "label") else d.shape


def evaluate_detections(
    detections: Sequence[Any],
    metadata: dict[str, Any],
    *,
    color_fn: ColorFn | None = None,
    threshold: float = THRESHOLD,
    counting_threshold: float = COUNTING_THRESHOLD,
    max_objects: int = MAX_OBJECTS,
    position_threshold: float = POSITION_THRESHOLD,
) -> tuple[bool, str]:
    """GenEval's correctness of one image (see the module docstring).

    Args:
        detections: objects with ``label`` (or ``shape``), ``bbox``, ``score`` and, when
            ``color_fn`` is ``None``, ``color``.
        metadata: the prompt's GenEval record.
        color_fn: colour classifier for the objects a ``color`` clause looks at (called lazily,
            once per clause); ``None`` reads ``detection.color``.
        threshold, counting_threshold, max_objects, position_threshold: GenEval's constants.

    Returns:
        ``(correct, reason)``; ``reason`` lists every failed clause, one per line.

    Raises:
        ValueError: metadata without an ``include`` list.
    """
    if not isinstance(metadata, dict) or not isinstance(metadata.get("include"), list):
        raise ValueError(f"metadata needs an 'include' list, got {metadata!r}")
    keep = counting_threshold if metadata.get("tag") == "counting" else threshold
    by_class: dict[str, list[Any]] = {}
    for d in sorted(detections, key=lambda d: -float(d.score)):
        if float(d.score) > keep and len(by_class.setdefault(_label(d), [])) < max_objects:
            by_class[_label(d)].append(d)
    correct, reasons = True, []
    matched: list[list[Any] | None] = []
    for req in metadata["include"]:
        cls, count = req["class"], int(req["count"])
        found = by_class.get(cls, [])[:count]
        ok = len(found) >= count
        if not ok:
            reasons.append(f"expected {cls}>={count}, found {len(found)}")
        if ok and "color" in req:
            colors = color_fn(found, cls) if color_fn is not None else [d.color for d in found]
            n_color = colors.count(req["color"])
            if n_color < count:
                ok = False
                seen = ", ".join(f"{colors.count(c)} {c}" for c in dict.fromkeys(colors))
                reasons.append(f"expected {req['color']} {cls}>={count}, found {n_color} {req['color']}; and {seen}")
        if ok and "position" in req:
            rel, target = req["position"][0], int(req["position"][1])
            targets = matched[target] if 0 <= target < len(matched) else None
            if targets is None:
                ok = False
                reasons.append(f"no target for {cls} to be {rel}")
            else:
                for d in found:
                    bad = [t for t in targets if rel not in relative_position(d.bbox, t.bbox, position_threshold)]
                    if bad:
                        ok = False
                        rels = relative_position(d.bbox, bad[0].bbox, position_threshold)
                        found_rel = " and ".join(sorted(rels)) or "no"
                        reasons.append(f"expected {cls} {rel} target, found {found_rel} relation")
                        break
        correct &= ok
        matched.append(found if ok else None)
    for req in metadata.get("exclude", []):
        n = len(by_class.get(req["class"], []))
        if n >= int(req["count"]):
            correct = False
            reasons.append(f"expected {req['class']}<{req['count']}, found {n}")
    return bool(correct), "\n".join(reasons)


# ----------------------------------------------------------------------------------- prompt files
def _include_problem(rec: dict[str, Any]) -> str | None:
    if not isinstance(rec["include"], list) or not all("class" in r and "count" in r for r in rec["include"]):
        return "'include' must be a list of {'class', 'count', ...}"
    return None


def read_metadata(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a GenEval metadata file (the official ``evaluation_metadata.jsonl`` or a generated one).

    Raises:
        FileNotFoundError: missing file.
        ValueError: a line that is not a well-formed GenEval record (line number in the message).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"GenEval metadata not found: {path}. The official file is prompts/evaluation_metadata.jsonl of "
            "github.com/djghosh13/geneval; the shapes world writes its own (decodelab eval geneval --shapes-prompts N)"
        )
    out = read_jsonl(path, validate=_include_problem)
    if not out:
        raise ValueError(f"{path} holds no prompts")
    return out


def write_prompt_folders(out_dir: str | os.PathLike[str], metadatas: Sequence[dict[str, Any]]) -> list[Path]:
    """Create ``<out>/<00000>/metadata.jsonl`` (+ ``samples/``) per prompt; refuse other prompts in place.

    Every existing ``metadata.jsonl`` is checked before anything is written.
    """
    out = Path(out_dir)
    dirs = [out / f"{i:05d}" for i in range(len(metadatas))]
    for d, md in zip(dirs, metadatas):
        f = d / "metadata.jsonl"
        if f.is_file() and json.loads(f.read_text()) != md:
            raise ValueError(f"{d} holds another prompt; use another output folder or delete it to start over")
    for d, md in zip(dirs, metadatas):
        (d / "samples").mkdir(parents=True, exist_ok=True)
        f = d / "metadata.jsonl"
        if not f.is_file():
            f.write_text(json.dumps(md) + "\n")
    return dirs


# ---------------------------------------------------------------------------------------- scoring
def summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """GenEval's summary of per-image records (``tag``, ``correct``, ``prompt``/``metadata``).

    Returns:
        ``{"per_task": {tag: mean correctness}, "overall": mean of the task scores,
        "image_accuracy", "prompt_accuracy" (share of prompts with a correct image), "num_images",
        "num_prompts"}``; tasks in GenEval's order, unknown tags after them.
    """
    tags: dict[str, list[bool]] = {}
    prompts: dict[str, bool] = {}
    for r in records:
        tags.setdefault(r["tag"], []).append(bool(r["correct"]))
        key = r.get("folder") or json.dumps(r.get("metadata", r.get("prompt")), sort_keys=True)
        prompts[key] = prompts.get(key, False) or bool(r["correct"])
    order = [t for t in TASKS if t in tags] + sorted(t for t in tags if t not in TASKS)
    per_task = {t: float(np.mean(tags[t])) for t in order}
    nan = float("nan")
    return {
        "per_task": per_task,
        "overall": float(np.mean(list(per_task.values()))) if per_task else nan,
        "image_accuracy": float(np.mean([r["correct"] for r in records])) if records else nan,
        "prompt_accuracy": float(np.mean(list(prompts.values()))) if prompts else nan,
        "num_images": len(records),
        "num_prompts": len(prompts),
    }


def _iter_folder(folder: Path) -> list[tuple[Path, dict[str, Any], list[Path]]]:
    out = []
    for d in sorted(p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()):
        mfile = d / "metadata.jsonl"
        if not mfile.is_file():
            continue
        md = json.loads(mfile.read_text())
        samples = sorted(f for f in (d / "samples").glob("*.png") if f.stem.isdigit())
        out.append((d, md, samples))
    if not out:
        raise ValueError(f"{folder} has no GenEval prompt folders (<00000>/metadata.jsonl + samples/0000.png)")
    return out


def score_folder(
    folder: str | os.PathLike[str],
    detector: Detector,
    *,
    color_classifier: Callable[[Image.Image, Sequence[Any], str], list[str]] | None = None,
    progress: bool = True,
    write: bool = True,
    **rules: Any,
) -> dict[str, Any]:
    """Score every image of a GenEval folder; write ``results.jsonl`` (per image) and ``summary.json``.

    Args:
        folder: GenEval layout.
        detector: ``detector(image) -> detections``.
        color_classifier: ``clf(image, detections, class_name) -> colours``; ``None``: the
            detections carry their colour (symbolic detector).
        progress: progress bar.
        write: write the two files into ``folder``.
        **rules: ``threshold``, ``counting_threshold``, ``max_objects``, ``position_threshold``.

    Returns:
        :func:`summarize`'s dict plus ``"per_image"`` records (filename, tag, prompt, correct,
        reason, detections).
    """
    folder = Path(folder)
    records = []
    items = [(d, md, f) for d, md, files in _iter_folder(folder) for f in files]
    for d, md, f in tqdm(items, disable=not progress, desc="geneval scoring", unit="img"):
        image = Image.open(f).convert("RGB")
        dets = detector(image)
        color_fn = None if color_classifier is None else (lambda ds, cls, im=image: color_classifier(im, ds, cls))
        correct, reason = evaluate_detections(dets, md, color_fn=color_fn, **rules)
        records.append({
            "filename": str(f.relative_to(folder)), "folder": d.name, "tag": md.get("tag", ""),
            "prompt": md.get("prompt", ""), "correct": correct, "reason": reason, "metadata": md,
            "detections": [x.to_dict() for x in dets],
        })  # fmt: skip
    summary = summarize(records)
    if write:
        with (folder / RESULTS_FILE).open("w", encoding="utf-8") as fh:
            for r in records:
                fh.write(dumps_json(r, indent=None))
        (folder / SUMMARY_FILE).write_text(dumps_json(summary))
    return {**summary, "per_image": records}
