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
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from decodelab.registry import MODELS
from decodelab.train.config import GPTTrainConfig
from decodelab.train.data import ImageData
from decodelab.train.gpt import GPTTask
from decodelab.train.loop import Run, TrainResult, fit
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

    def export(self, run: Run, card: dict[str, Any]) -> Path:
        """The pipeline directory ``out_dir/pipeline`` (card in its info) and ``samples.png`` (``nar`` decoder)."""
        from decodelab.vision.pipeline import ImageGenerationPipeline

        cfg = self.cfg
        info = {"name": card["name"], "world": cfg.data.name, "trained": True,
                "class_names": list(self.class_names or []), "card": card}  # fmt: skip
        if cfg.conditioning == "caption":
            info.pop("class_names")
        pipe = ImageGenerationPipeline(
            run.model.eval(), self.tokenizer.eval(), self.text_encoder, dict(cfg.pipeline_defaults), info
        )
        final = run.out / "pipeline"
        pipe.save_pretrained(final)
        _sample_grid(pipe, self.held, cfg.conditioning, run.out / "samples.png")
        return final

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


def _sample_grid(pipe: Any, held: ImageData, conditioning: str, path: Path, per_row: int = 8) -> None:
    """A grid of ``nar`` + CFG samples (one row per class, or one per held-out caption)."""
    from PIL import Image

    try:
        if conditioning == "class":
            n = len(pipe.info.get("class_names") or []) or pipe.model.num_classes
            result = pipe(classes=list(range(n)), num_images=per_row, seed=0, decoder="nar")
        else:
            prompts = list(dict.fromkeys(held.captions or []))[:6]
            result = pipe(prompts=prompts, num_images=per_row, seed=0, decoder="nar")
    except Exception as e:  # a sample grid is a convenience; never lose a finished run over it
        log.warning("could not draw the sample grid: %s", e)
        return
    w, h = result.images[0].size
    grid = Image.new(result.images[0].mode, (w * per_row, h * math.ceil(len(result.images) / per_row)))
    for i, im in enumerate(result.images):
        grid.paste(im, ((i % per_row) * w, (i // per_row) * h))
    grid.save(path)
