"""CLIP score and the CLIP model adapter shared with GenEval's colour classifier.

**CLIP score** (torchmetrics convention, ``torchmetrics.multimodal.CLIPScore`` 1.x): for each
image/caption pair ``100 * cos(E_I, E_T)``; the reported score is the mean over pairs, clamped at 0
(torchmetrics clamps the mean). Captions longer than the text encoder's context (77 tokens) are
truncated. The standard model is OpenAI CLIP ViT-L/14 (torchmetrics' default
``openai/clip-vit-large-patch14``). Hessel et al.'s CLIP-S (``2.5 * max(cos, 0)``, ViT-B/32) is a
different scale.

**Backends** (weights are never downloaded; see :mod:`decodelab.eval.assets`):

- ``transformers``: a Hugging Face CLIP folder (``config.json``, weights, tokenizer files), e.g.
  ``openai/clip-vit-large-patch14``, loaded with ``local_files_only=True``. Images are
  preprocessed as CLIP's processor does: bicubic resize of the short side to the model's input
  size, centre crop, OpenAI mean/std (or the folder's ``preprocessor_config.json`` values).
- ``open_clip``: a checkpoint file for an open_clip model name (GenEval uses ``ViT-L-14`` with
  the OpenAI weights). open_clip imports torchvision, which cannot be installed next to the CPU
  torch wheel of decodelab's build machines, so this backend works only where torchvision does
  (it is not exercised by the test-suite there).

Example:
    >>> model = ClipModel("/models/clip-vit-large-patch14")  # doctest: +SKIP
    >>> clip_score(images, captions, model)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from decodelab.eval.assets import file_sha256, resolve_asset

__all__ = ["OPENAI_MEAN", "OPENAI_STD", "ClipModel", "clip_score", "clip_scores"]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _features(out: Any) -> Tensor:
    """``get_*_features`` returns a tensor (transformers 4) or an output with ``pooler_output`` (5)."""
    return out if isinstance(out, Tensor) else out.pooler_output


class ClipModel:
    """A CLIP image/text encoder from local weights.

    Args:
        path: Hugging Face CLIP folder (``transformers`` backend) or checkpoint file (``open_clip``);
            ``None`` looks for ``clip-vit-large-patch14`` in the weights cache.
        backend: ``"auto"`` (folder -> transformers, file -> open_clip), ``"transformers"`` or
            ``"open_clip"``.
        model_name: open_clip architecture name (``ViT-L-14``).
        device: where to run.

    Raises:
        FileNotFoundError: weights not found (the message says where to get them).
        ImportError: the backend's library is unavailable.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, backend: str = "auto",
                 model_name: str = "ViT-L-14", device: str = "cpu") -> None:  # fmt: skip
        if backend not in ("auto", "transformers", "open_clip"):
            raise ValueError(f"backend must be auto, transformers or open_clip, got {backend!r}")
        p = Path(path).expanduser() if path is not None else resolve_asset("clip-vit-large-patch14")
        if not p.exists():
            resolve_asset("clip-vit-large-patch14", p)  # raises with the download hint
        if backend == "auto":
            backend = "transformers" if p.is_dir() else "open_clip"
        self.backend, self.path, self.device, self.model_name = backend, p, device, model_name
        if backend == "transformers":
            self._load_transformers(resolve_asset("clip-vit-large-patch14", p))
        else:
            self._load_open_clip(p)

    def _load_transformers(self, p: Path) -> None:
        from transformers import AutoTokenizer, CLIPModel

        self.model = CLIPModel.from_pretrained(str(p), local_files_only=True).eval().to(self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
        self.context_length = int(self.model.config.text_config.max_position_embeddings)
        size = int(self.model.config.vision_config.image_size)
        mean, std = OPENAI_MEAN, OPENAI_STD
        pre = p / "preprocessor_config.json"
        if pre.is_file():
            cfg = json.loads(pre.read_text())
            mean, std = tuple(cfg.get("image_mean", mean)), tuple(cfg.get("image_std", std))
        self.image_size, self.mean, self.std = size, mean, std
        weights = next((p / n for n in ("model.safetensors", "pytorch_model.bin") if (p / n).is_file()), None)
        self.weights_sha256 = file_sha256(weights) if weights is not None else None

    def _load_open_clip(self, p: Path) -> None:
        try:
            import open_clip
        except Exception as err:  # ImportError, or torchvision failing to load
            raise ImportError(
                f"the open_clip backend needs open_clip_torch and a working torchvision ({err}); use a Hugging Face "
                "CLIP folder (backend='transformers') instead"
            ) from None
        if not p.is_file():
            raise FileNotFoundError(f"open_clip checkpoint not found: {p}")
        model, _, preprocess = open_clip.create_model_and_transforms(self.model_name, pretrained=str(p))
        self.model = model.eval().to(self.device)
        self.tokenizer = open_clip.get_tokenizer(self.model_name)
        self._oc_preprocess = preprocess
        self.context_length = int(getattr(model, "context_length", 77))
        self.weights_sha256 = file_sha256(p)

    def settings(self) -> dict[str, Any]:
        return {"clip_backend": self.backend, "clip_path": str(self.path), "clip_model": self.model_name
                if self.backend == "open_clip" else None, "clip_weights_sha256": self.weights_sha256}  # fmt: skip

    def preprocess(self, images: Sequence[Image.Image]) -> Tensor:
        """PIL images -> normalised ``[B, 3, S, S]`` (resize short side bicubic, centre crop)."""
        if self.backend == "open_clip":
            return torch.stack([self._oc_preprocess(im.convert("RGB")) for im in images])
        s = self.image_size
        out = []
        for im in images:
            im = im.convert("RGB")
            w, h = im.size
            scale = s / min(w, h)
            im = im.resize((max(s, round(w * scale)), max(s, round(h * scale))), Image.BICUBIC)
            w, h = im.size
            left, top = (w - s) // 2, (h - s) // 2
            out.append(np.asarray(im.crop((left, top, left + s, top + s)), dtype=np.float32) / 255.0)
        x = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)  # [B, 3, S, S]
        return (x - torch.tensor(self.mean).view(1, 3, 1, 1)) / torch.tensor(self.std).view(1, 3, 1, 1)

    @torch.no_grad()
    def encode_images(self, images: Sequence[Image.Image]) -> Tensor:
        """Unit-norm image embeddings ``[B, D]``."""
        x = self.preprocess(images).to(self.device)
        if self.backend == "open_clip":
            e = self.model.encode_image(x)
        else:
            e = _features(self.model.get_image_features(pixel_values=x))
        return torch.nn.functional.normalize(e.float(), dim=-1)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> Tensor:
        """Unit-norm text embeddings ``[B, D]`` (truncated to the context length)."""
        if self.backend == "open_clip":
            e = self.model.encode_text(self.tokenizer(list(texts)).to(self.device))
        else:
            enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.context_length,
                                 return_tensors="pt").to(self.device)  # fmt: skip
            e = _features(self.model.get_text_features(**enc))
        return torch.nn.functional.normalize(e.float(), dim=-1)


def clip_scores(images: Sequence[Image.Image], captions: Sequence[str], model: ClipModel,
                batch_size: int = 32) -> np.ndarray:  # fmt: skip
    """Per-pair ``100 * cos(image, caption)`` (float64 ``[N]``, not clamped)."""
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    if not images:
        raise ValueError("no images given")
    out = []
    for s in range(0, len(images), batch_size):
        ei = model.encode_images(images[s : s + batch_size])
        et = model.encode_texts(captions[s : s + batch_size])
        out.append((100.0 * (ei * et).sum(-1)).double().cpu().numpy())
    return np.concatenate(out)


def clip_score(images: Sequence[Image.Image], captions: Sequence[str], model: ClipModel, batch_size: int = 32) -> float:
    """CLIP score, torchmetrics convention: ``max(mean_i 100 cos_i, 0)``."""
    return float(max(clip_scores(images, captions, model, batch_size).mean(), 0.0))
