"""Brain-Diffuser's two-stage NSD reconstruction on diffusers / transformers components from user paths.

Brain-Diffuser (Ozcelik & VanRullen, Sci Rep 13:15666, 2023; https://github.com/ozcelikfu/brain-diffuser,
read for its settings only, no code taken) reconstructs seen images from nsdgeneral betas:

- **stage 1**: ridge (alpha 5e4) from betas to the first 31 latent layers of a VDVAE trained on
  ImageNet 64 x 64 (91,168 values); the VDVAE decodes them into a 64 x 64 image, upsampled to
  512 x 512 (bicubic);
- **stage 2**: ridge from betas to Versatile Diffusion's CLIP-text (77 x 768, alpha 1e5) and
  CLIP-vision (257 x 768, alpha 6e4) embeddings. Brain-Diffuser fits one ridge per token with the
  same alpha; ridges of different targets are independent, so one multi-target ridge over all
  tokens (:class:`BrainDiffuserRegression`, :class:`decodelab.neuro.ridge.MultiTargetRidge`) is
  the same estimator. Test predictions are optionally rescaled to the training targets' mean and
  sd (Brain-Diffuser does; it uses the statistics of all test predictions, i.e. it is transductive);
- **dual-guided img2img** (:func:`dual_guided_img2img`): the stage-1 image is encoded by the
  AutoencoderKL, noised to ``int(strength * steps)`` of a 50-step DDIM schedule (strength 0.75,
  eta 0), and denoised with classifier-free guidance 7.5 (unconditional: the CLIP-text embedding of
  ``""`` and the CLIP-vision embedding of a black image). In every transformer of the UNet, the
  vision context goes through the image-flow transformer and the text context through the
  text-flow transformer, mixed as ``h + 0.6 (T_vision(h) - h) + 0.4 (T_text(h) - h)`` (``mix`` = 0.4
  is the text weight); :func:`dual_unet` builds that UNet from Versatile Diffusion's ``image_unet``
  and ``text_unet``. diffusers has no pipeline for img2img from embeddings, so the loop is written
  here on its ``UNet2DConditionModel`` / ``DDIMScheduler`` / ``AutoencoderKL`` classes, following
  diffusers' img2img convention for the start step (the last ``int(strength * steps)`` timesteps).

Defaults are in ``configs/brain-diffuser/*.yaml`` (:class:`BrainDiffuserConfig`). Components load
from a local Versatile Diffusion folder in its diffusers layout (``image_unet``, ``text_unet``,
``vae``, ``scheduler``, ``text_encoder``, ``tokenizer``, ``image_encoder``;
:func:`load_versatile_diffusion`); nothing is downloaded.

Stage 1's VDVAE (Child 2021, openai/vdvae, ``imagenet64-iter-1600000-model-ema.th``) is
:class:`decodelab.neuro.vdvae.VeryDeepVAE`, loaded strictly from the upstream file by
:func:`load_vdvae`; any other object with :class:`VDVAE`'s two methods can be passed as ``vdvae=``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from decodelab.neuro.ridge import MultiTargetRidge

__all__ = [
    "VDVAE",
    "VDVAE_LATENT_DIM",
    "VDVAE_LAYER_DIMS",
    "BrainDiffuser",
    "BrainDiffuserConfig",
    "BrainDiffuserRegression",
    "DualGuidedTransformer",
    "clip_text_embeddings",
    "clip_vision_embeddings",
    "dual_guided_img2img",
    "dual_unet",
    "load_brain_diffuser_config",
    "load_vdvae",
    "load_versatile_diffusion",
]

#: (number of layers, values per layer) of the 31 VDVAE latent layers Brain-Diffuser keeps.
VDVAE_LAYER_DIMS: tuple[tuple[int, int], ...] = ((2, 16), (4, 256), (8, 1024), (16, 4096), (1, 16384))
VDVAE_LATENT_DIM = sum(n * d for n, d in VDVAE_LAYER_DIMS)  # 91,168


# ------------------------------------------------------------------------------------------ config
@dataclass
class BrainDiffuserConfig:
    """Brain-Diffuser's settings (defaults: the paper's code, see the module docstring).

    Attributes:
        alpha_vdvae, alpha_clip_text, alpha_clip_vision: ridge penalties.
        rescale: rescale test predictions to the training targets' statistics (transductive).
        strength: img2img strength (fraction of the DDIM schedule re-noised).
        mix: weight of the text context in the dual-guided transformers (vision: ``1 - mix``).
        steps: DDIM steps; guidance_scale: classifier-free guidance; eta: DDIM eta.
        seed: the noise of the img2img start.
        image_size: side of the stage-2 image; vdvae_size: side of the VDVAE image.
        text_tokens, vision_tokens: CLIP token counts (77, 257).
        vdvae: VDVAE weights file; versatile_diffusion: diffusers-layout folder (both user paths).
    """

    alpha_vdvae: float = 50_000.0
    alpha_clip_text: float = 100_000.0
    alpha_clip_vision: float = 60_000.0
    rescale: bool = True
    strength: float = 0.75
    mix: float = 0.4
    steps: int = 50
    guidance_scale: float = 7.5
    eta: float = 0.0
    seed: int = 0
    image_size: int = 512
    vdvae_size: int = 64
    text_tokens: int = 77
    vision_tokens: int = 257
    vdvae: str | None = None
    versatile_diffusion: str | None = None
    subjects: list[int] = field(default_factory=lambda: [1, 2, 5, 7])
    sessions: int = 37


def load_brain_diffuser_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> BrainDiffuserConfig:
    """A ``configs/brain-diffuser/*.yaml`` file (unknown keys are errors) with dotted ``key=value`` overrides."""
    from decodelab.config import load_config

    return load_config(BrainDiffuserConfig, path, overrides)


# ------------------------------------------------------------------------------------------- VDVAE
@runtime_checkable
class VDVAE(Protocol):
    """What stage 1 needs from a VDVAE.

    ``encode_latents``: images ``[B, 3, 64, 64]`` in [0, 1] -> ``[B, 91168]`` (the first 31 layers'
    posterior latents ``z``, flattened and concatenated in layer order, see :data:`VDVAE_LAYER_DIMS`).
    ``decode_latents``: ``[B, 91168]`` -> images ``[B, 3, 64, 64]`` in [0, 1] (the remaining layers
    sampled from the prior at temperature 1, as Brain-Diffuser's ``forward_manual_latents``).
    """

    def encode_latents(self, images: Tensor) -> Tensor: ...

    def decode_latents(self, latents: Tensor) -> Tensor: ...


VDVAE_FILE = "imagenet64-iter-1600000-model-ema.th"


def load_vdvae(path: str | os.PathLike[str] | None, *, device: str | torch.device = "cpu") -> VDVAE:
    """Load the ImageNet-64 VDVAE for stage 1 (:func:`decodelab.neuro.vdvae.load_vdvae`, preset ``imagenet64``).

    Args:
        path: the local :data:`VDVAE_FILE` (openai/vdvae's EMA weights; nothing is downloaded).
        device: where the model goes.

    Raises:
        FileNotFoundError: no file at ``path`` (the message says where the weights come from).
        ValueError: not a weights-only torch state dict, or its keys/shapes do not match the
            ImageNet-64 architecture (every bad key named).
    """
    from decodelab.neuro.vdvae import load_vdvae as load_vdvae_weights

    return load_vdvae_weights(path, "imagenet64", device=device)


# ---------------------------------------------------------------------------------- ridge stage
class BrainDiffuserRegression:
    """One multi-target ridge per target set (``vdvae``, ``clip_text``, ``clip_vision``), Brain-Diffuser's alphas.

    Args:
        alphas: target name -> penalty.
        rescale: rescale test predictions to the training targets' mean and sd per value.
        **ridge_kwargs: :class:`~decodelab.neuro.ridge.MultiTargetRidge` options (``chunk_size``, ``store``...).
    """

    def __init__(self, alphas: dict[str, float], *, rescale: bool = True, **ridge_kwargs: Any) -> None:
        self.alphas = dict(alphas)
        self.rescale = rescale
        self.ridge_kwargs = ridge_kwargs
        self.models_: dict[str, MultiTargetRidge] = {}
        self.shapes_: dict[str, tuple[int, ...]] = {}
        self.stats_: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def fit(self, betas: np.ndarray, targets: dict[str, np.ndarray]) -> BrainDiffuserRegression:
        """``betas [N, V]`` (z-scored), ``targets``: name -> ``[N, ...]``."""
        unknown = sorted(set(targets) - set(self.alphas))
        if unknown:
            raise ValueError(f"no alpha for target(s) {unknown}; known: {sorted(self.alphas)}")
        for name, y in targets.items():
            y2 = np.asarray(y).reshape(len(y), -1)
            self.models_[name] = MultiTargetRidge(alpha=self.alphas[name], **self.ridge_kwargs).fit(betas, y2)
            self.shapes_[name] = tuple(np.asarray(y).shape[1:])
            self.stats_[name] = (y2.mean(0), y2.std(0))
        return self

    def predict(self, betas: np.ndarray) -> dict[str, np.ndarray]:
        """name -> ``[M, ...]`` predictions (rescaled when ``rescale`` and ``M > 1``)."""
        if not self.models_:
            raise ValueError("BrainDiffuserRegression is not fitted: call fit(betas, targets) first")
        out = {}
        for name, model in self.models_.items():
            p = model.predict(betas)
            if self.rescale and len(p) > 1:
                mean, sd = self.stats_[name]
                psd = p.std(0)
                p = (p - p.mean(0)) / np.where(psd > 0, psd, 1.0) * sd + mean
            out[name] = p.reshape(len(p), *self.shapes_[name])
        return out


# ------------------------------------------------------------------------------ CLIP embeddings
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@torch.no_grad()
def clip_text_embeddings(text_model: Any, tokenizer: Any, captions: Sequence[Sequence[str]]) -> Tensor:
    """Versatile Diffusion's CLIP-text context ``[N, 77, D]``, averaged over each image's captions.

    Per caption: ``text_projection`` of the last hidden states, divided by the norm of the pooled
    (projected end-of-text) embedding (diffusers' VD pipelines); ``text_model`` is a
    ``CLIPTextModelWithProjection``; ``tokenizer`` pads to ``max_length`` (77).
    """
    out = []
    for caps in captions:
        caps = list(caps) or [""]
        ids = tokenizer(
            caps, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        res = text_model(input_ids=ids.to(text_model.device))
        emb = text_model.text_projection(res.last_hidden_state)  # [C, 77, D]
        emb = emb / res.text_embeds.norm(dim=-1, keepdim=True)[:, None]
        out.append(emb.mean(0))
    return torch.stack(out).float().cpu()


@torch.no_grad()
def clip_vision_embeddings(vision_model: Any, images: Tensor) -> Tensor:
    """Versatile Diffusion's CLIP-vision context ``[N, 257, D]`` of images ``[N, 3, H, W]`` in [0, 1].

    Images are resized (bicubic) to the model's input size and CLIP-normalised; per image:
    ``visual_projection(post_layernorm(last_hidden_state))`` divided by the norm of its CLS token
    (diffusers' VD pipelines); ``vision_model`` is a ``CLIPVisionModelWithProjection``.
    """
    size = vision_model.config.image_size
    x = F.interpolate(images.float(), size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    res = vision_model(pixel_values=((x - mean) / std).to(vision_model.device))
    emb = vision_model.visual_projection(vision_model.vision_model.post_layernorm(res.last_hidden_state))
    return (emb / emb[:, :1].norm(dim=-1, keepdim=True)).float().cpu()


# ---------------------------------------------------------------------------- dual-guided UNet
class DualGuidedTransformer(nn.Module):
    """Two ``Transformer2DModel`` of one UNet position: vision context -> ``vision``, text context -> ``text``.

    ``encoder_hidden_states`` is ``[B, text_tokens + vision_tokens, D]`` (text first); the output is
    ``h + (1 - mix) (vision(h) - h) + mix (text(h) - h)``.
    """

    def __init__(self, vision: nn.Module, text: nn.Module, mix: float, text_tokens: int = 77) -> None:
        super().__init__()
        self.vision, self.text = vision, text
        self.mix, self.text_tokens = float(mix), int(text_tokens)

    def forward(
        self, hidden_states: Tensor, encoder_hidden_states: Tensor, *args: Any, return_dict: bool = True, **kwargs: Any
    ) -> Any:
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        kwargs.pop("encoder_attention_mask", None)  # masks are per context; none is used here
        t = self.text_tokens
        text = self.text(
            hidden_states, *args, encoder_hidden_states=encoder_hidden_states[:, :t], return_dict=False, **kwargs
        )[0]
        vision = self.vision(
            hidden_states, *args, encoder_hidden_states=encoder_hidden_states[:, t:], return_dict=False, **kwargs
        )[0]
        out = hidden_states + (1.0 - self.mix) * (vision - hidden_states) + self.mix * (text - hidden_states)
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)


def dual_unet(image_unet: nn.Module, text_unet: nn.Module, mix: float = 0.4, text_tokens: int = 77) -> nn.Module:
    """``image_unet`` with each ``Transformer2DModel`` paired with ``text_unet``'s at the same path (in place).

    Raises:
        ValueError: ``text_unet`` has no transformer at a path where ``image_unet`` has one.
    """
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    names = [n for n, m in image_unet.named_modules() if isinstance(m, Transformer2DModel)]
    if not names:
        raise ValueError("image_unet has no Transformer2DModel: not a cross-attention UNet")
    for name in names:
        try:
            text_tf = text_unet.get_submodule(name)
        except AttributeError:
            raise ValueError(f"text_unet has no transformer at {name!r} (image_unet has one)") from None
        parent_name, _, child = name.rpartition(".")
        parent = image_unet.get_submodule(parent_name) if parent_name else image_unet
        dual = DualGuidedTransformer(image_unet.get_submodule(name), text_tf, mix, text_tokens)
        if isinstance(parent, nn.ModuleList):
            parent[int(child)] = dual
        else:
            setattr(parent, child, dual)
    return image_unet


def set_mix(unet: nn.Module, mix: float) -> None:
    """Change the text weight of every :class:`DualGuidedTransformer` in ``unet``."""
    for m in unet.modules():
        if isinstance(m, DualGuidedTransformer):
            m.mix = float(mix)


@torch.no_grad()
def dual_guided_img2img(
    unet: nn.Module,
    scheduler: Any,
    vae: Any,
    init_images: Tensor,
    text_emb: Tensor,
    vision_emb: Tensor,
    uncond_text: Tensor,
    uncond_vision: Tensor,
    *,
    strength: float = 0.75,
    steps: int = 50,
    guidance_scale: float = 7.5,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Img2img from embeddings with a dual-guided UNet (:func:`dual_unet`) and a DDIM scheduler.

    Args:
        unet: a ``UNet2DConditionModel`` whose transformers are :class:`DualGuidedTransformer`.
        scheduler: a ``DDIMScheduler`` (its config as in the model folder).
        vae: an ``AutoencoderKL``.
        init_images: ``[B, 3, H, W]`` in [0, 1] (the stage-1 images, already at ``H``).
        text_emb, vision_emb: ``[B, 77, D]``, ``[B, 257, D]`` predicted contexts.
        uncond_text, uncond_vision: ``[1 or B, 77, D]``, ``[1 or B, 257, D]`` unconditional contexts.
        strength: fraction of the schedule re-noised (0: the init image through the VAE).
        steps, guidance_scale, eta: DDIM settings.
        generator: the start noise.

    Returns:
        ``[B, 3, H, W]`` images in [0, 1].
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    B = init_images.shape[0]
    device = next(unet.parameters()).device
    dtype = next(unet.parameters()).dtype
    sf = getattr(vae.config, "scaling_factor", 0.18215)
    x = (init_images.to(device, dtype) * 2.0 - 1.0).clamp(-1, 1)
    latents = vae.encode(x).latent_dist.mode() * sf  # [B, 4, H/f, W/f]
    scheduler.set_timesteps(steps, device=device)
    t_enc = int(strength * steps)
    timesteps = scheduler.timesteps[len(scheduler.timesteps) - t_enc :]
    if t_enc > 0:
        noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(device, dtype)
        latents = scheduler.add_noise(latents, noise, timesteps[:1].repeat(B))
    cond = torch.cat([text_emb, vision_emb], dim=1).to(device, dtype)  # [B, 77 + 257, D]
    uncond = torch.cat([uncond_text.expand(B, -1, -1), uncond_vision.expand(B, -1, -1)], dim=1).to(device, dtype)
    context = torch.cat([uncond, cond])
    for t in timesteps:
        model_in = scheduler.scale_model_input(torch.cat([latents, latents]), t)
        eps_u, eps_c = unet(model_in, t, encoder_hidden_states=context).sample.chunk(2)
        eps = eps_u + guidance_scale * (eps_c - eps_u)
        latents = scheduler.step(eps, t, latents, eta=eta, generator=generator).prev_sample
    images = vae.decode(latents / sf).sample
    return ((images.float() + 1.0) / 2.0).clamp(0, 1).cpu()


# ------------------------------------------------------------------------------------- loading
def _class_name(folder: Path) -> str:
    cfg = folder / "config.json"
    if not cfg.is_file():
        raise FileNotFoundError(f"{cfg} not found: not a diffusers model folder")
    return json.loads(cfg.read_text()).get("_class_name", "")


def load_versatile_diffusion(
    path: str | os.PathLike[str],
    *,
    mix: float = 0.4,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    clip: bool = True,
) -> dict[str, Any]:
    """Versatile Diffusion's components from a local folder in its diffusers layout.

    Returns:
        ``{"unet"`` (dual-guided), ``"scheduler"`` (DDIM), ``"vae"``, and with ``clip``:
        ``"text_encoder"``, ``"tokenizer"``, ``"image_encoder"}``.

    Raises:
        FileNotFoundError: the folder or a component is missing (named); get the model from the
            Hugging Face repository ``shi-labs/versatile-diffusion`` on a machine with network access.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    root = Path(path).expanduser()
    need = ["image_unet", "text_unet", "vae", "scheduler"] + (
        ["text_encoder", "tokenizer", "image_encoder"] if clip else []
    )
    missing = [n for n in need if not (root / n).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"Versatile Diffusion folder {root} lacks {missing} (expected the diffusers layout of "
            "shi-labs/versatile-diffusion; download it on a machine with network access)"
        )
    kw = {"local_files_only": True, "torch_dtype": dtype}
    image_unet = UNet2DConditionModel.from_pretrained(root / "image_unet", **kw)
    if _class_name(root / "text_unet") == "UNetFlatConditionModel":
        from diffusers.pipelines.deprecated.versatile_diffusion.modeling_text_unet import UNetFlatConditionModel

        text_unet = UNetFlatConditionModel.from_pretrained(root / "text_unet", **kw)
    else:
        text_unet = UNet2DConditionModel.from_pretrained(root / "text_unet", **kw)
    out: dict[str, Any] = {
        "unet": dual_unet(image_unet, text_unet, mix).to(device).eval(),
        "scheduler": DDIMScheduler.from_pretrained(root / "scheduler", local_files_only=True),
        "vae": AutoencoderKL.from_pretrained(root / "vae", **kw).to(device).eval(),
    }
    if clip:
        from transformers import CLIPTextModelWithProjection, CLIPTokenizer, CLIPVisionModelWithProjection

        out["text_encoder"] = CLIPTextModelWithProjection.from_pretrained(root / "text_encoder", **kw).to(device)
        out["tokenizer"] = CLIPTokenizer.from_pretrained(root / "tokenizer", local_files_only=True)
        out["image_encoder"] = CLIPVisionModelWithProjection.from_pretrained(root / "image_encoder", **kw).to(device)
    return out


# ------------------------------------------------------------------------------------ pipeline
class BrainDiffuser:
    """The two stages around fitted ridges: betas -> stage-1 images -> stage-2 images.

    Args:
        config: settings (:class:`BrainDiffuserConfig`).
        vdvae: a :class:`VDVAE` (default: :func:`load_vdvae` of ``config.vdvae``).
        components: :func:`load_versatile_diffusion`'s dict (default: loaded from ``config.versatile_diffusion``).
        uncond_text, uncond_vision: unconditional contexts (default: CLIP of ``""`` and of a black image,
            computed with the components' CLIP encoders).
    """

    def __init__(
        self,
        config: BrainDiffuserConfig | None = None,
        *,
        vdvae: VDVAE | None = None,
        components: dict[str, Any] | None = None,
        uncond_text: Tensor | None = None,
        uncond_vision: Tensor | None = None,
    ) -> None:
        self.config = config or BrainDiffuserConfig()
        if vdvae is not None and not isinstance(vdvae, VDVAE):
            raise ValueError(f"vdvae must have encode_latents and decode_latents, got {type(vdvae).__name__}")
        self.vdvae = vdvae if vdvae is not None else load_vdvae(self.config.vdvae)
        if components is None:
            if self.config.versatile_diffusion is None:
                raise FileNotFoundError("no Versatile Diffusion folder: set config key versatile_diffusion")
            components = load_versatile_diffusion(self.config.versatile_diffusion, mix=self.config.mix)
        self.components = components
        set_mix(components["unet"], self.config.mix)
        if uncond_text is None:
            uncond_text = clip_text_embeddings(components["text_encoder"], components["tokenizer"], [[""]])
        if uncond_vision is None:
            size = components["image_encoder"].config.image_size
            uncond_vision = clip_vision_embeddings(components["image_encoder"], torch.zeros(1, 3, size, size))
        self.uncond_text, self.uncond_vision = uncond_text, uncond_vision
        c = self.config
        self.regression = BrainDiffuserRegression(
            {"vdvae": c.alpha_vdvae, "clip_text": c.alpha_clip_text, "clip_vision": c.alpha_clip_vision},
            rescale=c.rescale,
        )

    def targets(self, images: Tensor, captions: Sequence[Sequence[str]], batch_size: int = 16) -> dict[str, np.ndarray]:
        """Training targets of seen images ``[N, 3, H, W]`` in [0, 1] and their captions."""
        comp, s = self.components, self.config.vdvae_size
        out: dict[str, list[Tensor]] = {"vdvae": [], "clip_text": [], "clip_vision": []}
        for a in range(0, len(images), batch_size):
            x = images[a : a + batch_size].float()
            out["vdvae"].append(self.vdvae.encode_latents(F.interpolate(x, size=(s, s), mode="bicubic").clamp(0, 1)))
            out["clip_vision"].append(clip_vision_embeddings(comp["image_encoder"], x))
            out["clip_text"].append(
                clip_text_embeddings(comp["text_encoder"], comp["tokenizer"], captions[a : a + batch_size])
            )
        return {k: torch.cat(v).float().numpy() for k, v in out.items()}

    def fit(self, betas: np.ndarray, targets: dict[str, np.ndarray]) -> BrainDiffuser:
        """Fit the three ridges (``targets`` from :meth:`targets` or precomputed)."""
        self.regression.fit(betas, targets)
        return self

    @torch.no_grad()
    def reconstruct(self, betas: np.ndarray, *, stage2: bool = True) -> dict[str, Tensor]:
        """``{"stage1": [M, 3, S, S], "stage2": [M, 3, S, S]}`` images in [0, 1] (``S = image_size``)."""
        c = self.config
        pred = self.regression.predict(betas)
        low = self.vdvae.decode_latents(torch.as_tensor(pred["vdvae"], dtype=torch.float32)).float()
        stage1 = F.interpolate(
            low, size=(c.image_size, c.image_size), mode="bicubic", align_corners=False, antialias=True
        ).clamp(0, 1)
        out = {"stage1": stage1}
        if stage2:
            comp = self.components
            gen = torch.Generator().manual_seed(c.seed)
            out["stage2"] = torch.cat(
                [
                    dual_guided_img2img(
                        comp["unet"],
                        comp["scheduler"],
                        comp["vae"],
                        stage1[i : i + 1],
                        torch.as_tensor(pred["clip_text"][i : i + 1]),
                        torch.as_tensor(pred["clip_vision"][i : i + 1]),
                        self.uncond_text,
                        self.uncond_vision,
                        strength=c.strength,
                        steps=c.steps,
                        guidance_scale=c.guidance_scale,
                        eta=c.eta,
                        generator=gen,
                    )
                    for i in range(len(stage1))
                ]
            )
        return out
