"""Training of continuous image models (``task: lsr`` configs): native reconstruction or arbitrary-scale SR.

One task serves every continuous model, because every model answers the same call
``model(inp, coord, cell) -> rgb``; it runs through the one training loop
(:mod:`decodelab.train.loop`), and :func:`train_lsr` is its Python entry point:

- ``mode: native`` (GB-LSR's recipe): a random ``inp_size``-pixel crop is both the input and the
  target; the loss is taken at ``sample_q`` random pixel centres (``null``: all pixels). GB-LSR:
  256 crops, MSE, AdamW 2e-4, betas (0.9, 0.95), grad-clip 1.0, batch 8. ``downscale: [lo, hi]``
  (decodelab's option, default ``[1, 1]``) takes each crop from the image seen at a random scale
  ``z ~ U(lo, hi)``, for training photos larger than the images the model will meet.
- ``mode: sr`` (LIIF's recipe): ``scale ~ U(scale_min, scale_max)``, an ``inp_size`` LR input
  bicubic-downsampled from a random HR crop, ``sample_q`` HR query pixels with their cell size;
  L1, Adam 1e-4, lr halved at given steps, batch 16.

Exact resume (:mod:`decodelab.train.loop`): the batch order is a pure function of
``(seed, step)``, each step's crops/scales/queries come from a generator seeded with
``(seed, step)``, and the checkpoint holds model, optimizer and every RNG state; a resumed run
reproduces an uninterrupted one bit for bit on the same machine and thread count.

Outputs in ``out_dir``: ``checkpoint.pt``, ``log.jsonl``, ``config.json`` and, at the end,
``final/`` (``config.json`` + ``model.safetensors``, loadable with ``load_lsr_model``) with the
provenance card (``card.json`` / ``card.md``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from decodelab.config import load_config
from decodelab.train.common import batch_indices, lr_at
from decodelab.train.loop import FitOptions, Run, TrainResult, TrainTask, fit
from decodelab.train.tasks import register_task

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "LSRDataConfig",
    "LSRTask",
    "LSRTrainConfig",
    "LSRTrainResult",
    "load_lsr_config",
    "lr_for_step",
    "pixel_loss",
    "run_evaluation",
    "step_generator",
    "train_lsr",
]

MODES = ("native", "sr")
LOSSES = ("l1", "mse", "charbonnier")


@dataclass
class LSRDataConfig:
    """Where training and evaluation images come from.

    Attributes:
        name: ``bundled`` (offline photos), ``div2k``, a benchmark name, or a folder path.
        root: data directory (``None``: ``$DECODELAB_DATA/sr/...``).
        train_split: split of ``name`` to train on (bundled: ``train``; DIV2K: ``train``).
        eval_name: evaluation set (``None``: same as ``name``).
        eval_split: its split (bundled: ``test``; DIV2K: ``valid``).
        max_train_images: use only the first N training images.
        eval_images: evaluate on the first N evaluation images (``None``: all).
        eval_crop: centre crop of the evaluation images (``None``: whole images).
    """

    name: str = "bundled"
    root: str | None = None
    train_split: str = "train"
    eval_name: str | None = None
    eval_split: str = "test"
    max_train_images: int | None = None
    eval_images: int | None = None
    eval_crop: int | None = 256


@dataclass
class LSRTrainConfig:
    """A continuous-model training run (see the module docstring)."""

    task: str = "lsr"
    name: str = ""
    mode: str = "sr"
    data: LSRDataConfig = field(default_factory=LSRDataConfig)
    model: dict[str, Any] = field(default_factory=dict)
    inp_size: int = 48
    scale_min: float = 1.0
    scale_max: float = 4.0
    sample_q: int | None = 2304
    augment: bool = True
    downscale: list[float] = field(default_factory=lambda: [1.0, 1.0])
    steps: int = 1000
    batch_size: int = 16
    optimizer: str = "adam"
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    lr_schedule: str = "multistep"
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.5
    warmup: int = 0
    min_lr_ratio: float = 0.1
    grad_clip: float | None = None
    loss: str = "l1"
    seed: int = 0
    threads: int | None = None
    log_every: int = 10
    ckpt_every: int = 200
    eval_every: int = 0
    eval_scales: list[float] = field(default_factory=lambda: [2.0, 3.0, 4.0])
    time_budget_min: float | None = None
    out_dir: str = "runs/lsr"
    progress: bool = True
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.task != "lsr":
            raise ValueError(f"an lsr training config needs task: lsr, got {self.task!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"optimizer must be 'adam' or 'adamw', got {self.optimizer!r}")
        if self.lr_schedule not in ("multistep", "cosine", "constant"):
            raise ValueError(f"lr_schedule must be multistep, cosine or constant, got {self.lr_schedule!r}")
        if len(self.downscale) != 2 or not 0 < self.downscale[0] <= self.downscale[1] <= 1:
            raise ValueError(f"downscale must be [lo, hi] with 0 < lo <= hi <= 1, got {self.downscale}")
        if self.mode != "native" and list(self.downscale) != [1.0, 1.0]:
            raise ValueError("downscale applies to mode: native only (mode sr draws its scale from scale_min/max)")
        if self.model and "name" not in self.model:
            raise ValueError("model must name a registered continuous model: model: {name: gblsr_native, ...}")


def load_lsr_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> LSRTrainConfig:
    """Read a ``task: lsr`` YAML with dotted overrides (unknown keys are errors)."""
    cfg = load_config(LSRTrainConfig, path, overrides)
    LSRTask.check_config_file(cfg, path)
    return cfg


#: what :func:`train_lsr` returns: the loop's result record (``final_dir`` is ``None`` when stopped early)
LSRTrainResult = TrainResult


def lr_for_step(cfg: LSRTrainConfig, step: int) -> float:
    """The learning rate of ``step`` (0-based): warmup, then multistep (``lr * gamma^k``), cosine or constant."""
    return lr_at(step, cfg.lr, cfg.steps, cfg.warmup, cfg.lr_schedule, cfg.min_lr_ratio,
                 milestones=cfg.milestones, gamma=cfg.gamma)  # fmt: skip


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of one step's crops, scales, flips and query pixels: a pure function of its arguments."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + 17) * 1_000_033 + int(step))


def pixel_loss(kind: str, pred: Tensor, target: Tensor) -> Tensor:
    if kind == "l1":
        return F.l1_loss(pred, target)
    if kind == "mse":
        return F.mse_loss(pred, target)
    return torch.sqrt((pred - target).pow(2) + 1e-6).mean()  # Charbonnier, eps 1e-3


def _train_images(cfg: LSRTrainConfig) -> tuple[list[Tensor], dict[str, Any]]:
    """Training images as uint8 ``[3, H, W]`` (kept in memory, as LIIF's ``cache: in_memory``)."""
    from decodelab.datasets.sr import load_sr_dataset

    ds = load_sr_dataset(cfg.data.name, None, cfg.data.root, cfg.data.train_split)
    n = len(ds) if cfg.data.max_train_images is None else min(len(ds), cfg.data.max_train_images)
    images = [(ds.hr(i) * 255).round().to(torch.uint8) for i in range(n)]
    return images, {**ds.info, "num_images": n, "names": ds.names[:n]}


def _eval_sets(cfg: LSRTrainConfig) -> dict[str, Any]:
    from decodelab.datasets.sr import load_sr_dataset

    name = cfg.data.eval_name or cfg.data.name
    n = cfg.data.eval_images
    if cfg.mode == "native":
        ds = load_sr_dataset(name, None, cfg.data.root, cfg.data.eval_split)
        k = len(ds) if n is None else min(n, len(ds))
        return {"native": ([ds.hr(i) for i in range(k)], ds.names[:k])}
    out = {}
    for s in cfg.eval_scales:
        ds = load_sr_dataset(name, float(s), cfg.data.root, cfg.data.eval_split)
        k = len(ds) if n is None else min(n, len(ds))
        out[f"x{float(s):g}"] = [ds[i] for i in range(k)]
    return out


def run_evaluation(model: Any, cfg: LSRTrainConfig, sets: dict[str, Any]) -> dict[str, float]:
    """Flat metrics of the periodic / final evaluation."""
    from decodelab.vision.lsr.evaluate import evaluate_native, evaluate_sr

    metrics: dict[str, float] = {}
    for key, data in sets.items():
        if key == "native":
            res = evaluate_native(model, data[0], data[1], crop=cfg.data.eval_crop)
            metrics.update({"native_psnr": res["psnr"], "native_ssim": res["ssim"]})
        else:
            res = evaluate_sr(model, data, crop=cfg.data.eval_crop)
            metrics.update({f"{key}_psnr_y": res["psnr_y"], f"{key}_ssim_y": res["ssim_y"],
                            f"{key}_psnr_rgb": res["psnr_rgb"]})  # fmt: skip
    return metrics


def _bandwidth(model: Any) -> float | None:
    fn = getattr(model, "bandwidth", None)
    if fn is None:
        return None
    try:
        s = fn()
    except ValueError:  # per-patch bandwidth: no single value
        return None
    return float(s.detach()) if s.numel() == 1 else None


@register_task
class LSRTask(TrainTask):
    """Continuous image model (GB-LSR, LIIF, LTE, WIRE): native reconstruction or arbitrary-scale SR.

    Args:
        cfg: the run's config.
        train_images: in-memory training images ``[3, H, W]`` replacing ``cfg.data`` (tests).
        eval_sets: evaluation data replacing ``cfg.data`` (``{}`` skips evaluation).
    """

    name = "lsr"
    config_class = LSRTrainConfig

    def __init__(
        self, cfg: LSRTrainConfig, train_images: list[Tensor] | None = None, eval_sets: dict[str, Any] | None = None
    ) -> None:
        super().__init__(cfg)
        self.images, self.sets = train_images, eval_sets
        self.data_info: dict[str, Any] = {}
        self.last_log: tuple[float, int] | None = None  # (time, step) of the last log record

    @classmethod
    def check_config_file(cls, cfg: LSRTrainConfig, path: str | Path) -> None:
        if not cfg.model:
            raise ValueError(f"{path}: the config has no model (model: {{name: ..., ...}})")

    def check(self) -> None:
        if not self.cfg.model:
            raise ValueError("model must name a registered continuous model: model: {name: gblsr_native, ...}")

    def build_data(self, run: Run) -> None:
        from decodelab.datasets.sr import NativeCropSampler, SRImplicitSampler

        cfg = self.cfg
        if self.images is None:
            self.images, self.data_info = _train_images(cfg)
        else:
            self.data_info = {"dataset": "in-memory", "num_images": len(self.images)}
        if cfg.mode == "native":
            self.sampler = NativeCropSampler(self.images, cfg.inp_size, cfg.sample_q, cfg.augment, tuple(cfg.downscale))
        else:
            self.sampler = SRImplicitSampler(self.images, cfg.inp_size, cfg.scale_min, cfg.scale_max, cfg.sample_q,
                                             cfg.augment)  # fmt: skip
        if self.sets is None:
            self.sets = _eval_sets(cfg)

    def build_model(self, run: Run) -> torch.nn.Module:
        from decodelab.vision.lsr import create_lsr_model

        return create_lsr_model(self.cfg.model["name"], **{k: v for k, v in self.cfg.model.items() if k != "name"})

    def build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        cfg = self.cfg
        params = [p for p in model.parameters() if p.requires_grad]
        opt_cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
        return opt_cls(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)

    def lr(self, step: int, total: int) -> float:
        return lr_for_step(self.cfg, step)

    def max_grad_norm(self) -> float | None:
        return self.cfg.grad_clip or None

    def batch(self, step: int) -> dict[str, Tensor]:
        cfg = self.cfg
        idx = batch_indices(len(self.sampler), cfg.batch_size, step, cfg.seed).tolist()
        return self.sampler.batch(idx, step_generator(cfg.seed, step))

    def forward(self, model: torch.nn.Module, batch: dict[str, Tensor]) -> Tensor:
        return model(batch["inp"], batch["coord"], batch["cell"])  # [B, Q, 3]

    def loss(self, output: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        return pixel_loss(self.cfg.loss, output, batch["gt"]), {}

    def log_fields(self, run: Run, record: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        since = self.last_log or (run.t0, run.step - len(run.losses))
        fields = {"s_per_step": (now - since[0]) / max(run.step - since[1], 1)}
        self.last_log = (now, run.step)
        bw = _bandwidth(run.model)
        return fields if bw is None else {**fields, "bandwidth": bw}

    def should_evaluate(self, done: int, total: int) -> bool:
        return bool(self.sets) and super().should_evaluate(done, total)

    def evaluate(self, run: Run) -> dict[str, Any]:
        return run_evaluation(run.model, self.cfg, self.sets)

    def final_metrics(self, run: Run) -> dict[str, Any]:
        return run_evaluation(run.model, self.cfg, self.sets) if self.sets else {}

    def card(self, run: Run, metrics: dict[str, Any]) -> dict[str, Any]:
        return {
            "mode": self.cfg.mode, "model": self.cfg.model["name"], "data": self.data_info,
            "s_per_step": round(run.wall() / max(run.step, 1), 4),
            "final_loss": run.losses[-1] if run.losses else None, "bandwidth": _bandwidth(run.model),
        }  # fmt: skip

    def card_title(self) -> str:
        return f"{self.cfg.name or self.cfg.model['name']} ({self.cfg.mode})"


def train_lsr(
    cfg: LSRTrainConfig,
    *,
    train_images: list[Tensor] | None = None,
    eval_sets: dict[str, Any] | None = None,
    **options: Unpack[FitOptions],
) -> TrainResult:
    """Train (or resume) as ``cfg`` describes; see the module docstring for the outputs.

    Args:
        cfg: the run's config.
        train_images: in-memory training images ``[3, H, W]`` replacing ``cfg.data`` (tests).
        eval_sets: evaluation data replacing ``cfg.data`` (``{}`` skips evaluation).
        **options: :func:`~decodelab.train.loop.fit`'s ``resume``, ``stop_at``, ``config_path``, ``overrides``.

    Raises:
        ValueError: for an invalid config or an inconsistent resume.
        FileNotFoundError: for missing data or, on resume, a missing checkpoint.
    """
    return fit(LSRTask(cfg, train_images, eval_sets), **options)
