"""MCW-Net training (``decodelab train --config configs/mcwnet/<x>.yaml``, ``task: derain``).

The recipe is the authors' (github.com/yechanp/MCW-Net ``train.py`` and ``config_{small,large}.py``):
loss ``10 x L1(output, clean)``; Adam (lr 5e-4 small, 1e-4 large; betas 0.9/0.999, no weight decay,
no gradient clipping); the learning rate halved every ``lr_step`` epochs; batch 4 of random 256x256
crops with horizontal flips (p 0.5) and the cut-out augmentation (p 0.5: a clean square of side
``U(0, 0.5) x 256`` pasted into the rainy input); validation PSNR (RGB) every epoch; seed 486.

Data: a paired dataset read through :mod:`decodelab.datasets.rain` (``data.name`` = dataset name,
folder or list file) or ``data.name: synthetic``, fresh synthetic rain over the bundled photos
(:mod:`decodelab.derain.synth`). Lengths are given in ``epochs`` (real data) or ``steps``.

Exact resume: batch ``s`` (its images, crops, flips, cut-outs and synthetic rain) is a pure
function of ``(seed, s)``, and checkpoints hold the model, the optimizer and every random state, so
a run stopped at step ``k`` (``--stop-at``) and resumed (``--resume``) reproduces the uninterrupted
run's losses and weights exactly on the same machine and thread count.

The task runs through the one training loop (:mod:`decodelab.train.loop`); :func:`train` is its
Python entry point.

Outputs in ``out_dir``: ``checkpoint.pt``, ``log.jsonl``, ``config.json``; at the end ``final/``
(``config.json`` + ``model.safetensors`` loadable with :func:`decodelab.derain.load_derainer`,
``eval.json`` and the provenance card ``card.json`` / ``card.md``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from decodelab.config import dumps_json, load_config
from decodelab.train.common import atomic_write_text, batch_indices, file_sha256, lr_at
from decodelab.train.loop import FitOptions, Run, TrainResult, TrainTask, fit
from decodelab.train.tasks import register_task

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["DerainDataConfig", "DerainTask", "DerainTrainConfig", "heldout_pairs", "load_derain_config", "train"]


@dataclass
class DerainDataConfig:
    """Training / validation / test data.

    Attributes:
        name: ``synthetic`` or a paired dataset (name, folder or ``.txt`` list; see
            :func:`decodelab.datasets.rain.find_rain_pairs`).
        layout: dataset layout (``auto`` detects it).
        data_dir: extra folder searched first for named datasets.
        train_split, test_split: splits of a named dataset; for ``synthetic``, the photo splits of
            :mod:`decodelab.datasets.photos` the rain is drawn over (e.g. ``wallpapers-train``).
        crop: square training crop.
        flip: random horizontal flips.
        cutout: probability of the cut-out augmentation (0 disables it).
        style: synthetic: rain style (``light``, ``heavy``, ``mixed``).
        scale: synthetic: range of the random photo down-scaling before cropping.
        test_seed: synthetic: rain seed of the held-out test photos.
        val_seed: synthetic: rain seed of the validation pairs (same photos, different rain).
        val_crop: centred crop of each validation pair (``None``: full images).
        val_max_images: validate on at most this many pairs (``None``: all).
    """

    name: str = "synthetic"
    layout: str = "auto"
    data_dir: str | None = None
    train_split: str = "train"
    test_split: str = "test"
    crop: int = 256
    flip: bool = True
    cutout: float = 0.5
    style: str = "mixed"
    scale: list[float] = field(default_factory=lambda: [1.0, 1.0])
    test_seed: int = 2024
    val_seed: int = 7
    val_crop: int | None = None
    val_max_images: int | None = None


@dataclass
class DerainTrainConfig:
    """One MCW-Net training run (the keys of ``configs/mcwnet/*.yaml``).

    Attributes:
        task: always ``derain``.
        name: run name (card title).
        model: ``{name: <registered derainer>, **constructor kwargs}``.
        data: :class:`DerainDataConfig`.
        epochs / steps: training length (exactly one; epochs need a finite dataset).
        lr_step_epochs / lr_step: halve (``lr_gamma``) the learning rate every this many epochs / steps.
        val_every_epochs / val_every: validation period (epochs or steps; ``None`` both: only at the end).
        batch_size, lr, lr_gamma, betas, loss_weight, seed: the optimisation recipe.
        threads: torch CPU threads (``None``: leave torch's default).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        ckpt_every, log_every: checkpoint and log periods in steps.
        final_eval: evaluate the final model on the test split (self-ensemble, tiles).
        final_tile: tile size of the final evaluation.
        out_dir, time_budget_min, overwrite, progress: run management.
    """

    task: str = "derain"
    name: str = "mcwnet"
    model: dict[str, Any] = field(default_factory=dict)
    data: DerainDataConfig = field(default_factory=DerainDataConfig)
    epochs: int | None = None
    steps: int | None = None
    lr_step_epochs: int | None = None
    lr_step: int | None = None
    val_every_epochs: int | None = None
    val_every: int | None = None
    batch_size: int = 4
    lr: float = 5e-4
    lr_gamma: float = 0.5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    loss_weight: float = 10.0
    seed: int = 486
    threads: int | None = None
    device: str = "auto"
    ckpt_every: int = 500
    log_every: int = 50
    final_eval: bool = True
    final_tile: int = 512
    out_dir: str = "runs/mcwnet"
    time_budget_min: float | None = None
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.task != "derain":
            raise ValueError(f"this trainer needs task: derain, got {self.task!r}")
        if self.epochs is not None and self.steps is not None:
            raise ValueError("set only one of epochs and steps (the other to null)")
        if (self.lr_step_epochs is not None) and (self.lr_step is not None):
            raise ValueError("set at most one of lr_step_epochs and lr_step")
        for key in ("batch_size", "ckpt_every", "log_every"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.lr <= 0 or not 0 < self.lr_gamma <= 1:
            raise ValueError("lr must be > 0 and lr_gamma in (0, 1]")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.data.name == "synthetic" and (self.epochs is not None or self.lr_step_epochs or self.val_every_epochs):
            raise ValueError("synthetic rain is an endless stream: use steps / lr_step / val_every, not epochs")


def load_derain_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> DerainTrainConfig:
    """Read a ``task: derain`` YAML (dotted ``key=value`` overrides; unknown keys are errors)."""
    return load_config(DerainTrainConfig, path, list(overrides))


# ------------------------------------------------------------------------------------------- data
class _PairedTrain:
    """Random crops of a paired dataset; batch ``s`` is a pure function of ``(seed, s)``."""

    def __init__(self, dataset: Any, crop: int, flip: bool, cutout: float, seed: int) -> None:
        self.ds, self.crop, self.flip, self.cutout, self.seed = dataset, crop, flip, cutout, seed

    def __len__(self) -> int:
        return len(self.ds)

    def batch(self, step: int, batch_size: int) -> tuple[Tensor, Tensor]:
        from decodelab.derain.synth import cutout_

        gen = torch.Generator().manual_seed(self.seed * 7_919_993 + int(step))
        rains, cleans = [], []
        for i in batch_indices(len(self.ds), batch_size, step, self.seed).tolist():
            rain, clean = self.ds[i]
            _, h, w = rain.shape
            if h < self.crop or w < self.crop:
                raise ValueError(f"training image {self.ds.names[i]} ({h}x{w}) is smaller than the crop {self.crop}")
            y = int(torch.randint(0, h - self.crop + 1, (), generator=gen))
            x = int(torch.randint(0, w - self.crop + 1, (), generator=gen))
            rain, clean = rain[:, y : y + self.crop, x : x + self.crop], clean[:, y : y + self.crop, x : x + self.crop]
            if self.flip and float(torch.rand((), generator=gen)) < 0.5:
                rain, clean = rain.flip(-1), clean.flip(-1)
            rains.append(rain)
            cleans.append(clean)
        rain_t, clean_t = torch.stack(rains), torch.stack(cleans)
        if self.cutout > 0:
            cutout_(rain_t, clean_t, gen, p=self.cutout)
        return rain_t, clean_t


def _train_data(cfg: DerainTrainConfig) -> tuple[Any, dict[str, Any]]:
    d = cfg.data
    if d.name == "synthetic":
        from decodelab.derain.synth import SyntheticRainTrain

        data = SyntheticRainTrain(d.crop, cfg.seed, d.style, tuple(d.scale), d.flip, d.cutout, split=d.train_split)
        return data, data.info()
    from decodelab.datasets.rain import RainPairs

    ds = RainPairs(d.name, d.train_split, d.layout, d.data_dir)
    info = {"dataset": d.name, "split": d.train_split, "num_pairs": len(ds), "crop": d.crop, "flip": d.flip,
            "cutout": d.cutout, "first": ds.names[0]}  # fmt: skip
    return _PairedTrain(ds, d.crop, d.flip, d.cutout, cfg.seed), info


def heldout_pairs(cfg: DerainTrainConfig, validation: bool = False) -> Any:
    """The validation (``validation=True``) or test ``(name, rainy, clean)`` triples of a config (a sequence)."""
    d = cfg.data
    limit = d.val_max_images if validation else None
    crop = d.val_crop if validation else None
    if d.name == "synthetic":
        from decodelab.derain.synth import synthetic_test_pairs

        pairs = synthetic_test_pairs(d.test_split, d.val_seed if validation else d.test_seed, d.style, 8, crop)
        return pairs[:limit] if limit else pairs
    from decodelab.datasets.rain import NamedRainPairs, RainPairs

    return NamedRainPairs(RainPairs(d.name, d.test_split, d.layout, d.data_dir), limit, crop)


@torch.no_grad()
def _validate(model: torch.nn.Module | None, pairs: Any, device: torch.device) -> float:
    """Mean RGB PSNR of the plain (no ensemble, untiled) output, as the authors validate.

    ``model=None`` scores the rainy inputs themselves (the baseline).
    """
    from decodelab.eval.quality import psnr

    vals = []
    for _, rain, clean in pairs:
        if model is None:
            vals.append(float(psnr(rain, clean)))
            continue
        model.eval()
        vals.append(float(psnr(model(rain[None].to(device)).clamp(0, 1).cpu(), clean[None])))
        model.train()
    return sum(vals) / max(len(vals), 1)


# ---------------------------------------------------------------------------------------- training
def _schedule(cfg: DerainTrainConfig, n_items: int | None) -> dict[str, int | None]:
    """Steps, lr step and validation period in optimizer steps (epochs = ``n // batch`` steps, drop_last)."""
    per_epoch = None if n_items is None else max(n_items // cfg.batch_size, 1)

    def steps(epochs: int | None, steps_: int | None) -> int | None:
        return steps_ if epochs is None else int(epochs) * int(per_epoch or 0)

    total = steps(cfg.epochs, cfg.steps)
    if not total or total < 1:
        raise ValueError(f"set a positive number of epochs or steps (got epochs={cfg.epochs}, steps={cfg.steps})")
    return {"total": total, "lr_step": steps(cfg.lr_step_epochs, cfg.lr_step),
            "val_every": steps(cfg.val_every_epochs, cfg.val_every), "steps_per_epoch": per_epoch}  # fmt: skip


@register_task
class DerainTask(TrainTask):
    """MCW-Net deraining: ``loss_weight x L1``, Adam, step-decayed learning rate, PSNR validation."""

    name = "derain"
    config_class = DerainTrainConfig
    also_resumable = frozenset({"final_eval", "final_tile"})

    def check(self) -> None:
        if not self.cfg.model.get("name"):
            raise ValueError("model.name must name a registered derainer, e.g. model: {name: mcwnet_small}")

    def build_data(self, run: Run) -> None:
        """Training stream, schedule in steps, validation pairs and their rainy-input baseline."""
        cfg = self.cfg
        self.data, self.data_info = _train_data(cfg)
        self.num_items = len(self.data) if hasattr(self.data, "__len__") else None
        self.sched = _schedule(cfg, self.num_items)
        self.val_pairs = heldout_pairs(cfg, validation=True) if self.sched["val_every"] else []
        self.val_rainy = _validate(None, self.val_pairs, run.device) if self.sched["val_every"] else None
        self.report: dict[str, Any] | None = None

    def total_steps(self) -> int:
        return int(self.sched["total"])  # type: ignore[arg-type]

    def build_model(self, run: Run) -> torch.nn.Module:
        from decodelab.registry import MODELS

        return MODELS.create(self.cfg.model["name"], **{k: v for k, v in self.cfg.model.items() if k != "name"})

    def build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(model.parameters(), lr=self.cfg.lr, betas=tuple(self.cfg.betas))

    def lr(self, step: int, total: int) -> float:
        lr_step = self.sched["lr_step"]
        schedule = "step" if lr_step else "constant"
        return lr_at(step, self.cfg.lr, total, schedule=schedule, gamma=self.cfg.lr_gamma, step_size=lr_step)

    def batch(self, step: int) -> tuple[Tensor, Tensor]:
        return self.data.batch(step, self.cfg.batch_size)  # [B, 3, S, S] rainy, clean

    def forward(self, model: torch.nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        return model(batch[0])

    def loss(self, output: Tensor, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        return self.cfg.loss_weight * F.l1_loss(output, batch[1]), {}

    def should_evaluate(self, done: int, total: int) -> bool:
        every = self.sched["val_every"]
        return bool(every) and (done % int(every) == 0 or done == total)

    def evaluate(self, run: Run) -> dict[str, Any]:
        return {"val_psnr_rgb": _validate(run.model, self.val_pairs, run.device), "val_psnr_rgb_rainy": self.val_rainy}

    def final_metrics(self, run: Run) -> dict[str, Any]:
        """Test-split PSNR/SSIM with self-ensemble and tiles (``final_eval``)."""
        from decodelab.derain.evaluate import evaluate_derain

        cfg = self.cfg
        run.model.eval()
        if not cfg.final_eval:
            return {}
        self.report = evaluate_derain(run.model, heldout_pairs(cfg), tile=cfg.final_tile, self_ensemble=True,
                                      progress=cfg.progress)  # fmt: skip
        return {k: round(v, 4) for k, v in self.report["metrics"].items()}

    def card(self, run: Run, metrics: dict[str, Any]) -> dict[str, Any]:
        cfg, per_epoch = self.cfg, self.sched["steps_per_epoch"]
        return {
            "architecture": type(run.model).__name__,
            "model_config": getattr(run.model, "config", {}),
            "data": self.data_info,
            "test_data": (
                "held-out synthetic rain over the bundled test photos (never trained on)"
                if cfg.data.name == "synthetic"
                else f"{cfg.data.name} / {cfg.data.test_split}"
            ),
            "epochs": round(run.step / per_epoch, 3) if per_epoch else None,
            "evaluation": "derain() with horizontal-flip self-ensemble and 512-px tiles; PSNR/SSIM under the rgb "
            "(authors') and y (later papers) protocols; *_rainy = the rainy input itself (baseline)",
            "recipe": "MCW-Net (Park et al. 2022; github.com/yechanp/MCW-Net): 10 x L1, Adam, lr halved on a step "
            "schedule, random crops, h-flip, cut-out",
        }

    def export(self, run: Run, card: dict[str, Any]) -> Path:
        """``final/``: weights (saved from the CPU), ``eval.json``; the card gets the weights hash."""
        final = run.out / "final"
        if self.report is not None:
            atomic_write_text(final / "eval.json", dumps_json(self.report, default=float))
        run.model.cpu().save_pretrained(final)
        run.model.to(run.device)
        card["weights_sha256"] = file_sha256(final / "model.safetensors")
        return final

    def card_title(self) -> str:
        return f"{self.cfg.name}: MCW-Net derainer"


def train(cfg: DerainTrainConfig, **options: Unpack[FitOptions]) -> TrainResult:
    """Run (or resume) the training described by ``cfg``; see the module docstring for outputs.

    Args:
        cfg: the run's config.
        **options: :func:`~decodelab.train.loop.fit`'s ``resume``, ``stop_at``, ``config_path``, ``overrides``.

    Returns:
        A :class:`~decodelab.train.loop.TrainResult` (``total_steps`` = the planned steps).
    """
    return fit(DerainTask(cfg), **options)
