"""Training code for decodelab's own models: VQ tokenizers and image-token GPTs.

The embedded defaults shipped with the package are trained with these functions, each from one
YAML config under ``configs/embedded/`` (``decodelab train --config FILE``).

Example:
    >>> from decodelab.train import load_train_config, run_training
    >>> cfg = load_train_config("configs/embedded/fmnist-c2i-vq.yaml", ["steps=20", "out_dir=runs/try"])
    >>> result = run_training(cfg)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from decodelab.train.config import DataConfig, GPTTrainConfig, TextEncoderConfig, VQTrainConfig, load_train_config
from decodelab.train.gpt import train_gpt
from decodelab.train.vq import TrainResult, train_vq

__all__ = [
    "DataConfig",
    "GPTTrainConfig",
    "TextEncoderConfig",
    "TrainResult",
    "VQTrainConfig",
    "load_train_config",
    "run_training",
    "train_gpt",
    "train_vq",
]


def run_training(cfg: VQTrainConfig | GPTTrainConfig, **kwargs: Any) -> TrainResult:
    """Dispatch on ``cfg.task``: :func:`train_vq` or :func:`train_gpt` (``kwargs`` are passed on)."""
    if isinstance(cfg, VQTrainConfig):
        return train_vq(cfg, **kwargs)
    if isinstance(cfg, GPTTrainConfig):
        return train_gpt(cfg, **kwargs)
    raise ValueError(f"not a training config: {type(cfg).__name__}")
