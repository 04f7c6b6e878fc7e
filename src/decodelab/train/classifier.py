"""Training of the Fashion-MNIST classifier behind the ``fmnist`` domain metrics (``task: classifier``).

:func:`train_classifier` trains :class:`decodelab.eval.fmnist.FMNISTClassifier` on the train split
(28x28 padded to 32x32 with background, values in [-1, 1]) with light augmentation (random shifts
of up to ``augment_shift`` px inside the padding, optional horizontal flips), AdamW and a warmup +
cosine learning rate, then measures accuracy on the whole test split and writes

- ``config.json`` + ``model.safetensors`` (``save_pretrained``; load with
  :func:`decodelab.eval.fmnist.load_classifier`),
- ``card.json`` + ``card.md``: the provenance card (config, data, steps, wall time, seed, test
  accuracy, weights sha256 and the command that reproduces the run),

next to the loop's ``checkpoint.pt`` and ``log.jsonl`` (copy only the four files above to ship it).
The task runs through the one training loop (:mod:`decodelab.train.loop`), so a run stopped with
``stop_at`` / ``--stop-at`` continues exactly with ``resume`` / ``--resume``.

The shipped ``decodelab/assets/fmnist-classifier`` was made with::

    python -m decodelab.train.classifier --config configs/embedded/fmnist-classifier.yaml

Randomness comes from one seeded ``torch.Generator`` (data order, augmentation; saved with every
checkpoint together with the current epoch's order) and the seeded global generator
(initialisation, dropout): the same seed and thread count give the same weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from decodelab.config import apply_overrides, load_config, to_dict
from decodelab.datasets.fashion_mnist import FASHION_MNIST_CLASSES, find_fashion_mnist, load_fashion_mnist
from decodelab.eval.fid import feature_statistics, frechet_distance
from decodelab.eval.fmnist import FMNISTClassifier, features, subset_indices
from decodelab.train.common import build_adamw, file_sha256, lr_at, read_jsonl
from decodelab.train.loop import Run, TrainResult, TrainTask, fit
from decodelab.train.tasks import register_task

__all__ = [
    "ClassifierTask",
    "ClassifierTrainConfig",
    "evaluate_accuracy",
    "load_classifier_config",
    "train_classifier",
    "train_from_config",
]

DEFAULT_CONFIG_PATH = "configs/embedded/fmnist-classifier.yaml"
DEFAULT_MODEL: dict[str, Any] = {"channels": [32, 64, 64], "feature_dim": 128, "dropout": 0.2}


@dataclass
class ClassifierTrainConfig:
    """Settings of one classifier training run (the keys of ``configs/embedded/fmnist-classifier.yaml``).

    Attributes:
        task: always ``"classifier"``.
        name: run name (the card's title).
        out_dir: output directory.
        steps: optimisation steps.
        batch_size: images per step.
        lr: peak learning rate (AdamW).
        weight_decay: AdamW weight decay.
        warmup: linear warmup steps.
        min_lr_ratio: final learning rate as a fraction of ``lr`` (cosine decay).
        label_smoothing: cross-entropy label smoothing.
        augment_shift: largest random shift in px (inside the 2 px padding; 0 disables).
        augment_flip: random horizontal flips.
        seed: seed of initialisation, data order and augmentation.
        threads: torch CPU threads.
        num_train: train images used (``None``: all 60000).
        num_test: test images evaluated at the end (``None``: all 10000).
        root: Fashion-MNIST folder (``None``: the standard search path).
        time_budget_min: stop early after this many minutes (``None``: no limit).
        log_every: steps between log lines / loss-curve points.
        ckpt_every: steps between checkpoints (``--resume`` continues from the last one).
        overwrite: start over in an ``out_dir`` that holds a run (the classifier trains in minutes).
        progress: show a progress bar (the log lines are printed anyway unless ``verbose=False``).
        noise_floor_n: subset sizes ``n`` for which the card records the FID noise floor
            (:func:`decodelab.eval.fmnist.noise_floor_fid`: ``n`` random train images vs the test split).
        noise_floor_seeds: seeds ``0 .. noise_floor_seeds - 1`` per ``n``.
        model: :class:`~decodelab.eval.fmnist.FMNISTClassifier` keyword arguments.
    """

    task: str = "classifier"
    name: str = "fmnist-classifier"
    out_dir: str = "runs/fmnist-classifier"
    steps: int = 3000
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 5e-4
    warmup: int = 100
    min_lr_ratio: float = 0.0
    label_smoothing: float = 0.0
    augment_shift: int = 2
    augment_flip: bool = True
    seed: int = 0
    threads: int = 1
    num_train: int | None = None
    num_test: int | None = None
    root: str | None = None
    time_budget_min: float | None = 10.0
    log_every: int = 100
    ckpt_every: int = 500
    overwrite: bool = True
    progress: bool = False
    noise_floor_n: list[int] = field(default_factory=lambda: [200, 1000])
    noise_floor_seeds: int = 3
    model: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_MODEL))

    def __post_init__(self) -> None:
        if self.task != "classifier":
            raise ValueError(f"task must be 'classifier' for this trainer, got {self.task!r}")
        if min(self.steps, self.batch_size, self.log_every, self.ckpt_every) < 1 or self.lr <= 0:
            raise ValueError("steps, batch_size, log_every and ckpt_every must be >= 1 and lr > 0")
        if not 0 <= self.augment_shift <= 2:
            raise ValueError(f"augment_shift must be 0, 1 or 2 (the padding width), got {self.augment_shift}")


def load_classifier_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> ClassifierTrainConfig:
    """Read a YAML training config (dotted ``key=value`` overrides; unknown keys are errors)."""
    return load_config(ClassifierTrainConfig, path, overrides)


# ------------------------------------------------------------------------------------------- data
def _padded_uint8(images: np.ndarray) -> Tensor:
    """uint8 ``[N, 28, 28]`` -> uint8 ``[N, 32, 32]`` with 2 px of background (0) on every side."""
    return F.pad(torch.from_numpy(np.array(images, dtype=np.uint8)), (2, 2, 2, 2), value=0)


def _to_input(x: Tensor) -> Tensor:
    """uint8 ``[B, 32, 32]`` -> float ``[B, 1, 32, 32]`` in [-1, 1] (as ``FashionMNIST(image_size=32)``)."""
    return (x.float() / 127.5 - 1.0)[:, None]


def _augment(x: Tensor, shift: int, flip: bool, gen: torch.Generator) -> Tensor:
    """Random shifts of up to ``shift`` px (background fills in) and horizontal flips; uint8 ``[B, S, S]``."""
    b, s = x.shape[0], x.shape[-1]
    if shift > 0:
        padded = F.pad(x, (shift, shift, shift, shift), value=0)  # [B, S + 2 shift, S + 2 shift]
        oy = torch.randint(0, 2 * shift + 1, (b,), generator=gen)
        ox = torch.randint(0, 2 * shift + 1, (b,), generator=gen)
        ar = torch.arange(s)
        rows = (oy[:, None] + ar)[:, :, None]  # [B, S, 1]
        cols = (ox[:, None] + ar)[:, None, :]  # [B, 1, S]
        x = padded[torch.arange(b)[:, None, None], rows, cols]
    if flip:
        mask = torch.rand(b, generator=gen) < 0.5
        x = torch.where(mask[:, None, None], x.flip(-1), x)
    return x


@torch.inference_mode()
def evaluate_accuracy(
    model: FMNISTClassifier, images: np.ndarray, labels: np.ndarray, batch_size: int = 1000
) -> tuple[float, float, list[float]]:
    """Accuracy, mean cross-entropy and per-class accuracy of ``model`` on raw uint8 ``[N, 28, 28]`` images."""
    model.eval()
    x_all = _padded_uint8(images)
    y_all = torch.from_numpy(np.array(labels, dtype=np.int64))
    preds, loss = [], 0.0
    for i in range(0, len(x_all), batch_size):
        logits = model(_to_input(x_all[i : i + batch_size]))
        loss += float(F.cross_entropy(logits, y_all[i : i + batch_size], reduction="sum"))
        preds.append(logits.argmax(1))
    pred = torch.cat(preds)
    correct = pred == y_all
    per_class = [float(correct[y_all == c].float().mean()) if (y_all == c).any() else float("nan") for c in range(10)]
    return float(correct.float().mean()), loss / len(y_all), per_class


@register_task
class ClassifierTask(TrainTask):
    """Fashion-MNIST classifier (domain metrics): cross-entropy, shifts + flips, AdamW, warmup + cosine.

    Args:
        cfg: the run's config.
        verbose: print a line every ``log_every`` steps and the final accuracy.
    """

    name = "classifier"
    config_class = ClassifierTrainConfig
    also_resumable = frozenset({"num_test", "noise_floor_n", "noise_floor_seeds"})

    def __init__(self, cfg: ClassifierTrainConfig, verbose: bool = True) -> None:
        super().__init__(cfg)
        self.verbose = verbose

    def build_data(self, run: Run) -> None:
        """Padded uint8 train images, the test split, and the first epoch's order."""
        cfg = self.cfg
        train_images, train_labels = load_fashion_mnist("train", cfg.root)
        test_images, test_labels = load_fashion_mnist("test", cfg.root)
        if cfg.num_train is not None:
            train_images, train_labels = train_images[: cfg.num_train], train_labels[: cfg.num_train]
        if cfg.num_test is not None:
            test_images, test_labels = test_images[: cfg.num_test], test_labels[: cfg.num_test]
        self.train_images, self.test_images, self.test_labels = train_images, test_images, test_labels
        self.x_train = _padded_uint8(train_images)  # uint8 [N, 32, 32]
        self.y_train = torch.from_numpy(np.array(train_labels, dtype=np.int64))
        self.num_items = len(self.x_train)
        self.gen = torch.Generator().manual_seed(cfg.seed)  # data order and augmentation
        self.order, self.pos = torch.randperm(self.num_items, generator=self.gen), 0

    def build_model(self, run: Run) -> torch.nn.Module:
        model = FMNISTClassifier(**self.cfg.model, num_classes=len(FASHION_MNIST_CLASSES), in_channels=1, image_size=32)
        return model.to(memory_format=torch.channels_last)  # ~1.7x faster convolutions on CPU

    def build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        return build_adamw(model, self.cfg.lr, self.cfg.weight_decay, (0.9, 0.999))

    def generators(self) -> dict[str, torch.Generator]:
        return {"data": self.gen}

    def state_dict(self) -> dict[str, Any]:
        return {"order": self.order, "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order, self.pos = state["order"].clone(), int(state["pos"])

    def lr(self, step: int, total: int) -> float:
        return lr_at(step, self.cfg.lr, total, self.cfg.warmup, "cosine", self.cfg.min_lr_ratio)

    def batch(self, step: int) -> tuple[Tensor, Tensor]:
        """The next ``batch_size`` images of the epoch's order, augmented: ``([B, 1, 32, 32], [B])``."""
        cfg = self.cfg
        if self.pos + cfg.batch_size > self.num_items:  # new epoch (the incomplete tail is skipped)
            self.order, self.pos = torch.randperm(self.num_items, generator=self.gen), 0
        idx = self.order[self.pos : self.pos + cfg.batch_size]
        self.pos += cfg.batch_size
        x = _to_input(_augment(self.x_train[idx], cfg.augment_shift, cfg.augment_flip, self.gen))
        return x.contiguous(memory_format=torch.channels_last), self.y_train[idx]

    def forward(self, model: torch.nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        return model(batch[0])

    def loss(self, output: Tensor, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        return F.cross_entropy(output, batch[1], label_smoothing=self.cfg.label_smoothing), {}

    def log_fields(self, run: Run, record: dict[str, Any]) -> dict[str, Any]:
        if self.verbose:
            print(f"step {run.step}/{run.total} loss {record['loss_avg']:.4f} lr {record['lr']:.2e} "
                  f"{run.wall():.0f}s", flush=True)  # fmt: skip
        return {}

    def final_metrics(self, run: Run) -> dict[str, Any]:
        """Test accuracy / loss / per-class accuracy; also the FID noise floors for the card."""
        acc, test_loss, per_class = evaluate_accuracy(run.model, self.test_images, self.test_labels)
        self.floors = _noise_floors(run.model, self.train_images, self.test_images, self.cfg)
        self.curve = [[r["step"], round(r["loss_avg"], 5)] for r in read_jsonl(run.out / "log.jsonl")
                      if "loss_avg" in r]  # fmt: skip
        if self.verbose:
            print(f"test accuracy {acc:.4f} (loss {test_loss:.4f}) after {run.step} steps", flush=True)
        return {
            "test_accuracy": round(acc, 5),
            "test_loss": round(test_loss, 5),
            "per_class_accuracy": {c: round(a, 4) for c, a in zip(FASHION_MNIST_CLASSES, per_class)},
            "final_train_loss": self.curve[-1][1] if self.curve else None,
        }

    def card(self, run: Run, metrics: dict[str, Any]) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "architecture": "FMNISTClassifier",
            "model_config": run.model.config,
            "data": {
                "dataset": "Fashion-MNIST (IDX files)",
                "files": [str(p) for p in find_fashion_mnist("train", cfg.root) + find_fashion_mnist("test", cfg.root)],
                "train_split": "train",
                "num_train": self.num_items,
                "test_split": "test",
                "num_test": len(self.test_images),
                "input": "28x28 padded to 32x32 with background, [-1, 1], 1 channel",
                "augmentation": {"shift_px": cfg.augment_shift, "hflip": cfg.augment_flip},
            },
            "threads": cfg.threads,
            "fid_noise_floor (fmnist features)": self.floors,
            "loss_curve": self.curve,
        }

    def export(self, run: Run, card: dict[str, Any]) -> Path:
        """``config.json`` + ``model.safetensors`` in ``out_dir`` itself; the card gets the weights hash."""
        run.model.save_pretrained(run.out)
        weights = run.out / "model.safetensors"
        card["weights_sha256"] = file_sha256(weights)
        card["weights_bytes"] = weights.stat().st_size
        return run.out

    def card_title(self) -> str:
        return f"{self.cfg.name}: Fashion-MNIST classifier for domain metrics"

    def card_sections(self, card: dict[str, Any]) -> dict[str, list[str]]:
        floors = card["fid_noise_floor (fmnist features)"]
        return {
            "About": [
                "A small CNN trained on the Fashion-MNIST train split. Its penultimate features define",
                "**FID (fmnist features)** and its predictions **class accuracy (fmnist classifier)**; these",
                "are domain metrics, not comparable with Inception FID.",
            ],
            "FID (fmnist features) noise floor": [
                "FID of `n` random real train images against the test split: what a perfect generator scores",
                "with `n` samples (FID is biased upward for small `n`). Read generated-image FIDs next to it.",
                "",
                *[
                    f"- {k}: mean {v['mean']} (seeds 0..{len(v['per_seed']) - 1}: {v['per_seed']})"
                    for k, v in floors.items()
                    if k.startswith("n=") and isinstance(v, dict)
                ],
            ],
            "Per-class test accuracy": [
                "| class | accuracy |",
                "|---|---|",
                *[f"| {c} | {a:.4f} |" for c, a in card["metrics"]["per_class_accuracy"].items()],
            ],
        }

    def reproduce_command(self, config_path: str | None, overrides: list[str] | None) -> str:
        return super().reproduce_command(config_path, overrides) if config_path else _reproduce_command(self.cfg)


# -------------------------------------------------------------------------------------- training
def train_classifier(
    out_dir: str | os.PathLike[str],
    steps: int = 3000,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    *,
    verbose: bool = True,
    command: str | None = None,
    resume: bool = False,
    stop_at: int | None = None,
    **settings: Any,
) -> TrainResult:
    """Train an :class:`FMNISTClassifier` on Fashion-MNIST and save it with its provenance card.

    Args:
        out_dir: output directory (created; an earlier run there is replaced unless ``overwrite=False``).
        steps, batch_size, lr, seed: see :class:`ClassifierTrainConfig`.
        verbose: print a log line every ``log_every`` steps.
        command: the reproduce command written to the card (default: built from the settings).
        resume, stop_at: continue a stopped run / stop with a checkpoint after this many steps.
        **settings: any other :class:`ClassifierTrainConfig` field (``weight_decay``,
            ``num_train``, ``model={...}``, ...).

    Returns:
        A :class:`~decodelab.train.loop.TrainResult`; ``metrics["test_accuracy"]`` is the test accuracy.

    Raises:
        FileNotFoundError: when the Fashion-MNIST files are not found.
        ValueError: on an unknown or invalid setting.
    """
    valid = {f.name for f in dataclasses.fields(ClassifierTrainConfig)} - {"out_dir", "steps", "batch_size", "lr"}
    unknown = sorted(set(settings) - valid)
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")
    model_kwargs = {**DEFAULT_MODEL, **dict(settings.pop("model", None) or {})}
    cfg = ClassifierTrainConfig(
        out_dir=str(out_dir), steps=steps, batch_size=batch_size, lr=lr, seed=seed, model=model_kwargs, **settings
    )
    return train_from_config(cfg, verbose=verbose, command=command, resume=resume, stop_at=stop_at)


def train_from_config(
    cfg: ClassifierTrainConfig,
    verbose: bool = True,
    command: str | None = None,
    *,
    resume: bool = False,
    stop_at: int | None = None,
) -> TrainResult:
    """Run the training described by ``cfg`` (see :func:`train_classifier`)."""
    return fit(ClassifierTask(cfg, verbose), resume=resume, stop_at=stop_at, command=command)


def _noise_floors(
    model: FMNISTClassifier, train_images: np.ndarray, test_images: np.ndarray, cfg: ClassifierTrainConfig
) -> dict[str, Any]:
    """FID of ``n`` random train images vs the test split, per ``n`` and seed (what a perfect
    generator scores with ``n`` samples; equals ``noise_floor_fid(n, seed)`` of the saved model)."""
    if not cfg.noise_floor_n:
        return {}
    model.eval()
    ref = feature_statistics(features(test_images, model))
    out: dict[str, Any] = {"reference": f"test split ({len(test_images)} images)", "subsets_from": "train split"}
    for n in cfg.noise_floor_n:
        if not 2 <= n <= len(train_images):
            out[f"n={n}"] = "skipped: n is not in 2..num_train"
            continue
        vals = []
        for seed in range(cfg.noise_floor_seeds):
            idx = subset_indices(len(train_images), int(n), seed)
            vals.append(frechet_distance(*feature_statistics(features(train_images[idx], model)), *ref))
        out[f"n={n}"] = {"per_seed": [round(v, 4) for v in vals], "mean": round(float(np.mean(vals)), 4)}
    return out


def _reproduce_command(cfg: ClassifierTrainConfig) -> str:
    base = to_dict(ClassifierTrainConfig())
    now = to_dict(cfg)
    diffs = []
    for key, value in now.items():
        if key == "model":
            diffs += [f"model.{k}={json.dumps(v)}" for k, v in value.items() if base["model"].get(k) != v]
        elif base[key] != value:
            diffs.append(f"{key}={json.dumps(value) if not isinstance(value, str) else value}")
    return " ".join(["python -m decodelab.train.classifier --config", DEFAULT_CONFIG_PATH, *diffs])


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m decodelab.train.classifier --config FILE [key=value ...]``."""
    parser = argparse.ArgumentParser(prog="python -m decodelab.train.classifier", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=None, help=f"YAML config (e.g. {DEFAULT_CONFIG_PATH})")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. steps=100 model.feature_dim=64")
    args = parser.parse_args(argv)
    if args.config:
        cfg = load_classifier_config(args.config, args.overrides)
    else:
        cfg = ClassifierTrainConfig(**apply_overrides(to_dict(ClassifierTrainConfig()), args.overrides))
    cmd = " ".join(["python -m decodelab.train.classifier", *(["--config", args.config] if args.config else [])])
    result = train_from_config(cfg, command=" ".join([cmd, *args.overrides]))
    print(json.dumps({"out_dir": str(result.out_dir), "test_accuracy": result.metrics["test_accuracy"]}))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
