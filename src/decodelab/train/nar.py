"""NAR training (``task: nar``): next-neighbour prediction on frozen VQ tokens.

Everything but the model's objective is the image-token GPT task (:mod:`decodelab.train.gpt`):
the tokens are cached once per tokenizer, captions embedded once, each row's condition is replaced
by the null class / empty caption with probability ``cond_dropout`` (classifier-free guidance),
AdamW with warmup + cosine decay, gradient clipping, exact resume through the one loop.

The objective is upstream's (``NAR-images/autoregressive/train/train_c2i.py``): the whole image is
the input, attention uses the proximity mask (causal across anti-diagonals, bidirectional inside
one), and one cross-entropy is taken on the **mixed** logits of every position — the mean of the
horizontal head on the left neighbour and the vertical head on the upper neighbour, one head on
the first row / column, both heads at the condition for position 0 — so both heads are trained
through the positions they serve. The export is an
:class:`~decodelab.vision.pipeline.ImageGenerationPipeline` (``out_dir/pipeline``) whose samples
(``samples.png``) are drawn with the ``nar`` decoder.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from decodelab.registry import MODELS
from decodelab.train.config import GPTTrainConfig
from decodelab.train.data import ImageData
from decodelab.train.gpt import GPTTask
from decodelab.train.loop import TrainResult, fit
from decodelab.train.tasks import register_task

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from decodelab.train.loop import FitOptions

__all__ = ["NARTask", "NARTrainConfig", "train_nar"]

log = logging.getLogger(__name__)


@dataclass
class NARTrainConfig(GPTTrainConfig):
    """NAR training (``task: nar``): the ``gpt`` task's settings; ``model.name`` must be a NAR preset."""

    task: str = "nar"
    out_dir: str = "runs/nar"

    def __post_init__(self) -> None:
        if self.task != "nar":
            raise ValueError(f"NARTrainConfig needs task: nar, got {self.task!r}")
        # the GPT config's checks, which insist on its own task name
        self.task = "gpt"
        try:
            super().__post_init__()
        finally:
            self.task = "nar"


@register_task
class NARTask(GPTTask):
    """NAR: next-neighbour image-token prediction (proximity mask, two heads) on frozen VQ tokens.

    Args:
        cfg: the run's config.
        train_data, eval_data: in-memory data replacing ``cfg.data``.
        tokenizer: a VQ model replacing the one loaded from ``cfg.tokenizer``.
        text_encoder: a caption encoder (``prompts -> (emb, mask)``) replacing the configured one.
    """

    name = "nar"
    config_class = NARTrainConfig

    def check(self) -> None:
        super().check()
        name = self.cfg.model["name"]
        if MODELS.get(name).meta.get("family") != "nar":
            nar = [n for n in MODELS.list(kind="generator") if MODELS.get(n).meta.get("family") == "nar"]
            raise ValueError(
                f"model {name!r} is not a NAR (no vertical head); choose one of {nar}, or train it with task: gpt"
            )

    def card_title(self) -> str:
        return f"NAR image-token model: {self.cfg.name or 'nar'}"


def train_nar(
    cfg: NARTrainConfig,
    *,
    train_data: ImageData | None = None,
    eval_data: ImageData | None = None,
    tokenizer: Any = None,
    text_encoder: Any = None,
    **options: Unpack[FitOptions],
) -> TrainResult:
    """Train (or resume) a NAR model on a frozen tokenizer, as ``cfg`` describes.

    Args:
        cfg: the run's config.
        train_data, eval_data: in-memory data replacing ``cfg.data``.
        tokenizer: a VQ model replacing the one loaded from ``cfg.tokenizer``.
        text_encoder: a caption encoder replacing the configured one.
        **options: :func:`~decodelab.train.loop.fit`'s ``resume``, ``stop_at``, ``config_path``, ``overrides``.

    Returns:
        A :class:`~decodelab.train.loop.TrainResult`; when finished, ``final_dir`` is
        ``out_dir/pipeline`` (generate from it with ``decoder="nar"``).

    Raises:
        ValueError: for an invalid config (e.g. a model that is not a NAR) or resume.
        FileNotFoundError: for a missing tokenizer, checkpoint or data.
    """
    return fit(NARTask(cfg, train_data, eval_data, tokenizer, text_encoder), **options)
