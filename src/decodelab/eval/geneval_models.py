"""GenEval's networks: a Mask2Former COCO instance detector and a CLIP zero-shot colour classifier.

Both load local weights only (:mod:`decodelab.eval.assets`) and plug into
:func:`decodelab.eval.geneval.score_folder`.

**Detector.** GenEval runs mmdetection's Mask2Former Swin-S (COCO instance segmentation). mmdet 2.x
and mmcv-full do not install on current torch, so here the network is Hugging Face transformers'
``Mask2FormerForUniversalSegmentation`` (e.g. ``facebook/mask2former-swin-small-coco-instance``,
the Detectron2-trained Swin-S: same architecture family, not the same checkpoint, so numbers
are close to, not identical with, official GenEval). The raw outputs are decoded the way mmdet's
Mask2Former instance head does: class probabilities without the "no object" column, top 100
(query, class) pairs, masks from mask logits ``> 0``, score = class probability times the mean mask
probability inside the mask, box = the mask's extent. Input: short side resized to
``shortest_edge`` (800) with the long side at most 1333, ImageNet mean/std, padded to a multiple
of 32.

**Colour classifier** (GenEval ``color_classification``): each object is composited through its
mask onto a ``#999999`` grey background, cropped to its box, and classified zero-shot by CLIP
among GenEval's 10 colours, each colour's text embedding being the normalised mean over the three
templates ``"a photo of a {c} {obj}"``, ``"a photo of a {c}-colored {obj}"``,
``"a photo of a {c} object"``. CLIP runs through open_clip, GenEval's own library (``ViT-L-14``,
OpenAI weights; :class:`~decodelab.eval.clip_score.ClipModel`), or optionally through transformers
with a Hugging Face CLIP folder.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from decodelab.eval.assets import file_sha256, resolve_asset
from decodelab.eval.clip_score import ClipModel
from decodelab.eval.geneval import COLOR_TEMPLATES, COLORS, Detection

__all__ = ["ClipColorClassifier", "Mask2FormerDetector", "masked_crop"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Mask2FormerDetector:
    """COCO instance detector from a local Hugging Face Mask2Former folder.

    Args:
        path: model folder (``None``: ``mask2former-swin-small-coco-instance`` in the weights cache).
        device: where to run.
        shortest_edge, longest_edge: input resize (keep aspect ratio).
        max_per_image: (query, class) pairs kept before GenEval's thresholds (mmdet: 100).
        label_map: rename model labels to GenEval's class names (e.g. ``{"tv": "tv"}``); labels
            are otherwise the model's ``id2label`` with ``-merged``/``-other`` suffixes removed.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, device: str = "cpu", shortest_edge: int = 800,
                 longest_edge: int = 1333, max_per_image: int = 100,
                 label_map: dict[str, str] | None = None) -> None:  # fmt: skip
        from transformers import Mask2FormerForUniversalSegmentation

        self.path = resolve_asset("mask2former-swin-s-coco-instance", path)
        self.model = Mask2FormerForUniversalSegmentation.from_pretrained(str(self.path), local_files_only=True)
        self.model.eval().to(device)
        self.device, self.shortest_edge, self.longest_edge = device, shortest_edge, longest_edge
        self.max_per_image = max_per_image
        names = {int(k): str(v) for k, v in self.model.config.id2label.items()}
        label_map = label_map or {}
        self.labels = [label_map.get(names[i], names[i].replace("-merged", "").replace("-other", ""))
                       for i in range(len(names))]  # fmt: skip
        weights = next((self.path / n for n in ("model.safetensors", "pytorch_model.bin")
                        if (self.path / n).is_file()), None)  # fmt: skip
        self.weights_sha256 = file_sha256(weights) if weights is not None else None

    def settings(self) -> dict[str, Any]:
        return {"detector": "mask2former (transformers)", "detector_path": str(self.path),
                "detector_weights_sha256": self.weights_sha256, "shortest_edge": self.shortest_edge,
                "longest_edge": self.longest_edge, "max_per_image": self.max_per_image}  # fmt: skip

    def _input(self, image: Image.Image) -> tuple[torch.Tensor, tuple[int, int]]:
        w, h = image.size
        scale = min(self.shortest_edge / min(w, h), self.longest_edge / max(w, h))
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
        x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        ph, pw = math.ceil(nh / 32) * 32, math.ceil(nw / 32) * 32
        return F.pad(x, (0, pw - nw, 0, ph - nh)), (nh, nw)  # [1, 3, ph, pw], valid region

    @torch.no_grad()
    def __call__(self, image: Image.Image) -> list[Detection]:
        x, (nh, nw) = self._input(image)
        out = self.model(pixel_values=x.to(self.device))
        cls = out.class_queries_logits[0].float().softmax(-1)[:, :-1]  # [Q, C] without "no object"
        masks = out.masks_queries_logits[0].float()  # [Q, h, w] at 1/4 of the padded input
        q, c = cls.shape
        k = min(self.max_per_image, q * c)
        scores, top = cls.flatten().topk(k)
        query, label = top // c, top % c
        m = F.interpolate(masks[query][None], size=x.shape[-2:], mode="bilinear", align_corners=False)[0]
        m = m[:, :nh, :nw]  # drop the padding
        w, h = image.size
        m = F.interpolate(m[None], size=(h, w), mode="bilinear", align_corners=False)[0]  # [k, H, W] logits
        binary = m > 0
        mask_score = (m.sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
        det_scores = scores * mask_score
        dets = []
        for i in range(k):
            ys, xs = torch.nonzero(binary[i], as_tuple=True)
            if len(ys) == 0:
                continue
            box = (float(xs.min()), float(ys.min()), float(xs.max()) + 1, float(ys.max()) + 1)
            dets.append(Detection(self.labels[int(label[i])], box, float(det_scores[i]), binary[i].cpu().numpy()))
        dets.sort(key=lambda d: -d.score)
        return dets


def masked_crop(image: Image.Image, det: Detection, background: str = "#999999") -> Image.Image:
    """The object composited through its mask onto a grey background, cropped to its box (GenEval)."""
    image = image.convert("RGB")
    if det.mask is not None:
        mask = Image.fromarray(np.asarray(det.mask, dtype=np.uint8) * 255, mode="L")
        image = Image.composite(image, Image.new("RGB", image.size, background), mask)
    x0, y0, x1, y1 = (int(round(v)) for v in det.bbox)
    return image.crop((x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)))


class ClipColorClassifier:
    """GenEval's zero-shot colour classifier: ``clf(image, detections, class_name) -> colours``.

    Args:
        clip: a :class:`~decodelab.eval.clip_score.ClipModel` (GenEval: open_clip ViT-L-14, OpenAI weights).
        colors: colour names (GenEval's 10).
        templates: prompt templates with ``{c}`` and ``{obj}``.
        background: fill outside the mask.
    """

    def __init__(self, clip: ClipModel, colors: Sequence[str] = COLORS, templates: Sequence[str] = COLOR_TEMPLATES,
                 background: str = "#999999") -> None:  # fmt: skip
        self.clip, self.colors, self.templates, self.background = clip, tuple(colors), tuple(templates), background
        self._heads: dict[str, torch.Tensor] = {}

    def head(self, class_name: str) -> torch.Tensor:
        """Per-colour text embeddings ``[n_colors, D]`` for one object class (cached)."""
        if class_name not in self._heads:
            rows = []
            for c in self.colors:
                e = self.clip.encode_texts([t.format(c=c, obj=class_name) for t in self.templates])  # [T, D]
                rows.append(F.normalize(e.mean(0), dim=-1))
            self._heads[class_name] = torch.stack(rows)
        return self._heads[class_name]

    def __call__(self, image: Image.Image, detections: Sequence[Detection], class_name: str) -> list[str]:
        if not detections:
            return []
        crops = [masked_crop(image, d, self.background) for d in detections]
        logits = self.clip.encode_images(crops) @ self.head(class_name).T  # [N, n_colors]
        return [self.colors[int(i)] for i in logits.argmax(-1)]

    def settings(self) -> dict[str, Any]:
        return {"color_classifier": "clip zero-shot", **self.clip.settings(), "colors": list(self.colors),
                "templates": list(self.templates), "background": self.background}  # fmt: skip


def load_geneval_models(detector_path: str | Path | None, clip_path: str | Path | None,
                        device: str = "cpu") -> tuple[Mask2FormerDetector, ClipColorClassifier]:  # fmt: skip
    """Both GenEval networks from local paths (or the weights cache).

    ``clip_path``: an open_clip ViT-L-14 state-dict file (GenEval's library; the default looked up in
    the cache) or a Hugging Face CLIP folder (the transformers backend).
    """
    return Mask2FormerDetector(detector_path, device=device), ClipColorClassifier(ClipModel(clip_path, device=device))
