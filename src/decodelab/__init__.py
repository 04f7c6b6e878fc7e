"""decodelab: a workbench for decoding images.

Parallel decoders for autoregressive image-token generators (AR, Jacobi / SJD, ...) on one
contract, LlamaGen-compatible tokenizers and transformers, and the evaluation around them.

Example:
    >>> import decodelab
    >>> pipe = decodelab.load_pipeline("test-c2i")
    >>> out = pipe(classes=[1, 2], decoder="ar", seed=0)
    >>> out.images[0].size, out.decode.nfe
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from decodelab import assets as _assets  # noqa: E402,F401  (locates the shipped checkpoints)
from decodelab import derain as _derain  # noqa: E402,F401  (registers MCW-Net)
from decodelab import speculative as _speculative  # noqa: E402,F401  (registers decoders)
from decodelab import vision as _vision  # noqa: E402,F401
from decodelab.registry import MODELS, PIPELINES  # noqa: E402
from decodelab.speculative import DecodeOutput, SamplingConfig, create_decoder, list_decoders  # noqa: E402
from decodelab.vision import lsr as _lsr  # noqa: E402,F401  (registers GB-LSR, LIIF, LTE, WIRE)
from decodelab.vision import models as _models  # noqa: E402,F401  (registers GPTs)
from decodelab.vision import tokenizers as _tokenizers  # noqa: E402,F401  (registers VQ tokenizers)
from decodelab.vision.pipeline import ImageGenerationPipeline, load_pipeline  # noqa: E402


def create_model(name: str, **kwargs: Any):
    """Build a registered model (generator or tokenizer) by name; ``None`` kwargs are dropped."""
    return MODELS.create(name, **kwargs)


def list_models(pattern: str = "*", kind: str | None = None) -> list[str]:
    """Registered model names matching a shell pattern (``kind``: 'generator' or 'tokenizer')."""
    return MODELS.list(pattern, kind)


def list_pipelines(pattern: str = "*") -> list[str]:
    return PIPELINES.list(pattern)


__all__ = [
    "DecodeOutput",
    "ImageGenerationPipeline",
    "SamplingConfig",
    "create_decoder",
    "create_model",
    "list_decoders",
    "list_models",
    "list_pipelines",
    "load_pipeline",
]
