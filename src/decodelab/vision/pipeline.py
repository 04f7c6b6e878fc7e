"""ImageGenerationPipeline: VQ tokenizer + image-token GPT (+ text encoder) + a decoder -> PIL images.

Models, decoders and pipelines stay apart (diffusers' separation): the pipeline owns the
checkpoints and their default sampling settings; the decoder is chosen per call by name.
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

from decodelab.assets import SHIPPED, asset_path
from decodelab.hub import load_pretrained, resolve_checkpoint_dir
from decodelab.registry import PIPELINES
from decodelab.speculative.base import DecodeOutput, create_decoder
from decodelab.speculative.sampling import SamplingConfig, row_generators
from decodelab.vision.adapters.table import ADAPTERS

__all__ = ["ImageGenerationPipeline", "PipelineOutput", "load_pipeline", "tensor_to_pil"]

PIPELINE_CONFIG = "pipeline.json"


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


class ImageGenerationPipeline:
    """Generate images from class ids or prompts with any registered decoder.

    Args:
        model: an image-token GPT (``c2i`` or ``t2i``).
        tokenizer: the VQ tokenizer whose codebook the GPT predicts.
        text_encoder: a :class:`~decodelab.vision.text_encoder.TextEncoder` for ``t2i`` models.
        defaults: default sampling settings (``cfg_scale``, ``temperature``, ``top_k``, ``top_p``).
        info: free-form metadata (name, class names, provenance, ``trained`` flag).
    """

    def __init__(self, model, tokenizer, text_encoder=None, defaults: dict | None = None, info: dict | None = None):
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
        return self

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
    ) -> PipelineOutput:
        """Generate ``num_images`` images per class id or prompt.

        Per-row random streams are derived from ``seed`` (or ``generator``) before batching, so
        an image depends on its seed and row, not on ``batch_size``.
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
        out = dec(self.model, cond, sampling=sampling, generator=gens, cond_mask=mask, max_batch=batch_size)
        outputs, tokens = [out], out.tokens
        images = self.tokenizer.decode(tokens.to(self.device))
        settings = {
            "pipeline": self.info.get("name", ""),
            "decoder": decoder,
            "decoder_kwargs": dec.settings(),
            "seed": seed,
            "num_images": num_images,
            "sampling": vars(sampling).copy(),
        }
        pil = tensor_to_pil(images) if output_type == "pil" else []
        return PipelineOutput(images=pil, tokens=tokens.cpu(), outputs=outputs, conditions=conds, settings=settings)

    # ------------------------------------------------------------------ IO
    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(directory)
        self.model.save_pretrained(directory / "model")
        self.tokenizer.save_pretrained(directory / "tokenizer")
        cfg = {"defaults": self.defaults, "info": self.info}
        if self.text_encoder is not None:
            cfg["text_encoder"] = {"max_length": self.text_encoder.max_length, "path": None}
        (directory / PIPELINE_CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path, *, text_encoder_path: str | Path | None = None, **kwargs: Any
    ) -> ImageGenerationPipeline:
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
        text_encoder = None
        if model.condition_kind == "text":
            from decodelab.vision.text_encoder import TextEncoder

            te = cfg.get("text_encoder", {})
            text_encoder = TextEncoder(text_encoder_path or te.get("path"), max_length=te.get("max_length", 32))
        return cls(model, tokenizer, text_encoder, cfg.get("defaults"), cfg.get("info"))


def load_pipeline(name_or_path: str | Path, **kwargs: Any) -> ImageGenerationPipeline:
    """A registered pipeline name (``fmnist-c2i``, ``shapes-t2i``, ``test-c2i``, ...) or a pipeline directory."""
    if isinstance(name_or_path, str) and name_or_path in PIPELINES:
        return PIPELINES.create(name_or_path, **kwargs)
    path = Path(name_or_path)
    if not path.exists() and isinstance(name_or_path, str) and "/" not in name_or_path:
        PIPELINES.get(name_or_path)  # raises: unknown name, lists the registered ones
    return ImageGenerationPipeline.from_pretrained(name_or_path, **kwargs)


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
