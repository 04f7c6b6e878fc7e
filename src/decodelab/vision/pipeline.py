"""ImageGenerationPipeline: VQ tokenizer + image-token GPT (+ text encoder) + a decoder -> PIL images.

Models, decoders and pipelines stay apart (diffusers' separation): the pipeline owns the
checkpoints and their default sampling settings; the decoder is chosen per call by name.

**Drafter and up-sampler** (decoders whose ``requires`` lists them, e.g. ``mulo``, MuLo-SD): a
pipeline carries a second, low-resolution pipeline (its GPT + tokenizer, sharing the target's
text encoder) and builds the up-sampler between the two tokenizers
(:class:`~decodelab.vision.upsample.PixelUpsampler`). Which drafter, in this order:

1. ``load_pipeline(name, drafter=NAME_OR_DIR_OR_PIPELINE)`` / :meth:`ImageGenerationPipeline.set_drafter`
   (CLI ``--drafter``), loaded and checked at once;
2. the ``"drafter"`` entry of the pipeline directory's ``pipeline.json`` (a shipped asset name, or a
   folder relative to the pipeline directory: :meth:`~ImageGenerationPipeline.save_pretrained`
   writes a carried drafter to ``drafter/``);
3. :data:`DEFAULT_DRAFTERS` for the shipped pipelines (``shapes-t2i`` -> the asset ``shapes-t2i-lowres``).

Defaults 2 and 3 are loaded only when a decoder needs them, so decoders without a drafter never
touch it. ``upsampler=`` (CLI ``--upsampler``) is ``"bicubic"`` (default), ``"bilinear"``,
``"nearest"``, ``"lsr"`` (the shipped ``lsr-sr-small`` continuous SR model of ``decodelab upscale``),
a continuous-model directory or checkpoint file, a ``(images, size)`` callable, or an
:class:`~decodelab.speculative.mulo.Upsampler` object.

Example::

    pipe = load_pipeline("shapes-t2i")  # drafter: the shipped shapes-t2i-lowres
    out = pipe.generate(prompts=["a photo of a red circle"], decoder="mulo", decoder_kwargs={"tau": 0.05})
    out.decode.nfe_by_model  # {"target": ..., "drafter": ...}
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from decodelab.assets import ASSETS_DIR, SHIPPED, asset_path
from decodelab.hub import load_pretrained, resolve_checkpoint_dir
from decodelab.registry import PIPELINES
from decodelab.speculative.base import DecodeOutput, Decoder, create_decoder
from decodelab.speculative.mulo import Upsampler
from decodelab.speculative.sampling import SamplingConfig, row_generators
from decodelab.vision.adapters.table import ADAPTERS

__all__ = ["DEFAULT_DRAFTERS", "UPSAMPLERS", "ImageGenerationPipeline", "PipelineOutput", "load_pipeline",
           "tensor_to_pil"]  # fmt: skip

PIPELINE_CONFIG = "pipeline.json"
#: The default drafter (MuLo-SD's low-resolution model, a shipped asset at half the token grid) of each
#: shipped pipeline; each is trained by ``configs/embedded/<drafter>-vq.yaml`` then ``<drafter>-gpt.yaml``.
DEFAULT_DRAFTERS = {"fmnist-c2i": "fmnist-c2i-lowres", "shapes-t2i": "shapes-t2i-lowres"}
#: Named up-samplers: pixel resizes, and ``"lsr"`` (the shipped continuous SR model :data:`LSR_ASSET`).
UPSAMPLERS = ("bicubic", "bilinear", "nearest", "lsr")
LSR_ASSET = "lsr-sr-small"


@dataclass
class PipelineOutput:
    """Images, their tokens, and the decoder's record (one :class:`DecodeOutput` for all images)."""

    images: list[Image.Image]
    tokens: Tensor
    outputs: list[DecodeOutput]
    conditions: list[Any]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def decode(self) -> DecodeOutput:
        """The decode record of all images (``accepted`` has one column per image)."""
        return self.outputs[0]

    @property
    def nfe(self) -> int:
        return sum(o.nfe for o in self.outputs)

    @property
    def wall_time(self) -> float:
        return sum(o.wall_time for o in self.outputs)


def tensor_to_pil(images: Tensor) -> list[Image.Image]:
    """``[B, C, H, W]`` in ``[-1, 1]`` -> PIL images (grey for one channel)."""
    arr = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
    out = []
    for a in arr:
        a = np.transpose(a, (1, 2, 0))
        out.append(Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a))
    return out


def _caption_shape(model) -> tuple[int, int]:
    """``(caption positions, caption dims)`` a text-conditional GPT takes."""
    emb = getattr(model, "cls_embedding", None)
    dim = emb.cap_proj.fc1.in_features if emb is not None and hasattr(emb, "cap_proj") else -1
    return int(getattr(model, "num_cond_tokens", -1)), int(dim)


def _lsr_resize(spec: str) -> Any:
    """``"lsr"`` (the shipped :data:`LSR_ASSET`), a continuous-model directory or an upstream checkpoint file."""
    from decodelab.vision.upsample import LSRResize

    if spec == "lsr":
        path = ASSETS_DIR / LSR_ASSET
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"the 'lsr' up-sampler uses the shipped {LSR_ASSET!r}, which is not in this installation ({path} is "
                f"missing). Train it with `decodelab train --config configs/embedded/{LSR_ASSET}.yaml` and copy the "
                "run's final/ directory there, or use upsampler='bicubic'"
            )
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise ValueError(f"unknown up-sampler {spec!r}: use one of {', '.join(UPSAMPLERS)}, a continuous SR "
                             "model directory (config.json + model.safetensors) or a GB-LSR/LIIF/LTE checkpoint "
                             "file")  # fmt: skip
    if path.is_dir():
        from decodelab.vision.lsr import load_lsr_model

        model = load_lsr_model(str(path))
    else:
        from decodelab.vision.lsr.importers import import_checkpoint

        model = import_checkpoint(path)
    return LSRResize(model, name=spec)


class ImageGenerationPipeline:
    """Generate images from class ids or prompts with any registered decoder.

    Args:
        model: an image-token GPT (``c2i`` or ``t2i``).
        tokenizer: the VQ tokenizer whose codebook the GPT predicts.
        text_encoder: a :class:`~decodelab.vision.text_encoder.TextEncoder` for ``t2i`` models.
        defaults: default sampling settings (``cfg_scale``, ``temperature``, ``top_k``, ``top_p``).
        info: free-form metadata (name, class names, provenance, ``trained`` flag).
        drafter: the low-resolution pipeline of drafter decoders (``mulo``): an
            :class:`ImageGenerationPipeline`, or a shipped asset name / pipeline directory loaded now;
            ``None``: the default (see the module docstring), loaded when a decoder first needs it.
        upsampler: the default up-sampler of drafter decoders (see the module docstring).
    """

    def __init__(
        self,
        model,
        tokenizer,
        text_encoder=None,
        defaults: dict | None = None,
        info: dict | None = None,
        *,
        drafter: ImageGenerationPipeline | str | Path | None = None,
        upsampler: Any = "bicubic",
    ):
        if model.vocab_size != tokenizer.codebook_size:
            raise ValueError(
                f"model vocabulary ({model.vocab_size}) does not match the tokenizer codebook "
                f"({tokenizer.codebook_size})"
            )
        if model.condition_kind == "text" and text_encoder is None:
            raise ValueError("a text-conditional model needs a text_encoder")
        self.model, self.tokenizer, self.text_encoder = model.eval(), tokenizer.eval(), text_encoder
        self.defaults = {"cfg_scale": 1.0, "temperature": 1.0, "top_k": 0, "top_p": 1.0, **(defaults or {})}
        self.info = dict(info or {})
        # ``info["world"]`` is the registered dataset name; pipelines saved before the names were unified
        # recorded a short form
        world = self.info.get("world")
        self.info["world"] = {"fmnist": "fashion_mnist", "shapes": "shapes_world"}.get(world, world)
        if world is None:
            del self.info["world"]
        self.upsampler = upsampler
        self.drafter_spec: str | None = None  # a drafter to load when first needed (pipeline.json's entry)
        self._drafter: ImageGenerationPipeline | None = None
        self._drafter_label: str | None = None
        self._upsamplers: dict[str, Any] = {}
        if drafter is not None:
            self.set_drafter(drafter)

    @property
    def device(self) -> torch.device:
        """The device of the pipeline's components (the generator's parameters)."""
        return next(self.model.parameters()).device

    @property
    def default_decoder(self) -> str:
        """The reference decoder of the model's generation order: ``ar`` (raster) or ``nar`` (next-neighbour)."""
        return {"raster": "ar", "next_neighbor": "nar"}.get(self.model.generation_order.name, "ar")

    @property
    def condition_kind(self) -> str:
        """``"class"`` (pass ``classes=``) or ``"text"`` (pass ``prompts=``)."""
        return self.model.condition_kind

    @property
    def num_classes(self) -> int:
        """Classes of a class-conditional pipeline (0 for text-conditional ones)."""
        return self.model.num_classes if self.condition_kind == "class" else 0

    def to(self, device: str | torch.device) -> ImageGenerationPipeline:
        self.model.to(device)
        self.tokenizer.to(device)
        if self._drafter is not None:
            self._drafter.to(device)
        for up in self._upsamplers.values():
            lsr = getattr(getattr(up, "method", None), "model", None)
            if isinstance(lsr, torch.nn.Module):
                lsr.to(device)
        return self

    # ------------------------------------------------------------------ drafter and up-sampler
    @property
    def upsampler(self) -> Any:
        """The default up-sampler of drafter decoders (a name, a path, a callable or an Upsampler)."""
        return self._upsampler

    @upsampler.setter
    def upsampler(self, spec: Any) -> None:
        if isinstance(spec, (str, Path)) and str(spec) not in UPSAMPLERS and not Path(spec).expanduser().exists():
            raise ValueError(f"unknown up-sampler {str(spec)!r}: use one of {', '.join(UPSAMPLERS)}, a continuous SR "
                             "model directory (config.json + model.safetensors) or a GB-LSR/LIIF/LTE checkpoint "
                             "file")  # fmt: skip
        if not isinstance(spec, (str, Path)) and not callable(spec) and not isinstance(spec, Upsampler):
            raise ValueError(f"upsampler must be one of {UPSAMPLERS}, a path, a callable (images, size) or an "
                             f"Upsampler, got {type(spec).__name__}")  # fmt: skip
        self._upsampler = spec

    @property
    def name(self) -> str:
        return str(self.info.get("name") or "this pipeline")

    @property
    def drafter_source(self) -> str | None:
        """What the drafter is or will be loaded from: the given one, pipeline.json's, or :data:`DEFAULT_DRAFTERS`'."""
        return self._drafter_label or self.drafter_spec or DEFAULT_DRAFTERS.get(str(self.info.get("name")))

    @property
    def drafter(self) -> ImageGenerationPipeline:
        """The low-resolution drafter pipeline (loaded and checked on first use).

        Raises:
            FileNotFoundError: the drafter is a shipped asset that is not installed (the message names the
                configs that train it) or a directory that does not exist.
            ValueError: no drafter is known for this pipeline, or it does not fit (grid, conditions).
        """
        if self._drafter is None:
            spec = self.drafter_source
            if spec is None:
                raise ValueError(
                    f"{self.name} has no drafter: drafter decoders (MuLo-SD's mulo) need a low-resolution pipeline "
                    "of the same world at half the token grid; pass drafter=NAME_OR_DIR to load_pipeline "
                    "(CLI: --drafter NAME_OR_DIR)"
                )
            self._attach(self._load_drafter(spec), spec)
        return self._drafter  # type: ignore[return-value]

    def set_drafter(self, drafter: ImageGenerationPipeline | str | Path | None) -> ImageGenerationPipeline:
        """Carry ``drafter`` (a pipeline, or a shipped asset name / pipeline directory, loaded now); ``None`` resets.

        Raises:
            FileNotFoundError, ValueError: as :attr:`drafter`.
        """
        if drafter is None:
            self._drafter = self._drafter_label = self.drafter_spec = None
            self._upsamplers.clear()
            return self
        if isinstance(drafter, ImageGenerationPipeline):  # a refused drafter leaves the current one in place
            self._attach(drafter, str(drafter.info.get("name") or "drafter"))
        elif isinstance(drafter, (str, Path)):
            self._attach(self._load_drafter(str(drafter)), str(drafter))
        else:
            raise ValueError(
                f"drafter must be an ImageGenerationPipeline, a shipped asset name or a pipeline directory, "
                f"got {type(drafter).__name__}"
            )
        return self

    def _load_drafter(self, spec: str) -> ImageGenerationPipeline:
        path = Path(spec).expanduser()
        if path.is_dir():
            directory = path
        elif (ASSETS_DIR / spec / PIPELINE_CONFIG).is_file():
            directory = ASSETS_DIR / spec
        elif spec in PIPELINES and spec not in SHIPPED and PIPELINES.get(spec).kind != "adapter":
            return load_pipeline(spec)
        elif "/" not in spec and "\\" not in spec and not path.suffix:
            trained = spec in DEFAULT_DRAFTERS.values()
            how = (
                f"Train it with `decodelab train --config configs/embedded/{spec}-vq.yaml` then `decodelab train "
                f"--config configs/embedded/{spec}-gpt.yaml` and copy runs/{spec}-gpt/pipeline to {ASSETS_DIR / spec}"
                if trained else "Train a low-resolution pipeline of the same world (decodelab train)"
            )  # fmt: skip
            raise FileNotFoundError(
                f"the drafter {spec!r} of {self.name} is not in this installation ({ASSETS_DIR / spec} is missing). "
                f"{how}, or pass drafter=DIR (CLI: --drafter DIR) with a trained drafter pipeline directory"
            )
        else:
            raise FileNotFoundError(
                f"drafter {spec!r}: no such pipeline directory (pipeline.json + model/ + tokenizer/)"
            )
        return ImageGenerationPipeline.from_pretrained(directory, text_encoder=self.text_encoder)

    def _attach(self, drafter: ImageGenerationPipeline, label: str) -> None:
        """Check that ``drafter`` can draft for this pipeline, then carry it."""
        what = f"the drafter {label!r}"
        if drafter.condition_kind != self.condition_kind:
            raise ValueError(
                f"{what} is conditioned on {drafter.condition_kind!r} but {self.name} on {self.condition_kind!r}: a "
                "drafter must take the target's conditions (same world, same conditioning)"
            )
        if self.condition_kind == "class" and drafter.num_classes != self.num_classes:
            raise ValueError(f"{what} has {drafter.num_classes} classes but {self.name} {self.num_classes}: a "
                             "drafter must take the same class ids")  # fmt: skip
        if self.condition_kind == "text":
            mine, theirs = _caption_shape(self.model), _caption_shape(drafter.model)
            if mine != theirs:
                raise ValueError(
                    f"{what} takes captions of {theirs[0]} positions x {theirs[1]} dims but {self.name} "
                    f"{mine[0]} x {mine[1]}: a drafter must use the target's text encoder and caption length"
                )
            drafter.text_encoder = self.text_encoder  # the decoder hands both models the same embeddings
        (H, W), (h, w) = self.model.grid, drafter.model.grid
        if H % h or W % w or H // h != W // w or H // h < 2:
            raise ValueError(
                f"{what} has a {h}x{w} token grid but {self.name} {H}x{W}: MuLo-SD needs a drafter at "
                f"the target's grid divided by an integer ratio r >= 2 on both sides (r = 2: {H // 2}x{W // 2})"
            )
        channels = [getattr(t, "config", {}).get("in_channels") for t in (drafter.tokenizer, self.tokenizer)]
        if None not in channels and channels[0] != channels[1]:
            raise ValueError(f"{what} makes {channels[0]}-channel images but {self.name} {channels[1]}-channel ones")
        self._drafter, self._drafter_label = drafter, label
        self._upsamplers.clear()

    def build_upsampler(self, spec: Any = None) -> Upsampler:
        """The up-sampler between the drafter's and this pipeline's tokenizers (default: :attr:`upsampler`).

        Raises:
            ValueError: an unknown name; FileNotFoundError: ``"lsr"`` without the shipped model, or a missing path.
        """
        from decodelab.vision.upsample import RESIZE_MODES, PixelUpsampler

        spec = self.upsampler if spec is None else spec
        if isinstance(spec, Upsampler):
            return spec
        key = str(spec) if isinstance(spec, (str, Path)) else f"callable:{id(spec)}"
        if key not in self._upsamplers:
            if isinstance(spec, (str, Path)):
                method: Any = spec if spec in RESIZE_MODES else _lsr_resize(str(spec))
            elif callable(spec):
                method = spec
            else:
                raise ValueError(f"upsampler must be one of {UPSAMPLERS}, a continuous SR model path, a callable "
                                 f"(images, size) or an Upsampler, got {type(spec).__name__}")  # fmt: skip
            self._upsamplers[key] = PixelUpsampler(self.drafter.tokenizer, self.tokenizer, method=method)
        return self._upsamplers[key]

    def decoder_models(self, dec: Decoder, upsampler: Any = None) -> dict[str, Any]:
        """The extra models ``dec`` requires (``drafter`` TokenModel, ``upsampler``), as decoder keyword arguments."""
        out: dict[str, Any] = {}
        if "drafter" in dec.requires:
            out["drafter"] = self.drafter.model
        if "upsampler" in dec.requires:
            out["upsampler"] = self.build_upsampler(upsampler)
        return out

    def components(self, dec: Decoder, upsampler: Any = None) -> dict[str, str]:
        """What :meth:`decoder_models` hands ``dec``, for records (empty for decoders without a drafter)."""
        out: dict[str, str] = {}
        if "drafter" in dec.requires:
            out["drafter"] = str(self.drafter_source)
        if "upsampler" in dec.requires:
            spec = self.upsampler if upsampler is None else upsampler
            named = getattr(spec, "name", None) or getattr(spec, "__name__", None) or type(spec).__name__
            out["upsampler"] = str(spec) if isinstance(spec, (str, Path)) else str(named)
        return out

    # ------------------------------------------------------------------ conditions
    def sampling_config(
        self,
        *,
        cfg_scale: float | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        cfg_interval: int = -1,
    ) -> SamplingConfig:
        """The pipeline's default sampling settings, with every argument that is not ``None`` replacing its default."""
        given = dict(cfg_scale=cfg_scale, temperature=temperature, top_k=top_k, top_p=top_p)
        return SamplingConfig(
            **{k: (v if v is not None else self.defaults[k]) for k, v in given.items()}, cfg_interval=cfg_interval
        )

    def encode_conditions(self, conds: Sequence[int] | Sequence[str]) -> tuple[Tensor, Tensor | None]:
        """One condition per image -> the model's condition batch on the pipeline's device.

        Class ids (class-conditional) become ``[B]`` ids, checked against the model's classes;
        prompts (text-conditional) become caption embeddings ``[B, T, C]`` and their mask ``[B, T]``.
        """
        if self.condition_kind == "class":
            bad = [c for c in conds if not isinstance(c, (int, np.integer)) or not 0 <= c < self.num_classes]
            if bad:
                raise ValueError(f"class id(s) {bad} out of range: valid ids are 0..{self.num_classes - 1}")
            return torch.tensor([int(c) for c in conds], dtype=torch.long, device=self.device), None
        emb, mask = self.text_encoder(list(conds))
        return emb.to(self.device), mask.to(self.device)

    def _conditions(self, classes, prompts, num_images: int) -> tuple[list[Any], Tensor, Tensor | None]:
        if (classes is None) == (prompts is None):
            raise ValueError("pass exactly one of classes= (class-conditional) or prompts= (text-conditional)")
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        if classes is not None:
            if self.condition_kind != "class":
                raise ValueError("this pipeline is text-conditional: pass prompts=, not classes=")
            items = [classes] if isinstance(classes, (int, np.integer)) else list(classes)
        else:
            if self.condition_kind != "text":
                raise ValueError("this pipeline is class-conditional: pass classes=, not prompts=")
            items = [prompts] if isinstance(prompts, str) else list(prompts)
        conds = [c for c in items for _ in range(num_images)]
        cond, mask = self.encode_conditions(conds)
        return [int(c) if classes is not None else c for c in conds], cond, mask

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def __call__(
        self,
        classes: int | Sequence[int] | None = None,
        prompts: str | Sequence[str] | None = None,
        *,
        decoder: str | None = None,
        decoder_kwargs: dict[str, Any] | None = None,
        seed: int = 0,
        num_images: int = 1,
        batch_size: int | None = None,
        cfg_scale: float | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        cfg_interval: int = -1,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
        upsampler: Any = None,
    ) -> PipelineOutput:
        """Generate ``num_images`` images per class id or prompt.

        Per-row random streams are derived from ``seed`` (or ``generator``) before batching, so
        an image depends on its seed and row, not on ``batch_size``. A decoder that needs a drafter
        (``mulo``) gets the pipeline's :attr:`drafter` and ``upsampler`` (default: the pipeline's).
        """
        sampling = self.sampling_config(
            cfg_scale=cfg_scale, temperature=temperature, top_k=top_k, top_p=top_p, cfg_interval=cfg_interval
        )
        decoder = decoder or self.default_decoder
        dec = create_decoder(decoder, **(decoder_kwargs or {}))
        conds, cond, mask = self._conditions(classes, prompts, num_images)
        gen = generator if generator is not None else torch.Generator().manual_seed(int(seed))
        gens = row_generators(gen, len(conds))
        # batch_size rows per forward: continuous decoders refill finished rows, others run batches in turn
        extra = self.decoder_models(dec, upsampler)
        out = dec(self.model, cond, sampling=sampling, generator=gens, cond_mask=mask, max_batch=batch_size, **extra)
        outputs, tokens = [out], out.tokens
        images = self.tokenizer.decode(tokens.to(self.device))
        settings = {
            "pipeline": self.info.get("name", ""),
            "decoder": decoder,
            "decoder_kwargs": dec.settings(),
            "seed": seed,
            "num_images": num_images,
            "sampling": vars(sampling).copy(),
            **self.components(dec, upsampler),
        }
        pil = tensor_to_pil(images) if output_type == "pil" else []
        return PipelineOutput(images=pil, tokens=tokens.cpu(), outputs=outputs, conditions=conds, settings=settings)

    generate = __call__  # ``pipe.generate(prompts=..., decoder="mulo")`` reads as well as ``pipe(...)``

    # ------------------------------------------------------------------ IO
    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(directory)
        self.model.save_pretrained(directory / "model")
        self.tokenizer.save_pretrained(directory / "tokenizer")
        cfg = {"defaults": self.defaults, "info": self.info}
        if self.text_encoder is not None:
            cfg["text_encoder"] = {"max_length": self.text_encoder.max_length, "path": None}
        # a carried drafter: a shipped asset by name, any other drafter saved next to the pipeline
        source = self._drafter_label or self.drafter_spec
        if source is not None:
            if not Path(source).expanduser().is_dir() and (ASSETS_DIR / source / PIPELINE_CONFIG).is_file():
                cfg["drafter"] = source
            else:
                self.drafter.save_pretrained(directory / "drafter")
                cfg["drafter"] = "drafter"
        if isinstance(self.upsampler, str) and self.upsampler != "bicubic":
            cfg["upsampler"] = self.upsampler
        (directory / PIPELINE_CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        *,
        text_encoder_path: str | Path | None = None,
        text_encoder: Any = None,
        **kwargs: Any,
    ) -> ImageGenerationPipeline:
        """Load a pipeline directory (``text_encoder``: reuse a loaded encoder instead of building one)."""
        directory = resolve_checkpoint_dir(name_or_path, **kwargs)  # a local directory is returned as is
        cfg_path = directory / PIPELINE_CONFIG
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{directory} is not a pipeline directory ({PIPELINE_CONFIG} missing)")
        try:
            cfg = json.loads(cfg_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"corrupt {cfg_path}: {e}; re-save the pipeline with save_pretrained") from e
        if not isinstance(cfg, dict):
            raise ValueError(f"{cfg_path} must hold a JSON object (defaults, info), got {type(cfg).__name__}")
        model = load_pretrained(directory / "model")
        tokenizer = load_pretrained(directory / "tokenizer")
        if model.condition_kind == "text" and text_encoder is None:
            from decodelab.vision.text_encoder import TextEncoder

            te = cfg.get("text_encoder", {})
            text_encoder = TextEncoder(text_encoder_path or te.get("path"), max_length=te.get("max_length", 32))
        elif model.condition_kind != "text":
            text_encoder = None
        pipe = cls(model, tokenizer, text_encoder, cfg.get("defaults"), cfg.get("info"),
                   upsampler=cfg.get("upsampler", "bicubic"))  # fmt: skip
        drafter = cfg.get("drafter")
        if drafter is not None:  # loaded when a decoder first needs it
            local = directory / str(drafter)
            pipe.drafter_spec = str(local) if (local / PIPELINE_CONFIG).is_file() else str(drafter)
        return pipe


def load_pipeline(
    name_or_path: str | Path,
    *,
    drafter: ImageGenerationPipeline | str | Path | None = None,
    upsampler: Any = None,
    **kwargs: Any,
) -> ImageGenerationPipeline:
    """A registered pipeline name (``fmnist-c2i``, ``shapes-t2i``, ``test-c2i``, ...) or a pipeline directory.

    Args:
        drafter: the drafter of drafter decoders (``mulo``), loaded and checked now: a pipeline, a shipped asset
            name or a pipeline directory (``None``: the pipeline's default, loaded when first needed).
        upsampler: the default up-sampler of drafter decoders (``None``: the pipeline's, ``"bicubic"``).
        kwargs: the registered factory's or :meth:`ImageGenerationPipeline.from_pretrained`'s arguments.
    """
    if isinstance(name_or_path, str) and name_or_path in PIPELINES:
        pipe = PIPELINES.create(name_or_path, **kwargs)
    else:
        path = Path(name_or_path)
        if not path.exists() and isinstance(name_or_path, str) and "/" not in name_or_path:
            PIPELINES.get(name_or_path)  # raises: unknown name, lists the registered ones
        pipe = ImageGenerationPipeline.from_pretrained(name_or_path, **kwargs)
    if upsampler is not None:
        pipe.upsampler = upsampler
    if drafter is not None:
        pipe.set_drafter(drafter)
    return pipe


def _register_shipped(name: str, description: str) -> None:
    def factory(**kwargs: Any) -> ImageGenerationPipeline:
        return ImageGenerationPipeline.from_pretrained(asset_path(name), **kwargs)

    factory.__doc__ = description
    PIPELINES.register(name, kind="shipped", description=description)(factory)


for _name, _desc in SHIPPED.items():
    _register_shipped(_name, _desc)


@PIPELINES.register("test_c2i", kind="random")
def _test_c2i(seed: int = 0) -> ImageGenerationPipeline:
    """Tiny *untrained* class-conditional pipeline (random weights) for tests and smoke runs."""
    from decodelab.registry import MODELS

    torch.manual_seed(seed)
    tok = MODELS.create("test_vq")
    gpt = MODELS.create("test_gpt", vocab_size=tok.codebook_size)
    torch.nn.init.normal_(gpt.output.weight, 0.0, 0.3)  # upstream zero-init would make it uniform
    return ImageGenerationPipeline(gpt, tok, defaults={"cfg_scale": 2.0}, info={"name": "test-c2i", "trained": False})


def _register_adapter(name: str, description: str) -> None:
    def factory(
        weights: str | Path | None = None,
        prompt_length: int | None = None,
        dtype: str | None = None,
        device: str = "cpu",
        **options: Any,
    ) -> ImageGenerationPipeline:
        from decodelab.vision.adapters import load_adapter

        # a pipeline decodes images: a missing image-decoder file (Chameleon's vqgan.ckpt) is an error now
        model, image_decoder, encoder, spec = load_adapter(
            name, weights, prompt_length=prompt_length, dtype=dtype, device=device, require_images=True, **options
        )
        info = {"name": name.replace("_", "-"), "trained": True, "hub_id": spec.hub_id, "adapter": True}
        return ImageGenerationPipeline(model, image_decoder, encoder, defaults=spec.defaults, info=info)

    factory.__doc__ = description
    PIPELINES.register(name, kind="adapter", description=description)(factory)


# transformers generators behind a TokenModel adapter (vision/adapters): load_pipeline("janus-pro-1b", weights=DIR)
for _spec in ADAPTERS.values():
    if _spec.pipeline:
        _register_adapter(_spec.name, _spec.description)
