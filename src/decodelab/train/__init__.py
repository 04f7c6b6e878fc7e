"""Training code for decodelab's own models: one loop, one task per model kind.

:mod:`decodelab.train.loop` holds the loop (resume, checkpoints, random state, learning rate,
logging, evaluation cadence, time budget, device / autocast, provenance card) and
:mod:`decodelab.train.tasks` the one table of tasks, keyed by a config's ``task:`` value:

- ``vq``: VQ image tokenizers (:mod:`decodelab.train.vq`);
- ``gpt``: image-token GPTs on a frozen tokenizer (:mod:`decodelab.train.gpt`);
- ``classifier``: the Fashion-MNIST domain classifier (:mod:`decodelab.train.classifier`);
- ``derain``: MCW-Net derainers (:mod:`decodelab.train.derain`);
- ``lsr``: continuous image models, GB-LSR / LIIF / LTE / WIRE (:mod:`decodelab.train.lsr`).

The embedded defaults shipped with the package are trained this way, each from one YAML config
(``decodelab train --config FILE``).

Example:
    >>> from decodelab.train import load_train_config, run_training
    >>> cfg = load_train_config("configs/embedded/fmnist-c2i-vq.yaml", ["steps=20", "out_dir=runs/try"])
    >>> result = run_training(cfg)  # doctest: +SKIP
"""

from __future__ import annotations

# Importing the task modules registers their tasks in TASKS.
from decodelab.train import classifier, derain, lsr, nar  # noqa: F401
from decodelab.train.config import DataConfig, GPTTrainConfig, TextEncoderConfig, VQTrainConfig
from decodelab.train.gpt import train_gpt
from decodelab.train.loop import TrainResult, TrainTask, fit
from decodelab.train.tasks import TASKS, get_task, load_train_config, register_task, run_training
from decodelab.train.vq import train_vq

__all__ = [
    "TASKS",
    "DataConfig",
    "GPTTrainConfig",
    "TextEncoderConfig",
    "TrainResult",
    "TrainTask",
    "VQTrainConfig",
    "fit",
    "get_task",
    "load_train_config",
    "register_task",
    "run_training",
    "train_gpt",
    "train_vq",
]
