"""The adapter table: one entry per published checkpoint an adapter pipeline can load offline."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from decodelab.registry import canonical_name

__all__ = ["ADAPTERS", "AdapterSpec", "load_adapter"]


@dataclass(frozen=True)
class AdapterSpec:
    """A loadable checkpoint: its hub id, loader, sampling defaults and a one-line description."""

    name: str
    hub_id: str
    loader: Callable[..., Any]
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    prompt_length: int = 64
    pipeline: bool = True  # False: decodes tokens only (no image decoder available), no pipeline


# Every loader takes ``require_images``: the families whose image decoder is a separate file (Chameleon's
# VQ-GAN) raise naming it when it is absent and ``require_images`` is set; the others always have one.


def _janus(name: str, weights, require_images: bool = True, **kw):
    from decodelab.vision.adapters.janus import load_janus

    return load_janus(name, weights, **kw)


def _emu3(name: str, weights, require_images: bool = True, **kw):
    from decodelab.vision.adapters.emu3 import load_emu3

    return load_emu3(name, weights, **kw)


def _chameleon(name: str, weights, require_images: bool = False, **kw):
    from decodelab.vision.adapters.chameleon import load_chameleon

    return load_chameleon(name, weights, require_vq=require_images, **kw)


def _llamagen_t2i(name: str, weights, *, prompt_length: int, dtype=None, device="cpu", require_images: bool = True):
    from decodelab.vision.adapters.llamagen_t2i import LLAMAGEN_T2I_HUB, load_llamagen_t2i

    if weights is None:
        raise FileNotFoundError(f"{name} needs weights=DIR holding the checkpoints of {LLAMAGEN_T2I_HUB}")
    gpt, vq, encoder = load_llamagen_t2i(weights, image_size=int(name.rsplit("_", 1)[-1]), cls_token_num=prompt_length,
                                         device=device)  # fmt: skip
    if dtype is not None:
        gpt = gpt.to(dtype)
    return gpt, vq, encoder


def _specs() -> dict[str, AdapterSpec]:
    from decodelab.vision.adapters.chameleon import CHAMELEON_DEFAULTS, CHAMELEON_HUB_IDS
    from decodelab.vision.adapters.emu3 import EMU3_DEFAULTS, EMU3_HUB_ID
    from decodelab.vision.adapters.janus import JANUS_DEFAULTS, JANUS_HUB_IDS
    from decodelab.vision.adapters.llamagen_t2i import LLAMAGEN_T2I_DEFAULTS

    specs = [
        AdapterSpec("janus_pro_1b", JANUS_HUB_IDS["janus_pro_1b"], _janus, JANUS_DEFAULTS,
                    "Janus-Pro-1B text-to-image (384 px, 24x24 codes) through transformers (needs --weights)"),
        AdapterSpec("janus_pro_7b", JANUS_HUB_IDS["janus_pro_7b"], _janus, JANUS_DEFAULTS,
                    "Janus-Pro-7B text-to-image (384 px, 24x24 codes) through transformers (needs --weights)"),
        AdapterSpec("emu3_gen", EMU3_HUB_ID, _emu3, EMU3_DEFAULTS,
                    "Emu3-Gen text-to-image (720 px, 90x90 codes + row EOLs) through transformers (needs --weights)",
                    prompt_length=96),
        AdapterSpec("lumina_mgpt_7b_768", CHAMELEON_HUB_IDS["lumina_mgpt_7b_768"], _chameleon, CHAMELEON_DEFAULTS,
                    "Lumina-mGPT-7B 768 px (48x48 + row EOLs) on transformers' Chameleon + Chameleon's VQ-GAN "
                    "(needs --weights with vqgan.ckpt in it or its tokenizer/)",
                    prompt_length=96),
        AdapterSpec("anole_7b", CHAMELEON_HUB_IDS["anole_7b"], _chameleon, CHAMELEON_DEFAULTS,
                    "Anole-7B 512 px (32x32) on transformers' Chameleon + Chameleon's VQ-GAN "
                    "(needs --weights with vqgan.ckpt in it or its tokenizer/)",
                    prompt_length=96),
        AdapterSpec("llamagen_t2i_xl_256", "peizesun/llamagen_t2i", _llamagen_t2i, LLAMAGEN_T2I_DEFAULTS,
                    "LlamaGen t2i XL stage 1 (256 px, 16x16) + FLAN-T5-XL captions (needs --weights)",
                    prompt_length=120),
        AdapterSpec("llamagen_t2i_xl_512", "peizesun/llamagen_t2i", _llamagen_t2i, LLAMAGEN_T2I_DEFAULTS,
                    "LlamaGen t2i XL stage 2 (512 px, 32x32) + FLAN-T5-XL captions (needs --weights)",
                    prompt_length=120),
    ]  # fmt: skip
    return {s.name: s for s in specs}


ADAPTERS: dict[str, AdapterSpec] = _specs()


def load_adapter(
    name: str,
    weights: str | Path | None = None,
    *,
    prompt_length: int | None = None,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device = "cpu",
    require_images: bool = False,
    **options: Any,
):
    """Load ``name`` (see :data:`ADAPTERS`) offline: ``(model, image_decoder, prompt_encoder, spec)``.

    ``model`` is a TokenModel (an adapter, or LlamaGen's GPT), ``image_decoder`` maps its codes to
    images (``codebook_size`` + ``decode``), ``prompt_encoder`` maps prompts to its conditions.

    Args:
        name: e.g. ``janus-pro-1b``.
        weights: local checkpoint directory (``None``: the hub id in the local HF cache).
        prompt_length: prompt positions (default: the spec's).
        dtype: ``"bfloat16"`` / ``torch.bfloat16`` / ... (default: the checkpoint's).
        device: where the model runs.
        require_images: fail now (``FileNotFoundError`` naming the file) when the image decoder's
            weights are absent (Chameleon's ``vqgan.ckpt``); otherwise such a model decodes tokens only
            and ``image_decoder.decode`` raises (benchmarks need tokens only). Pipelines set it.
        **options: family loader options (e.g. ``grid=(H, W)`` or ``vq_checkpoint=FILE`` for Chameleon).
    """
    key = canonical_name(name)
    if key not in ADAPTERS:
        raise ValueError(f"unknown adapter {name!r}; adapters: {', '.join(sorted(ADAPTERS))}")
    spec = ADAPTERS[key]
    if isinstance(dtype, str):
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"dtype {dtype!r} is not a torch dtype (use float32, bfloat16, float16)")
        dtype = getattr(torch, dtype)
    out = spec.loader(key, weights, prompt_length=prompt_length or spec.prompt_length, dtype=dtype, device=device,
                      require_images=require_images, **options)  # fmt: skip
    if len(out) == 3:  # a model with its own VQ tokenizer
        model, image_decoder, encoder = out
    else:
        from decodelab.vision.adapters.prompts import AdapterImageDecoder

        model, encoder = out
        image_decoder = AdapterImageDecoder(model)
    return model, image_decoder, encoder, spec
