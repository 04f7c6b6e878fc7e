"""Training configs as dataclasses, loaded from YAML with dotted overrides.

A training YAML names its ``task`` at the top level;
:func:`decodelab.train.tasks.load_train_config` reads it and loads the file into that task's config
class (here :class:`VQTrainConfig` and :class:`GPTTrainConfig`; the other tasks keep theirs in their
own modules) through :func:`decodelab.config.load_config`, so an unknown key (in the file or in an
override such as ``optim.lrr=1``) is a ``ValueError`` that lists the valid keys.

``model`` is a mapping: ``name`` (a registered model, see ``decodelab.list_models()``) plus that
model's constructor keyword arguments. Overrides may change keys present in the file
(``model.dim=256``); the trainers fill in the keys that follow from the data (vocabulary, grid,
number of classes, caption length) and refuse a conflicting value.

Example:
    >>> from decodelab.train import load_train_config
    >>> cfg = load_train_config("configs/embedded/fmnist-c2i-vq.yaml", ["steps=10"])  # doctest: +SKIP
    >>> cfg.task, cfg.steps
    ('vq', 10)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DATASETS",
    "DataConfig",
    "GPTTrainConfig",
    "TextEncoderConfig",
    "VQTrainConfig",
]

#: Dataset names a training config may use.
DATASETS = ("fashion_mnist", "shapes_world", "noise")


@dataclass
class DataConfig:
    """Which images (and labels / captions) to train and evaluate on.

    Attributes:
        name: ``fashion_mnist`` (IDX files, see :mod:`decodelab.datasets.fashion_mnist`),
            ``shapes_world`` (procedural captioned scenes) or ``noise`` (smooth random images
            with random labels and captions, for tests and smoke runs). (``synthetic`` names
            synthetic *rain* in the derain task, so it is not accepted here.)
        root: Fashion-MNIST folder (``None``: the standard search path).
        image_size: side length; Fashion-MNIST is padded 28 -> 32 (2 px of background) first and
            resized when this is neither 28 nor 32.
        channels: 1 (grey) or 3 (RGB; grey repeated for Fashion-MNIST).
        train_split, eval_split: Fashion-MNIST splits.
        num_train: training images (``None``: the whole split; required for shapes/noise).
        num_eval: held-out images for the periodic evaluation.
        final_eval_samples: held-out images for the final metrics (``None``: the whole eval split).
        seed: generation seed of the shapes world / noise training set.
        eval_seed: generation seed of the shapes world / noise held-out set.
        max_count: shapes world: largest count of the counting prompts.
        num_classes: noise: number of labels.
    """

    name: str = "fashion_mnist"
    root: str | None = None
    image_size: int = 32
    channels: int = 1
    train_split: str = "train"
    eval_split: str = "test"
    num_train: int | None = None
    num_eval: int = 1000
    final_eval_samples: int | None = None
    seed: int = 0
    eval_seed: int = 1
    max_count: int = 4
    num_classes: int = 10

    def __post_init__(self) -> None:
        if self.name == "synthetic":
            raise ValueError(
                "data.name 'synthetic' is synthetic rain (the derain task); for random images in a VQ/GPT "
                "run use data.name: noise"
            )
        if self.name not in DATASETS:
            raise ValueError(f"unknown training dataset {self.name!r}; choose one of {', '.join(DATASETS)}")
        if self.channels not in (1, 3):
            raise ValueError(f"data.channels must be 1 or 3, got {self.channels}")
        if self.name != "fashion_mnist" and not self.num_train:
            raise ValueError(f"data.num_train must be set for the {self.name} dataset")


@dataclass
class TextEncoderConfig:
    """Frozen caption encoder for text-conditional GPTs.

    Attributes:
        path: Hugging Face encoder directory (``None``: the packaged MiniLM-L6).
        max_length: caption positions; becomes the GPT's ``cls_token_num``.
    """

    path: str | None = None
    max_length: int = 16


@dataclass
class _Common:
    """Fields shared by every trainer."""

    task: str = ""
    name: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: dict[str, Any] = field(default_factory=dict)
    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    warmup: int = 100
    lr_schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    threads: int | None = None
    log_every: int = 10
    ckpt_every: int = 200
    eval_every: int = 500
    eval_batch_size: int = 256
    out_dir: str = "runs/run"
    time_budget_min: float | None = None
    overwrite: bool = False
    progress: bool = True

    def _check_common(self) -> None:
        for key in ("steps", "batch_size", "log_every", "ckpt_every", "eval_every", "eval_batch_size"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if len(self.betas) != 2:
            raise ValueError(f"betas must be two numbers, got {self.betas}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {self.lr_schedule!r}")

    def check_model(self, kind: str | None = None, what: str = "") -> None:
        """Raise ``ValueError`` unless ``model`` names a registered model (checked when training starts).

        Args:
            kind: also require this registry kind (``tokenizer``, ``generator``).
            what: how the error message calls a model of that kind (e.g. "a VQ tokenizer").
        """
        if not isinstance(self.model, dict) or not self.model.get("name"):
            raise ValueError(
                "model must be a mapping with a registered model 'name' and its keyword arguments, "
                "e.g. model: {name: test_vq, ch: 32}"
            )
        if kind is not None:
            from decodelab.registry import MODELS

            if MODELS.get(self.model["name"]).kind != kind:
                raise ValueError(
                    f"model {self.model['name']!r} is not {what or kind}; choose one of {MODELS.list(kind=kind)}"
                )


@dataclass
class VQTrainConfig(_Common):
    """VQ tokenizer training (``task: vq``).

    Attributes:
        recon_loss: ``l1`` or ``l2`` pixel reconstruction loss.
        recon_weight: weight of the pixel loss.
        grad_loss_weight: weight of an L1 loss between the images' finite differences (sharper
            edges without a perceptual network; 0 disables it).
        codebook_weight: weight of the model's codebook + commitment (+ entropy) losses.
        dead_code_every: restart codes unused for this many steps from the current batch's
            encoder latents (0 disables restarts).
        dead_code_threshold: a code is dead when used at most this many times in the window.
        dead_code_until: no restarts after this step (``None``: until the end).
    """

    task: str = "vq"
    recon_loss: str = "l1"
    recon_weight: float = 1.0
    grad_loss_weight: float = 0.0
    codebook_weight: float = 1.0
    dead_code_every: int = 0
    dead_code_threshold: int = 0
    dead_code_until: int | None = None
    out_dir: str = "runs/vq"

    def __post_init__(self) -> None:
        if self.task != "vq":
            raise ValueError(f"VQTrainConfig needs task: vq, got {self.task!r}")
        self._check_common()
        if self.recon_loss not in ("l1", "l2"):
            raise ValueError(f"recon_loss must be 'l1' or 'l2', got {self.recon_loss!r}")


@dataclass
class GPTTrainConfig(_Common):
    """Image-token GPT training (``task: gpt``): class-conditional or caption-conditional.

    Attributes:
        tokenizer: directory of the frozen, trained VQ tokenizer (``config.json`` +
            ``model.safetensors``, e.g. ``runs/fmnist-c2i-vq/final``).
        conditioning: ``class`` (labels; ``c2i``) or ``caption`` (text; ``t2i``).
        cond_dropout: probability of replacing a condition by the null class / empty caption
            (classifier-free guidance training); becomes the model's ``class_dropout_prob``.
        text_encoder: caption encoder settings (``caption`` conditioning only).
        flip_augment: also tokenise horizontally flipped training images (doubles the token set).
        label_smoothing: cross-entropy label smoothing.
        autocast_bf16: run the training forward pass under bfloat16 autocast (parameters, gradients
            and optimizer state stay float32); about 1.25x faster on CPUs with AVX512-BF16.
        eval_samples: held-out images whose token loss is measured every ``eval_every`` steps.
        pipeline_defaults: sampling defaults stored in the exported pipeline.
        class_names: names of the classes (``None``: the dataset's own names).
    """

    task: str = "gpt"
    tokenizer: str = ""
    conditioning: str = "class"
    cond_dropout: float = 0.1
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    flip_augment: bool = False
    label_smoothing: float = 0.0
    autocast_bf16: bool = False
    lr: float = 6e-4
    weight_decay: float = 0.05
    eval_samples: int = 1000
    pipeline_defaults: dict[str, Any] = field(
        default_factory=lambda: {"cfg_scale": 4.0, "temperature": 1.0, "top_k": 0, "top_p": 1.0}
    )
    class_names: list[str] | None = None
    out_dir: str = "runs/gpt"

    def __post_init__(self) -> None:
        if self.task != "gpt":
            raise ValueError(f"GPTTrainConfig needs task: gpt, got {self.task!r}")
        self._check_common()
        if self.conditioning not in ("class", "caption"):
            raise ValueError(f"conditioning must be 'class' or 'caption', got {self.conditioning!r}")
        if not 0.0 <= self.cond_dropout < 1.0:
            raise ValueError(f"cond_dropout must be in [0, 1), got {self.cond_dropout}")
        if "class_dropout_prob" in self.model:
            raise ValueError("set the CFG condition dropout with cond_dropout, not model.class_dropout_prob")
