"""Continuous image representations: GB-LSR, LIIF, LTE and an amortized WIRE on one query interface.

Every model is a :class:`~decodelab.vision.lsr.base.ContinuousImageModel`: ``encode`` an image
batch once, then ``query`` RGB at any continuous ``(y, x)`` coordinates in ``[-1, 1]`` (with the
output cell size) in chunks of bounded memory, or ``render`` a whole grid of any size. Models are
registered (``kind="lsr"``) on import of this package.

Example:
    >>> import torch
    >>> from decodelab.vision.lsr import create_lsr_model
    >>> model = create_lsr_model("test_gblsr_sr").eval()
    >>> img = torch.rand(1, 3, 12, 10)
    >>> model.render(img, (30, 25)).shape
    torch.Size([1, 3, 30, 25])
"""

from __future__ import annotations

from typing import Any

from decodelab.registry import MODELS
from decodelab.vision.lsr.base import (
    DEFAULT_CHUNK,
    ContinuousImageModel,
    Geometry,
    LatentState,
    lookup_cells,
    make_cell,
    make_coord,
)
from decodelab.vision.lsr.gblsr import GBLSRSR, GBLSRNative
from decodelab.vision.lsr.liif import LIIF
from decodelab.vision.lsr.lte import LTE
from decodelab.vision.lsr.wire import AmortizedWIRE

__all__ = [
    "DEFAULT_CHUNK",
    "GBLSRSR",
    "LIIF",
    "LTE",
    "AmortizedWIRE",
    "ContinuousImageModel",
    "GBLSRNative",
    "Geometry",
    "LatentState",
    "create_lsr_model",
    "list_lsr_models",
    "load_lsr_model",
    "lookup_cells",
    "make_cell",
    "make_coord",
]


def list_lsr_models(pattern: str = "*") -> list[str]:
    """Registered continuous-image model names matching a shell pattern."""
    return MODELS.list(pattern, kind="lsr")


def create_lsr_model(name: str, **kwargs: Any) -> ContinuousImageModel:
    """Build a registered continuous-image model (random weights).

    Raises:
        ValueError: for an unknown name or a model of another kind.
    """
    entry = MODELS.get(name)
    if entry.kind != "lsr":
        raise ValueError(f"{name!r} is a {entry.kind or 'non-lsr'} model; choose one of {list_lsr_models()}")
    return MODELS.create(name, **kwargs)


def load_lsr_model(path: str, **kwargs: Any) -> ContinuousImageModel:
    """Load a native checkpoint directory (``config.json`` + ``model.safetensors``) of a continuous model.

    Raises:
        FileNotFoundError: when the directory or its files are missing.
        ValueError: when it holds another kind of model.
    """
    from decodelab.hub import load_pretrained

    model = load_pretrained(path, **kwargs)
    if not isinstance(model, ContinuousImageModel):
        raise ValueError(f"{path} holds a {type(model).__name__}, not a continuous image model (GB-LSR/LIIF/LTE/WIRE)")
    return model
