"""CLIP score and the CLIP model adapter shared with GenEval's colour classifier.

**CLIP score** (torchmetrics convention, ``torchmetrics.multimodal.CLIPScore`` 1.x): for each
image/caption pair ``100 * cos(E_I, E_T)``; the reported score is the mean over pairs, clamped at 0
(torchmetrics clamps the mean). Captions longer than the text encoder's context (77 tokens) are
truncated. The standard model is OpenAI CLIP ViT-L/14 (torchmetrics' default
``openai/clip-vit-large-patch14``). Hessel et al.'s CLIP-S (``2.5 * max(cos, 0)``, ViT-B/32) is a
different scale.

**Backends** (weights are never downloaded; see :mod:`decodelab.eval.assets`):

- ``open_clip`` (default): open_clip's model class for ``model_name`` (GenEval: ``ViT-L-14`` with
  OpenAI's weights, which need QuickGELU, as open_clip sets for its ``"openai"`` tag) and its
  tokenizer and eval transform (bicubic resize of the short side, centre crop, the model's
  mean/std). The weights are an open_clip state dict (``.safetensors`` or a weights-only torch
  file; e.g. ``open_clip_model.safetensors`` of ``timm/vit_large_patch14_clip_224.openai``), read
  here and loaded strictly; OpenAI's TorchScript ``ViT-L-14.pt`` is refused because loading it runs
  code.
- ``transformers``: a Hugging Face CLIP folder (``config.json``, weights, tokenizer files), e.g.
  ``openai/clip-vit-large-patch14``, loaded with ``local_files_only=True``; images go through the
  folder's ``CLIPImageProcessor`` (as torchmetrics does), or one built for the model's input size
  with OpenAI's mean/std when the folder has no ``preprocessor_config.json``.

The two backends give the same embeddings for the same weights and pixels (tested on random
weights converted between the two layouts); their resize of non-square images can differ by a
pixel row, so scores of the same images agree closely rather than exactly.

Example:
    >>> model = ClipModel("/models/open_clip-ViT-L-14-openai.safetensors")  # doctest: +SKIP
    >>> clip_score(images, captions, model)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from decodelab.eval.assets import ASSETS, file_sha256, resolve_asset
from decodelab.hub import load_state_dict_strict, read_torch_checkpoint

__all__ = ["OPENAI_MEAN", "OPENAI_STD", "ClipModel", "clip_score", "clip_scores", "read_open_clip_state_dict"]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_OPEN_CLIP_ASSET = "open_clip-vit-l-14-openai"
_HF_ASSET = "clip-vit-large-patch14"


def _features(out: Any) -> Tensor:
    """``get_*_features`` returns a tensor (transformers 4) or an output with ``pooler_output`` (5)."""
    return out if isinstance(out, Tensor) else out.pooler_output


def read_open_clip_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """An open_clip checkpoint's state dict, read without running code.

    ``.safetensors`` files are read with safetensors; anything else with ``torch.load(weights_only=True)``
    (training checkpoints' ``state_dict`` wrapper and DDP's ``module.`` prefix are removed).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a state dict of tensors (e.g. OpenAI's TorchScript ``ViT-L-14.pt``).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"open_clip checkpoint not found: {p}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(p))
    else:
        state = read_torch_checkpoint(p)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


class ClipModel:
    """A CLIP image/text encoder from local weights.

    Args:
        path: open_clip state-dict file (``open_clip`` backend) or Hugging Face CLIP folder
            (``transformers``); ``None`` looks in the weights cache for the open_clip file first, then
            for the folder ``clip-vit-large-patch14``.
        backend: ``"auto"`` (file -> open_clip, folder -> transformers), ``"open_clip"`` or
            ``"transformers"``.
        model_name: open_clip architecture name (``ViT-L-14``).
        quick_gelu: build the open_clip model with QuickGELU (right for OpenAI's weights).
        device: where to run.

    Raises:
        FileNotFoundError: weights not found (the message says where to get them).
        ValueError: an unknown backend, or weights that do not fit the model.
        ImportError: the backend's library is unavailable.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, backend: str = "auto",
                 model_name: str = "ViT-L-14", quick_gelu: bool = True, device: str = "cpu") -> None:  # fmt: skip
        if backend not in ("auto", "transformers", "open_clip"):
            raise ValueError(f"backend must be auto, open_clip or transformers, got {backend!r}")
        p = self._default_path(backend) if path is None else Path(path).expanduser()
        if backend == "auto":
            if not p.exists():
                raise FileNotFoundError(
                    f"CLIP weights not found at {p}: pass an open_clip state-dict file "
                    f"({ASSETS[_OPEN_CLIP_ASSET].source}) or a Hugging Face CLIP folder {_HF_ASSET} "
                    f"({ASSETS[_HF_ASSET].source})"
                )
            backend = "transformers" if p.is_dir() else "open_clip"
        self.backend, self.path, self.device = backend, p, device
        self.model_name, self.quick_gelu = model_name, quick_gelu
        if backend == "transformers":
            self._load_transformers(resolve_asset(_HF_ASSET, p))
        else:
            self._load_open_clip(resolve_asset(_OPEN_CLIP_ASSET, p))

    @staticmethod
    def _default_path(backend: str) -> Path:
        if backend == "transformers":
            return resolve_asset(_HF_ASSET)
        try:
            return resolve_asset(_OPEN_CLIP_ASSET)
        except FileNotFoundError:
            if backend == "open_clip":
                raise
            return resolve_asset(_HF_ASSET)  # raises naming the folder when it is missing too

    def _load_transformers(self, p: Path) -> None:
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        self.model = CLIPModel.from_pretrained(str(p), local_files_only=True).eval().to(self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
        self.context_length = int(self.model.config.text_config.max_position_embeddings)
        self.image_size = int(self.model.config.vision_config.image_size)
        if (p / "preprocessor_config.json").is_file():
            self.processor = CLIPImageProcessor.from_pretrained(str(p), local_files_only=True)
        else:
            s = self.image_size
            self.processor = CLIPImageProcessor(size={"shortest_edge": s}, crop_size={"height": s, "width": s},
                                                image_mean=list(OPENAI_MEAN), image_std=list(OPENAI_STD))  # fmt: skip
        weights = next((p / n for n in ("model.safetensors", "pytorch_model.bin") if (p / n).is_file()), None)
        self.weights_sha256 = file_sha256(weights) if weights is not None else None

    def _load_open_clip(self, p: Path) -> None:
        try:
            import open_clip
        except ImportError as err:
            raise ImportError(
                f"the open_clip backend needs open_clip_torch: pip install 'decodelab[eval]' ({err}); or pass a "
                "Hugging Face CLIP folder (backend='transformers')"
            ) from None
        state = read_open_clip_state_dict(p)
        logging.disable(logging.WARNING)  # open_clip warns "initialized randomly": the weights are loaded below
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                self.model_name, pretrained=None, force_quick_gelu=self.quick_gelu
            )
        finally:
            logging.disable(logging.NOTSET)
        load_state_dict_strict(model, state, source=str(p))
        self.model = model.eval().to(self.device)
        self.tokenizer = open_clip.get_tokenizer(self.model_name)
        self._oc_preprocess = preprocess
        self.context_length = int(getattr(model, "context_length", 77))
        size = model.visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.weights_sha256 = file_sha256(p)

    def settings(self) -> dict[str, Any]:
        oc = self.backend == "open_clip"
        return {"clip_backend": self.backend, "clip_path": str(self.path),
                "clip_model": self.model_name if oc else None, "clip_quick_gelu": self.quick_gelu if oc else None,
                "clip_weights_sha256": self.weights_sha256}  # fmt: skip

    def preprocess(self, images: Sequence[Image.Image]) -> Tensor:
        """PIL images -> normalised ``[B, 3, S, S]`` (the backend library's resize, centre crop, mean/std)."""
        images = [im.convert("RGB") for im in images]
        if self.backend == "open_clip":
            return torch.stack([self._oc_preprocess(im) for im in images])
        return self.processor(images=images, return_tensors="pt")["pixel_values"]

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
