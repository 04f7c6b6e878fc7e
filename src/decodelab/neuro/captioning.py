"""Brain captioning: fMRI -> visual features of a captioning model -> captions (real path, GIT).

"Brain Captioning: Decoding human brain activity into images and text" (Ferrante, Boccato, Ozcelik,
VanRullen, Toschi; arXiv 2305.11560, UniReps 2024) maps NSD fMRI to the features of the GIT
captioner (Generative Image-to-text Transformer, Wang et al. 2022) with regularised linear
regression and lets GIT's text decoder caption them. The usual way to do it with Hugging Face
``transformers`` (MindEye2's ``GitForCausalLMClipEmb``, read for the facts) bypasses GIT's vision
tower: the predicted ``[N_img, D_vis]`` token features (``257 x 1024`` for ``microsoft/git-large-coco``,
a CLIP ViT-L/14 at 224 px) go straight into GIT's ``visual_projection`` and the text decoder; the
caption is decoded with ``generate(..., max_length=20)``.

Here (:class:`BrainCaptioner`):

- **targets**: :meth:`BrainCaptioner.image_features` runs the model's own vision tower on the
  stimuli (``pixel_values`` from GIT's processor) -> ``[n, N_img, D_vis]``;
- **regression**: :class:`~decodelab.neuro.ridge.MultiTargetRidge` from voxels ``[n, V]`` to the
  flattened features ``[n, N_img * D_vis]`` (263,168 targets at full size: the ridge's chunked
  eigen-solution keeps this in memory bounds); any sklearn-style regressor can replace it;
- **captions**: :meth:`BrainCaptioner.caption_features` feeds features to an unmodified
  ``GitForCausalLM`` by swapping its vision tower, for the duration of one ``generate`` call, for
  a pass-through module (:class:`_FeaturePassThrough`); the features travel as ``pixel_values``
  of shape ``[B, 1, N_img, D_vis]``, so ``generate``'s own batching, beam expansion and
  KV-cache handling of the image tokens apply unchanged. With the true features of an image this
  gives exactly the tokens of ``model.generate(pixel_values=image)`` (tested).

Weights load from a user-given folder only (:meth:`BrainCaptioner.from_pretrained`,
``local_files_only=True``); a missing folder raises ``FileNotFoundError`` naming the file.
"""

from __future__ import annotations

import os
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from decodelab.neuro.ridge import MultiTargetRidge

__all__ = ["BrainCaptioner", "feature_pass_through"]


class _FeaturePassThrough(nn.Module):
    """Stands in for GIT's vision tower: ``pixel_values [B, 1, N, D]`` already *are* the features."""

    def forward(self, pixel_values: Tensor, interpolate_pos_encoding: bool = False, **_: Any) -> Any:
        return types.SimpleNamespace(last_hidden_state=pixel_values[:, 0])


@contextmanager
def feature_pass_through(model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily replace a ``GitForCausalLM``'s vision tower by a pass-through (restored on exit)."""
    git = getattr(model, "git", None)
    if git is None or not hasattr(git, "image_encoder"):
        raise ValueError(
            f"expected a transformers GitForCausalLM (with .git.image_encoder), got {type(model).__name__}"
        )
    tower = git.image_encoder
    git.image_encoder = _FeaturePassThrough()
    try:
        yield model
    finally:
        git.image_encoder = tower


class BrainCaptioner:
    """fMRI -> GIT visual features (linear regression) -> captions (GIT's text decoder).

    Args:
        model: a ``transformers.GitForCausalLM``.
        tokenizer: decodes generated ids (a GIT processor or its tokenizer); ``None``: return ids.
        regressor: sklearn-style ``fit(X, Y)`` / ``predict(X)`` from voxels to flattened features
            (default: :class:`~decodelab.neuro.ridge.MultiTargetRidge` with ``alpha``).
        alpha: the default ridge's penalty (choose it by cross-validation on real data, e.g. with
            :class:`~decodelab.neuro.ridge.MultiTargetRidgeCV`).
        max_length: generated length, prompt included (the field uses 20).
        num_beams: beam search width (1: greedy).
        device: where GIT runs.

    Attributes (after :meth:`fit`):
        regressor_: the fitted regressor.
        feature_shape_: ``(N_img, D_vis)``.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any = None,
        *,
        regressor: Any = None,
        alpha: float = 1e4,
        max_length: int = 20,
        num_beams: int = 1,
        device: str = "cpu",
    ) -> None:
        self.model = model.eval().to(device)
        self.tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor carries its tokenizer
        self.regressor = regressor
        self.alpha = alpha
        self.max_length = max_length
        self.num_beams = num_beams
        self.device = device
        cfg = model.config
        self.n_tokens = int(model.git.encoder.layer[0].attention.self.image_patch_tokens)
        self.feature_dim = int(cfg.vision_config.hidden_size)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str], **kwargs: Any) -> BrainCaptioner:
        """Load GIT and its processor from a local folder (e.g. a download of ``microsoft/git-large-coco``).

        Raises:
            FileNotFoundError: no ``config.json`` in ``path``.
        """
        from transformers import AutoProcessor, GitForCausalLM

        p = Path(path).expanduser()
        if not (p / "config.json").is_file():
            raise FileNotFoundError(
                f"no GIT model at {p} ({p / 'config.json'} missing): download e.g. microsoft/git-large-coco "
                "(huggingface-cli download microsoft/git-large-coco --local-dir <folder>) and pass that folder"
            )
        model = GitForCausalLM.from_pretrained(str(p), local_files_only=True)
        try:
            processor = AutoProcessor.from_pretrained(str(p), local_files_only=True)
        except (OSError, ValueError) as e:
            raise FileNotFoundError(f"no GIT processor/tokenizer files in {p}: {e}") from None
        return cls(model, processor, **kwargs)

    # ------------------------------------------------------------------------------ features
    @torch.no_grad()
    def image_features(self, pixel_values: Tensor, batch_size: int = 32) -> Tensor:
        """GIT's vision-tower features of images ``[n, 3, H, W]`` -> ``[n, N_img, D_vis]`` (regression targets)."""
        if pixel_values.dim() != 4:
            raise ValueError(f"pixel_values must be [n, 3, H, W], got shape {tuple(pixel_values.shape)}")
        tower = self.model.git.image_encoder
        outs = [
            tower(pixel_values[a : a + batch_size].to(self.device)).last_hidden_state.float().cpu()
            for a in range(0, len(pixel_values), batch_size)
        ]
        return torch.cat(outs)

    def _check_features(self, features: Tensor | np.ndarray) -> Tensor:
        f = torch.as_tensor(features, dtype=torch.float32)
        if f.dim() != 3 or tuple(f.shape[1:]) != (self.n_tokens, self.feature_dim):
            raise ValueError(
                f"features must be [n, {self.n_tokens}, {self.feature_dim}] (this GIT's image tokens x "
                f"vision width), got {tuple(f.shape)}"
            )
        return f

    def fit(self, brain: np.ndarray, features: Tensor | np.ndarray) -> BrainCaptioner:
        """Fit the regression from ``brain [n, V]`` to ``features [n, N_img, D_vis]``."""
        f = self._check_features(features)
        brain = np.asarray(brain)
        if brain.ndim != 2 or len(brain) != len(f):
            raise ValueError(f"brain must be [n, V] with n = {len(f)} (the features' count), got {brain.shape}")
        reg = self.regressor if self.regressor is not None else MultiTargetRidge(alpha=self.alpha, dtype="float32")
        self.regressor_ = reg.fit(brain, f.flatten(1).numpy())
        self.feature_shape_ = tuple(f.shape[1:])
        return self

    def predict_features(self, brain: np.ndarray) -> Tensor:
        """Predicted GIT features ``[m, N_img, D_vis]`` of ``brain [m, V]``."""
        if not hasattr(self, "regressor_"):
            raise ValueError("call fit(brain, features) before predicting")
        pred = np.asarray(self.regressor_.predict(np.asarray(brain)), dtype=np.float32)
        return torch.from_numpy(pred).reshape(len(pred), *self.feature_shape_)

    # ------------------------------------------------------------------------------ captions
    @torch.no_grad()
    def generate_ids(self, features: Tensor | np.ndarray, **generate_kwargs: Any) -> Tensor:
        """Token ids GIT generates from visual features ``[B, N_img, D_vis]`` (vision tower bypassed)."""
        f = self._check_features(features).to(self.device)
        kwargs = {"max_length": self.max_length, "num_beams": self.num_beams, "do_sample": False, **generate_kwargs}
        with feature_pass_through(self.model):
            return self.model.generate(pixel_values=f[:, None], **kwargs).cpu()

    def caption_features(self, features: Tensor | np.ndarray, **generate_kwargs: Any) -> list[str] | Tensor:
        """Captions of visual features (ids when the captioner has no tokenizer)."""
        ids = self.generate_ids(features, **generate_kwargs)
        if self.tokenizer is None:
            return ids
        return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def predict(self, brain: np.ndarray, batch_size: int = 16, **generate_kwargs: Any) -> list[str] | Tensor:
        """Captions decoded from ``brain [m, V]``."""
        feats = self.predict_features(brain)
        parts = [
            self.caption_features(feats[a : a + batch_size], **generate_kwargs)
            for a in range(0, len(feats), batch_size)
        ]
        if parts and isinstance(parts[0], Tensor):
            width = max(p.shape[1] for p in parts)
            pad = getattr(self.model.config, "pad_token_id", 0) or 0
            return torch.cat([nn.functional.pad(p, (0, width - p.shape[1]), value=pad) for p in parts])
        return [c for p in parts for c in p]

    def __repr__(self) -> str:
        return (
            f"BrainCaptioner(image_tokens={self.n_tokens}, feature_dim={self.feature_dim}, "
            f"max_length={self.max_length}, num_beams={self.num_beams})"
        )
