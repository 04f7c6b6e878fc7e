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

**Images** (the paper's second output): the decoded caption and a depth map predicted from the
brain guide a latent diffusion model through a depth ControlNet. :class:`BrainDepthDecoder` maps
voxels to a low-resolution depth map by the same linear regression (training targets: depth maps
of the stimuli from any monocular depth estimator, e.g. DPT; the estimator is the caller's), and
:func:`generate_images` runs ``diffusers``' ``StableDiffusionControlNetPipeline`` on captions and
depth maps; :func:`load_controlnet_pipeline` builds it from user-given Stable Diffusion and
ControlNet-depth folders (e.g. ``runwayml/stable-diffusion-v1-5`` and
``lllyasviel/sd-controlnet-depth``). The paper's sampler settings are not verified here: the
defaults are diffusers' (50 steps, guidance 7.5) and every one is an argument.

Weights load from user-given folders only (``local_files_only=True``); a missing folder raises
``FileNotFoundError`` naming the file.
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

__all__ = [
    "BrainCaptioner",
    "BrainDepthDecoder",
    "depth_to_control_images",
    "feature_pass_through",
    "generate_images",
    "load_controlnet_pipeline",
]


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


# ----------------------------------------------------------------------------------- images


class BrainDepthDecoder:
    """fMRI -> depth map ``[size, size]`` by linear regression (the ControlNet's guidance).

    Args:
        size: side of the predicted depth maps (targets are area-resized to it).
        regressor: sklearn-style regressor (default: :class:`~decodelab.neuro.ridge.MultiTargetRidge`).
        alpha: the default ridge's penalty.
    """

    def __init__(self, size: int = 64, *, regressor: Any = None, alpha: float = 1e4) -> None:
        if size < 1:
            raise ValueError(f"size must be positive, got {size}")
        self.size, self.regressor, self.alpha = size, regressor, alpha

    def _resize(self, depth: Any) -> np.ndarray:
        d = torch.as_tensor(np.asarray(depth), dtype=torch.float32)
        if d.dim() != 3:
            raise ValueError(f"depth maps must be [n, H, W], got shape {tuple(d.shape)}")
        if d.shape[1:] != (self.size, self.size):
            d = nn.functional.interpolate(d[:, None], size=(self.size, self.size), mode="area")[:, 0]
        return d.flatten(1).numpy()

    def fit(self, brain: np.ndarray, depth: Any) -> BrainDepthDecoder:
        """Fit ``brain [n, V]`` -> the stimuli's depth maps ``[n, H, W]``."""
        y = self._resize(depth)
        brain = np.asarray(brain)
        if brain.ndim != 2 or len(brain) != len(y):
            raise ValueError(f"brain must be [n, V] with n = {len(y)} (the depth maps' count), got {brain.shape}")
        reg = self.regressor if self.regressor is not None else MultiTargetRidge(alpha=self.alpha, dtype="float32")
        self.regressor_ = reg.fit(brain, y)
        return self

    def predict(self, brain: np.ndarray) -> np.ndarray:
        """Predicted depth maps ``[m, size, size]``."""
        if not hasattr(self, "regressor_"):
            raise ValueError("call fit(brain, depth) before predicting")
        pred = np.asarray(self.regressor_.predict(np.asarray(brain)), dtype=np.float32)
        return pred.reshape(len(pred), self.size, self.size)


def depth_to_control_images(depth: Any, size: int | tuple[int, int]) -> list[Any]:
    """Depth maps ``[m, h, w]`` -> ControlNet conditioning images (RGB, min-max scaled per map, bicubic to ``size``).

    A constant map becomes mid-grey.
    """
    from PIL import Image

    d = np.asarray(depth, dtype=np.float32)
    if d.ndim != 3:
        raise ValueError(f"depth maps must be [m, h, w], got shape {d.shape}")
    hw = (size, size) if isinstance(size, int) else tuple(size)
    out = []
    for m in d:
        lo, hi = float(m.min()), float(m.max())
        u = (m - lo) / (hi - lo) if hi > lo else np.full_like(m, 0.5)
        img = Image.fromarray(np.round(u * 255).astype(np.uint8)).resize((hw[1], hw[0]), Image.BICUBIC)
        out.append(img.convert("RGB"))
    return out


def load_controlnet_pipeline(
    sd_path: str | os.PathLike[str],
    controlnet_path: str | os.PathLike[str],
    *,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Any:
    """``diffusers.StableDiffusionControlNetPipeline`` from local Stable Diffusion and ControlNet folders.

    The safety checker is not loaded (decoded brain images are research outputs; pass your own).

    Raises:
        FileNotFoundError: a folder lacks ``model_index.json`` (SD) or ``config.json`` (ControlNet).
    """
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    sd, cn = Path(sd_path).expanduser(), Path(controlnet_path).expanduser()
    if not (sd / "model_index.json").is_file():
        raise FileNotFoundError(
            f"no Stable Diffusion pipeline at {sd} ({sd / 'model_index.json'} missing): download "
            "e.g. runwayml/stable-diffusion-v1-5 and pass its folder"
        )
    if not (cn / "config.json").is_file():
        raise FileNotFoundError(
            f"no ControlNet at {cn} ({cn / 'config.json'} missing): download e.g. "
            "lllyasviel/sd-controlnet-depth and pass its folder"
        )
    controlnet = ControlNetModel.from_pretrained(str(cn), local_files_only=True, dtype=dtype)
    pipe = StableDiffusionControlNetPipeline.from_pretrained(
        str(sd),
        controlnet=controlnet,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        local_files_only=True,
        dtype=dtype,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def generate_images(
    pipe: Any,
    captions: list[str],
    depth: Any,
    *,
    height: int | None = None,
    width: int | None = None,
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    controlnet_conditioning_scale: float = 1.0,
    seed: int = 0,
    negative_prompt: str | None = None,
    batch_size: int = 4,
) -> list[Any]:
    """Images from decoded captions and predicted depth maps with a depth-ControlNet diffusion pipeline.

    Args:
        pipe: a ``StableDiffusionControlNetPipeline`` (:func:`load_controlnet_pipeline`).
        captions: ``m`` prompts; depth: ``[m, h, w]`` depth maps (or ``m`` ready conditioning images).
        height, width: output size (default: the UNet's sample size times the VAE factor).
        num_inference_steps, guidance_scale, controlnet_conditioning_scale, negative_prompt: the pipeline's.
        seed: image ``i`` uses ``torch.Generator().manual_seed(seed + i)``, so it does not depend on the batch.
        batch_size: images per pipeline call.

    Returns:
        ``m`` PIL images.
    """
    if isinstance(captions, str):
        raise ValueError("captions must be a list of strings")
    factor = getattr(pipe, "vae_scale_factor", 8)
    height = height or int(pipe.unet.config.sample_size) * factor
    width = width or int(pipe.unet.config.sample_size) * factor
    if isinstance(depth, (list, tuple)) and depth and not isinstance(depth[0], np.ndarray):
        control = list(depth)
    else:
        control = depth_to_control_images(depth, (height, width))
    if len(control) != len(captions):
        raise ValueError(f"got {len(captions)} captions but {len(control)} depth maps")
    images: list[Any] = []
    for a in range(0, len(captions), batch_size):
        rows = range(a, min(a + batch_size, len(captions)))
        gens = [torch.Generator(device="cpu").manual_seed(seed + i) for i in rows]
        out = pipe(
            prompt=[captions[i] for i in rows],
            image=[control[i] for i in rows],
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=gens,
            controlnet_conditioning_scale=controlnet_conditioning_scale,
            negative_prompt=None if negative_prompt is None else [negative_prompt] * len(rows),
        )
        images.extend(out.images)
    return images
